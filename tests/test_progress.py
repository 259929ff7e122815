"""What `ftlab run` shows while a stage runs: the live line driven by a stage's metrics.jsonl and the cell that is
running, the papermill engine that reports cells, and the closing table of stages.

Run: .venv/bin/python -m pytest tests/test_progress.py
"""

import json
import time

import nbformat

from ftlab.runner import pipeline, status_line


def _record(step, **kw):
    rec = {"step": step, "max_steps": 40, "loss": 2.0 - step / 40, "tokens_per_s": 1234.4, "eta_s": 90.0}
    return {**rec, "time": time.time(), **kw}


def test_the_live_line_follows_metrics_jsonl_one_line_per_update(tmp_path):
    lines = []
    m = tmp_path / "metrics.jsonl"
    m.write_text(json.dumps(_record(40, time=time.time() - 3600)) + "\n")  # an earlier run of the stage
    live = status_line.Progress("[3/7] 02_train_sft", tmp_path, out=lines.append, tty=False, every_s=0, slow_s=0)
    live.poll()
    assert lines == []  # the earlier run's record is not shown as this run's progress
    live.cell(9, 14, "# train; a checkpoint every save_steps\njob.train()")
    live.poll()
    assert lines and lines[-1].endswith("cell 9/14: train; a checkpoint every save_steps")
    with open(m, "a") as f:
        f.write(json.dumps(_record(10)) + "\n")
    live.poll()
    assert lines[-1].startswith("[3/7] 02_train_sft ")
    assert lines[-1].endswith("step 10/40 · loss 1.75 · 1,234 tok/s · ETA 1m30s")
    n = len(lines)
    live.poll()  # nothing new: nothing printed
    assert len(lines) == n
    with open(m, "a") as f:  # an eval record and a half-written line do not count as training progress
        f.write(json.dumps({"step": 10, "eval_loss": 1.9}) + "\n" + json.dumps(_record(20))[:30])
    live.poll()
    assert len(lines) == n
    with open(m, "a") as f:
        f.write("\n" + json.dumps(_record(20, vram_peak_gib=13.26)) + "\n")
    live.poll()
    assert lines[-1].endswith("step 20/40 · loss 1.5 · 1,234 tok/s · ETA 1m30s · GPU peak 13.3 GiB")


def test_off_a_terminal_quick_cells_and_frequent_records_make_no_noise(tmp_path):
    lines = []
    live = status_line.Progress("[1/7] 00", tmp_path, out=lines.append, tty=False, every_s=3600, slow_s=3600)
    for i in range(1, 6):
        live.cell(i, 5, f"x = {i}")
        live.poll()
    assert lines == []  # no cell ran for slow_s
    (tmp_path / "metrics.jsonl").write_text(json.dumps(_record(1)) + "\n")
    live.poll()
    (tmp_path / "metrics.jsonl").write_text(json.dumps(_record(2)) + "\n")
    live.poll()
    assert len(lines) == 1 and "step 1/40" in lines[0]  # then at most one per every_s


def test_cell_labels_say_what_a_cell_does():
    assert status_line.cell_label("model = load()\n# not first") == "not first"
    assert status_line.cell_label("\n\nrows = data.load(path)\n") == "rows = data.load(path)"
    assert status_line.cell_label("") == "(empty cell)"
    assert status_line.cell_label("x = " + "1" * 100, width=20) == "x = 1111111111111..."


def test_the_engine_reports_each_code_cell_as_it_starts(tmp_path):
    import papermill as pm

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# title"),
        nbformat.v4.new_code_cell("# first step\na = 1"),
        nbformat.v4.new_code_cell("b = a + 1"),
    ]
    src = tmp_path / "n.ipynb"
    nbformat.write(nb, src)
    seen = []
    pm.execute_notebook(
        str(src),
        str(tmp_path / "out.ipynb"),
        kernel_name=pipeline.ensure_kernel(),
        progress_bar=False,
        engine_name=status_line.engine(),
        on_cell=lambda i, n, s: seen.append((i, n, status_line.cell_label(s))),
    )
    assert seen == [(1, 2, "first step"), (2, 2, "b = a + 1")]


def test_the_closing_table_has_time_peak_memory_and_key_figures(tmp_path):
    (tmp_path / "02_train_sft").mkdir()
    summary = {
        "seconds": 754.2,
        "eval_loss_before": 2.3456,
        "eval_loss_after": 1.2345,
        "tokens_per_s": 8884.0,
        "nll": {"base": 2.3456, "sft": 1.5},
        "peak": {"ram_gib": 5.1, "gpu_allocated_gib": 13.26, "gpu_reserved_gib": 15.0},
    }
    (tmp_path / "02_train_sft" / "summary.json").write_text(json.dumps(summary))
    keys = ("eval_loss_before", "eval_loss_after", "tokens_per_s", "nll", "absent.key")
    table = status_line.stage_table(tmp_path, [("02_train_sft", keys), ("03_train_dpo", ())]).splitlines()
    assert table[2] == (
        "| 02_train_sft | 12m34s | 5.1 | 13.3 / 15.0 | eval_loss_before 2.346, eval_loss_after 1.234, tokens_per_s 8884,"
        " nll base 2.346 / sft 1.5 |"
    )
    assert table[3] == "| 03_train_dpo | not run | | | |"
