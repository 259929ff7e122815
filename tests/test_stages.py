"""The stage and method registry: a method registered from outside flows through the parameter checks, the choice
of the run's final adapter, the live metrics, the verdicts, the report's compute rows, the model card and the
comparison of runs, with no other code touched. Run: .venv/bin/python -m pytest tests/test_stages.py
"""

from __future__ import annotations

import json

import pytest

from ftlab import evaluation
from ftlab.core import params as P
from ftlab.core import stages
from ftlab.core.paths import stage_dir
from ftlab.evaluation import compare, report
from ftlab.export import card
from ftlab.hardware import telemetry
from ftlab.train import LiveMetrics

TOY = stages.Method(
    "toy",
    "07_train_toy",
    "TOY",
    "toy tuning",
    "trl:SFTConfig",
    "trl:SFTTrainer",
    "ftlab.train.sft",
    builds_on="dpo",
    metrics=("toy/score",),
    columns={"seconds": "train_seconds", "score": "toy_score"},
)
TOY_STAGE = stages.StageInfo("07_train_toy", "toy tuning")


def _defaults(stage: str) -> dict:
    from ftlab.core.paths import notebooks_dir

    return {d.name: d.default for d in P.notebook_parameters(notebooks_dir() / f"{stage}.ipynb")}


def _fake_run(outputs, run: str, with_toy: bool) -> None:
    """Adapters and summaries as the training stages leave them (no training needed for the registry's logic)."""
    each = dict.fromkeys(stages.method_of_stage(m.stage).name for m in stages.methods())  # a stage's default method
    methods = [stages.method(n) for n in each if with_toy or n != TOY.name]
    for i, m in enumerate(methods):
        d = stage_dir(run, m.stage)
        m.adapter_dir(lambda s: stage_dir(run, s)).mkdir(parents=True)
        (m.adapter_dir(lambda s: stage_dir(run, s)) / "adapter_config.json").write_text("{}")
        econ = telemetry.economics(None, 60.0 * (i + 1), 65.0, 0.3, 0.0)
        summary = {
            "train_seconds": 60.0 * (i + 1),
            "economics": econ,
            "toy_score": 0.75,
            "last_margin": 0.5,
            "eval_loss_before": 3.0,
            "eval_loss_after": 2.5,
            "memory": {"measured_peak_gib": 1.0},
        }
        (d / "summary.json").write_text(json.dumps(summary))
    manifest = {
        "run_name": run,
        "stages": {m.stage: {"status": "complete", "params": {"run_name": run}} for m in methods},
    }
    (outputs / run / "manifest.json").write_text(json.dumps(manifest))


def _score(nll: float) -> dict:
    return {
        "nll": nll,
        "rouge_l": 0.3,
        "per_example": {"nll": [nll + 0.01 * i for i in range(30)], "rouge_l": [0.3] * 30},
    }


def test_the_series_as_registered():
    assert stages.method_names() == ("sft", "dpo", "kto", "orpo", "grpo")
    assert stages.first_method().name == "sft" and [m.name for m in stages.lineage("kto")] == ["sft", "kto"]
    assert stages.multi_process_stages() == (stages.TRAIN_SFT,)
    # stage 03's `method` choices, default first
    assert stages.stage_methods(stages.TRAIN_DPO) == ("dpo", "kto", "orpo", "grpo")
    assert stages.adapter_choices() == ("auto", "sft", "dpo", "kto", "orpo", "grpo")
    assert stages.compare_choices() == ("base", "sft", "dpo", "kto", "orpo", "grpo", "final", "merged")


def test_a_registered_toy_method_flows_through_params_final_adapter_metrics_verdicts_report_card_and_comparison(
    outputs, tmp_path
):
    _fake_run(outputs, "before", with_toy=False)
    with stages.registered(TOY, TOY_STAGE, after=stages.TRAIN_DPO):
        # params: a new adapter choice and a new model to compare, asked of the registry at validation time
        P.validate(stages.EXPORT, {**_defaults(stages.EXPORT), "adapter": "toy"})
        P.validate(stages.EVALUATE, {**_defaults(stages.EVALUATE), "compare_models": ["base", "toy"]})
        with pytest.raises(P.ParamError, match="'toy'"):
            P.validate(stages.EXPORT, {**_defaults(stages.EXPORT), "adapter": "toy2"})  # the message lists toy
        # the final adapter: the last method whose stage produced one
        _fake_run(outputs, "r", with_toy=True)
        assert stages.final_method(lambda s: stage_dir("r", s)).name == "toy"
        assert stages.final_method(lambda s: stage_dir("before", s)).name == "dpo"  # toy did not run there
        # stage 05's compare_models: "final" is that adapter, scored once; with none trained, a note says so
        assert list(evaluation.find("r", ["base", "sft", "final", "toy"])[0]) == ["sft", "toy"]
        assert list(evaluation.find("before", ["base", "final", "dpo"])[0]) == ["dpo"]
        assert evaluation.find("nothing-here", ["base", "final"]) == (
            {},
            ["final: not evaluated, no stage has trained an adapter yet"],
        )
        with pytest.raises(FileNotFoundError, match="07_train_toy"):
            stages.final_method(lambda s: stage_dir("before", s), "toy")
        # live metrics keep the method's own log keys
        live = LiveMetrics(tmp_path / "m.jsonl")

        class S:
            global_step, epoch, num_input_tokens_seen, max_steps, is_world_process_zero = 1, 0.1, 10, 5, True

        live.on_log(None, S(), type("C", (), {"should_training_stop": False})(), logs={"loss": 1.0, "toy/score": 0.5})
        assert json.loads((tmp_path / "m.jsonl").read_text())["toy/score"] == 0.5
        # verdicts: toy against what it built on and against the base; it is the run's final model
        v = evaluation.verdicts({"base": _score(3.0), "sft": _score(2.0), "dpo": _score(1.9), "toy": _score(1.5)}, 0.02)
        assert v.final == "toy" and {"toy_vs_dpo", "toy_vs_base"} <= set(v.comparisons) and v.passed
        # the report's compute rows, the model card and the comparison of runs
        assert [r["stage"] for r in telemetry.compute_rows("r")] == [stages.TRAIN_SFT, stages.TRAIN_DPO, "07_train_toy"]
        assert "07_train_toy" in report.compute_table(telemetry.compute_rows("r"))
        summary = {
            "adapter": "toy",
            "base_model_id": "x",
            "license": "apache-2.0",
            "name": "n",
            "gguf_types": ["f16"],
            "gguf": [],
            "ollama_commands": {},
        }
        text = card.model_card({"stages": {}}, summary)
        assert "- toy" in text and "supervised fine-tuning then DPO then toy tuning" in text
        row = compare.collect(outputs / "r")
        assert row["toy_seconds"] == 180.0 and row["toy_score"] == 0.75 and "toy_score" in compare.columns()
    # gone again: nothing else changed
    assert "toy" not in stages.method_names() and "07_train_toy" not in stages.stage_names()
    assert "toy_score" not in compare.columns()
    with pytest.raises(P.ParamError):
        P.validate(stages.EXPORT, {**_defaults(stages.EXPORT), "adapter": "toy"})


def test_compare_ranks_a_method_sweep_by_each_runs_stage03_guard(outputs):
    """Runs that share stage 02 and differ in stage 03's method (no stage 05): 06 ranks them by the guard's held-out
    score of the method each trained, and shows every method's guard columns beside its own."""
    for method, nll, rouge in (("dpo", 2.66, 0.29), ("kto", 2.60, 0.31), ("orpo", 2.70, 0.30)):
        run = outputs / f"sweep-{method}"
        for st, summary in (
            (stages.TRAIN_SFT, {"method": "sft", "eval_loss_before": 3.7, "eval_loss_after": 2.74}),
            (
                stages.TRAIN_DPO,
                {"method": method, "guard": {"after": {"nll": nll, "rouge_l": rouge}, "nll_diff": nll - 2.65}},
            ),
        ):
            (run / st).mkdir(parents=True)
            (run / st / "summary.json").write_text(json.dumps(summary))
        (run / "manifest.json").write_text(json.dumps({"stages": {}}))
    rows = [compare.collect(r) for r in compare.find_runs("sweep-*")]
    board = compare.leaderboard(rows)
    assert list(board["run"]) == ["sweep-kto", "sweep-dpo", "sweep-orpo"]
    assert list(board["score_source"]) == ["03 guard (kto)", "03 guard (dpo)", "03 guard (orpo)"]
    assert board.loc[1, "kto_guard_rouge_l"] == 0.31 and board.loc[1, "kto_guard_nll_diff"] == pytest.approx(-0.05)
    assert board["dpo_guard_nll"].isna().tolist() == [True, False, True]  # each run shows only what it trained


def test_every_method_module_provides_the_contract_and_stage_03s_specs_come_from_the_methods():
    from ftlab.train import methods

    for m in stages.methods():
        assert methods.problems(stages.load(m.module), methods.protocol(m)) == [], m.name
        assert methods.module(m) is stages.load(m.module)
    assert methods.protocol(stages.method("sft")) is methods.TrainingMethod
    own = {n: set(stages.load(stages.method(n).module).PARAMS) for n in stages.stage_methods(stages.TRAIN_DPO)}
    spec = P.SPECS[stages.TRAIN_DPO]
    assert set(spec) == set(P._SPECS[stages.TRAIN_DPO]) | set().union(*own.values())
    assert not set(P._SPECS[stages.TRAIN_DPO]) & set().union(*own.values())  # each name declared in one place
    assert [n for n, names in own.items() if "loss_type" in names] == ["dpo"]
    assert [n for n, names in own.items() if "num_generations" in names] == ["grpo"]
    assert [n for n, names in own.items() if "desirable_weight" in names] == ["kto"]
    assert all("beta" in names for names in own.values())


def test_a_method_module_without_the_contract_is_refused_with_what_it_lacks(monkeypatch):
    import dataclasses
    import sys
    import types

    from ftlab.train import dpo, methods

    half = dataclasses.replace(TOY, name="half", stage=stages.TRAIN_DPO, builds_on="sft")  # ftlab.train.sft: no pairs
    with pytest.raises(TypeError, match=r"'half'.*TuningMethod\): FIRST_LOSS: missing; FIRST_LOSS_TOL: missing"):
        methods.register(half)
    assert "half" not in stages.method_names()  # refused: the registry is as it was
    fake = types.ModuleType("toy_method")  # DPO's module, with one function that cannot take the contract's call
    fake.__dict__.update({k: v for k, v in vars(dpo).items() if not k.startswith("__")})
    fake.worst_case = lambda: []
    monkeypatch.setitem(sys.modules, "toy_method", fake)
    with pytest.raises(TypeError, match=r"worst_case: takes \(\), the contract calls it with \(trainer\)"):
        methods.register(dataclasses.replace(half, name="sig", module="toy_method"))
    fake.worst_case = dpo.worst_case
    fake.PARAMS = {**dpo.PARAMS, "beta": P.Param(int, lo=0)}  # beta as DPO, KTO, ORPO and GRPO do not declare it
    with pytest.raises(ValueError, match="method 'clash' declares 'beta' as int, in \\[0, inf\\], not float"):
        methods.register(dataclasses.replace(half, name="clash", module="toy_method"))
    assert "clash" not in stages.method_names() and P.SPECS[stages.TRAIN_DPO]["beta"].type is float
    fake.PARAMS = {**dpo.PARAMS, "toy_weight": P.Param(float, lo=0)}
    fake.Options = dataclasses.make_dataclass(
        "Options", [("toy_weight", float, 1.0)], bases=(dpo.Options,), frozen=True
    )
    try:
        assert methods.register(dataclasses.replace(half, name="ok", module="toy_method")) is fake
        assert "toy_weight" in P.SPECS[stages.TRAIN_DPO]  # a registered method's own parameter is stage 03's at once
    finally:
        stages.unregister("ok")
    assert "toy_weight" not in P.SPECS[stages.TRAIN_DPO]


def test_a_stage_resolves_its_method_once():
    from ftlab.core import runs

    st = runs.Stage("r", stages.TRAIN_DPO, {"method": "kto"}, 0.0)
    assert st.method is st.method and st.method.name == "kto"
    assert runs.Stage("r", stages.TRAIN_SFT, {}, 0.0).method.name == "sft"
