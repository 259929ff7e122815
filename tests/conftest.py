"""Shared fixtures. Run everything with `make test`; fast only with `make test-fast`.

Tests never reach the Hugging Face hub: the offline variables are set here as well as in the Makefile.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

HOOKS = Path(__file__).parent / "hooks"  # test-only fault injection (never in the library)
sys.path.insert(0, str(HOOKS))


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """A private outputs/ root for one test (FTLAB_OUTPUTS), so tests never touch the real run folders."""
    out = tmp_path / "outputs"
    out.mkdir()
    monkeypatch.setenv("FTLAB_OUTPUTS", str(out))
    return out


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (results from GPU runs are in benchmarks/results/)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def crash_at(monkeypatch):
    """`crash_at(5)`: the next notebook kernel dies after training step 5, as a power cut would; `crash_at(4,
    in_save=True)`: while checkpoint-4 is written; `crash_at(None)`: no crash. The kernel gets the injector from
    tests/hooks/sitecustomize.py through PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HOOKS), os.environ.get("PYTHONPATH")) if p))

    def set_step(step, in_save=False):
        for k in ("FTLAB_CRASH_AT_STEP", "FTLAB_CRASH_IN_SAVE_AT_STEP"):
            monkeypatch.delenv(k, raising=False)
        if step is not None:
            monkeypatch.setenv("FTLAB_CRASH_IN_SAVE_AT_STEP" if in_save else "FTLAB_CRASH_AT_STEP", str(step))

    return set_step


# The shared tiny series: one dict per stage, read by every test that runs or copies it. 02 checkpoints every 2
# steps and evaluates at step 3, so the kill-and-resume tests can take the session's adapters as their references.
TINY = {
    "00_check_environment": {"base_model": "tiny-random", "min_free_disk_gb": 0.1, "min_ram_gb": 0.1},
    "01_prepare_data": {"base_model": "tiny-random", "max_rows": 200},
    "02_train_sft": {
        "base_model": "tiny-random",
        "max_steps": 6,
        "eval_steps": 3,
        "save_steps": 2,
        "logging_steps": 1,
        "learning_rate": 0.003,
        "batch_size": 4,
        "forecast_rows": 4,  # the forecast's timed rows (50 by default): the code path, not its precision
    },
    "03_train_dpo": {
        "base_model": "tiny-random",
        "max_steps": 6,
        "eval_steps": 3,
        "save_steps": 2,
        "logging_steps": 1,
        "learning_rate": 0.002,
        "batch_size": 4,
        "eval_pairs": 8,
        "guard_rows": 4,
        "max_new_tokens": 8,
        "warmup_steps": 0,
        "forecast_rows": 4,
    },
    "04_merge_export": {
        "base_model": "tiny-random",
        "verify_prompts": 4,
        "max_new_tokens": 16,
        "min_agreement": 0.0,  # random weights: near-tied logits make f16 rounding flip greedy tokens
        "gguf_types": ["f16", "q8_0", "q4_k_m"],
    },
    "05_evaluate": {
        "base_model": "tiny-random",
        "generate_rows": 4,
        "max_new_tokens": 8,
        "forgetting_probe": True,
        "lm_eval_limit": 10,  # the harness too runs under the network guard (its local tasks, no hub)
    },
    "06_compare_runs": {},
}
TINY_SFT = {**TINY["01_prepare_data"], **TINY["02_train_sft"]}
OFFLINE_GUARD = HOOKS / "offline"  # sitecustomize that refuses every non-loopback connection and name lookup


@pytest.fixture(scope="session")
def tiny_series(tmp_path_factory):
    """The shared tiny series, once per session: stages 00 -> 06 on the tiny model with TINY's parameters (01 a
    200-row sample, 02 and 03 six steps each, 04 three GGUF types, 05 base/SFT/DPO/merged with the probe and lm-eval,
    06 the comparison), every kernel under the network guard (`guard.log` beside the run folder lists their pids).
    The reference adapters of the train/reliability/launch/DPO tests and the input of the export, evaluate, widgets
    and browser tests. Tests read it or branch from it with `tiny_run`; none changes it."""
    from ftlab.runner import pipeline

    out = tmp_path_factory.mktemp("tiny-series")
    with pytest.MonkeyPatch.context() as mp:  # the variables are back as they were after the series
        mp.setenv("FTLAB_OUTPUTS", str(out))
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(OFFLINE_GUARD), os.environ.get("PYTHONPATH")) if p))
        mp.setenv("FTLAB_GUARD_LOG", str(out / "guard.log"))
        for name, values in TINY.items():  # one call a stage: their parameters overlap (max_steps, learning_rate...)
            pipeline.run(name[:2], name[:2], overrides={"run_name": "base", **values}, log=lambda *a: None)
    return out / "base"


def branch(src, dst, stages=("01_prepare_data", "02_train_sft")):
    """A new run folder `dst` holding only `stages` of run folder `src` (their folders and manifest entries), under
    dst's own name: what a user has after running those stages there. Later stages run there afresh; a copied stage
    run again with its parameters skips its work, as a finished stage does."""
    import json
    import shutil

    dst.mkdir(parents=True)
    for name in stages:
        shutil.copytree(src / name, dst / name)
    m = json.loads((src / "manifest.json").read_text())
    m["run_name"] = dst.name
    m["stages"] = {k: v for k, v in m["stages"].items() if k in stages}
    for entry in m["stages"].values():  # as if run under dst's name: same parameters, so finished stages skip
        entry["params"] = {**entry["params"], "run_name": dst.name}
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.fixture
def tiny_run(tiny_series, outputs):
    """`tiny_run(name)`: stages 01 and 02 of the shared tiny series under `name` in this test's outputs/
    (idempotent); `tiny_run(name, stages=("01_prepare_data",))` for stage 01 alone, `stages=tuple(TINY)` for all."""

    def copy(run_name, stages=("01_prepare_data", "02_train_sft")):
        dst = outputs / run_name
        return dst if dst.exists() else branch(tiny_series, dst, stages)

    return copy


# ---- resilience counts: fault injections survived and bad inputs tried, printed after the run --------------------

_RESILIENCE = {"fault injections survived": 0, "bad inputs tried": 0}


@pytest.fixture
def resilience():
    """`resilience("fault")` after a survived fault injection, `resilience("bad", n)` after n bad inputs tried."""

    def record(kind: str, n: int = 1) -> None:
        _RESILIENCE["fault injections survived" if kind == "fault" else "bad inputs tried"] += n

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if any(_RESILIENCE.values()):
        terminalreporter.write_sep("-", "resilience")
        terminalreporter.write_line(", ".join(f"{v} {k}" for k, v in _RESILIENCE.items()))
