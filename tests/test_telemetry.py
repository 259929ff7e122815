"""Hardware telemetry, disk watch, wall-time forecast and run economics (no GPU needed: samples are injected).

Run: .venv/bin/python -m pytest tests/test_telemetry.py
"""

import pytest

from ftlab.hardware import telemetry


def test_on_a_cpu_the_sampler_says_why_once_and_records_nothing():
    s = telemetry.Sampler().start()
    s.stop()
    assert s.note and s.note.startswith("GPU telemetry off") and s.samples == [] and s.latest() == {}


def test_throttle_warnings_from_injected_samples_once_per_kind():
    s = telemetry.Sampler()
    s.add({"t": 0, "gpu_temp_c": 70, "gpu_throttle_reasons": 0, "gpu_sm_clock_mhz": 1980, "gpu_power_w": 300})
    assert s.warnings == []
    s.add({"t": 1, "gpu_temp_c": 91, "gpu_throttle_reasons": 0x40, "gpu_sm_clock_mhz": 1410, "gpu_power_w": 300})
    s.add({"t": 2, "gpu_temp_c": 92, "gpu_throttle_reasons": 0x40, "gpu_sm_clock_mhz": 1400, "gpu_power_w": 300})
    assert len(s.warnings) == 1 and "91 °C" in s.warnings[0] and "thermal (hardware)" in s.warnings[0]
    assert "airflow" in s.warnings[0]
    assert telemetry.throttle_warning({"gpu_temp_c": 60, "gpu_throttle_reasons": 0x2}).startswith(
        "GPU throttling: power cap"
    )


def test_energy_integrates_power_over_time_and_costs_follow():
    s = telemetry.Sampler()
    for t, w in [(0, 200), (1800, 400), (3600, 400)]:  # 0.5 h at avg 300 W + 0.5 h at 400 W = 350 Wh
        s.add({"t": t, "gpu_power_w": w})
    assert s.energy_wh() == pytest.approx(350.0)
    e = telemetry.economics(s.energy_wh(), 3600, 0, price_per_kwh=0.30, price_per_gpu_hour=2.5)
    assert e["cost_energy"] == pytest.approx(0.105) and e["cost_cloud_equivalent"] == pytest.approx(2.5)
    est = telemetry.economics(None, 1800, 65, 0.30, 0.0)  # no NVML: a stated device power x time
    assert est["energy_wh"] == pytest.approx(32.5) and est["energy_source"].startswith("estimate: 65 W")


def test_forecast_arithmetic_and_advice_for_long_runs():
    f = telemetry.forecast(seconds_per_step=2.0, steps=1000, eval_runs=5, seconds_per_eval=60)
    assert f["forecast_s"] == 2300.0 and f["forecast_h"] == pytest.approx(0.64, abs=0.01) and f["advice"] == ""
    long = telemetry.forecast(seconds_per_step=12.0, steps=3000)
    assert long["forecast_h"] == 10.0 and "max_rows" in long["advice"]
    assert telemetry.human(3725) == "1 h 2 min" and telemetry.human(65) == "1 min 5 s"


def test_disk_check_with_a_simulated_small_disk_names_the_largest_consumers(tmp_path):
    (tmp_path / "old-run").mkdir()
    (tmp_path / "old-run" / "big.bin").write_bytes(b"x" * 3_000_000)
    (tmp_path / "small.txt").write_text("x")
    need = telemetry.checkpoint_bytes(trainable_params=4_884_480, optim="adamw_bnb_8bit")
    assert 150 * 2**20 < need < 400 * 2**20  # 3 checkpoints of ~80 MB + the adapter
    ok, msg = telemetry.disk_check(tmp_path / "run" / "checkpoints", need, free_bytes=100 * 2**20)
    assert not ok and "only 0.10 GiB free" in msg and "old-run" in msg.split("Largest here:")[1].split(",")[0]
    ok, msg = telemetry.disk_check(tmp_path, need, free_bytes=10 * 2**30)
    assert ok and msg.startswith("disk: 10.0 GiB free")


def test_interpreter_report_names_the_python_and_the_project_env():
    info = telemetry.interpreter()
    assert info["python"] and isinstance(info["project_env"], bool)


def test_report_compute_section_sums_the_training_stages(outputs):
    import json

    from ftlab.core.paths import stage_dir
    from ftlab.evaluation import report

    gpu = telemetry.economics(120.0, 1800, 65, 0.3, 2.5)  # measured: 120 Wh over 30 min
    cpu = telemetry.economics(None, 360, 65, 0.3, 2.5)  # estimated: 65 W x 6 min = 6.5 Wh
    for st, eco, n in (("02_train_sft", gpu, 900), ("03_train_dpo", cpu, 0)):
        d = stage_dir("eco", st)
        d.mkdir(parents=True)
        (d / "summary.json").write_text(
            json.dumps(
                {"train_seconds": 1.0, "economics": eco, "telemetry": {"samples": n, "warnings": ["hot"] * (n > 0)}}
            )
        )
    rows = telemetry.compute_rows("eco")
    assert [r["stage"] for r in rows] == ["02_train_sft", "03_train_dpo"]
    assert rows[0]["energy_source"] == "NVML power samples" and rows[1]["energy_wh"] == pytest.approx(6.5)
    page = report.compute_table(rows)
    # total energy 126.5 Wh; cost 0.0380 (energy) and 1.5 (1 h of cloud GPU at 2.5/h)
    assert "126.5" in page and ">1.5<" in page and page.count("<tr>") == 4
    assert "No training stage" in report.compute_table([])


def test_dashboard_line_shows_the_gpu_sample_that_joins_each_metrics_record():
    from ftlab.views import widgets

    s = telemetry.Sampler()
    s.add(
        {
            "t": 0,
            "gpu_temp_c": 71.4,
            "gpu_power_w": 305.2,
            "gpu_power_limit_w": 700.0,
            "gpu_sm_clock_mhz": 1980,
            "gpu_util_pct": 97,
            "gpu_throttle_reasons": 0,
        }
    )
    rec = {"step": 3, "loss": 1.5, **s.latest(), "eta_s": 12}
    line = widgets.TrainingDashboard("SFT", 10).line(rec)  # headless under pytest: no widgets are built
    assert "71 °C" in line and "305 W of 700 W" in line and "1980 MHz" in line and "util 97%" in line
    assert line.endswith("eta 12 s")
