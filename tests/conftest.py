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
# steps and evaluates at step 3, so the kill-and-resume tests can take the session's adapter as their reference.
TINY = {
    "01_prepare_data": {"base_model": "tiny-random", "max_rows": 200},
    "02_train_sft": {
        "base_model": "tiny-random",
        "max_steps": 6,
        "eval_steps": 3,
        "save_steps": 2,
        "logging_steps": 1,
        "learning_rate": 0.003,
        "batch_size": 4,
    },
    "05_evaluate": {
        "base_model": "tiny-random",
        "generate_rows": 4,
        "max_new_tokens": 8,
        "forgetting_probe": True,
        "lm_eval_limit": 10,  # the harness too runs under the network guard (its local tasks, no hub)
    },
}
TINY_SFT = {**TINY["01_prepare_data"], **TINY["02_train_sft"]}
OFFLINE_GUARD = HOOKS / "offline"  # sitecustomize that refuses every non-loopback connection and name lookup


@pytest.fixture(scope="session")
def tiny_sft_run(tmp_path_factory):
    """The shared tiny series, once per session: stages 01 (a 200-row sample), 02 (6 steps) and 05 (base vs SFT,
    the probe and lm-eval) on the tiny model, every kernel under the network guard (`guard.log` beside the run folder
    lists their pids). The reference adapter of the train/reliability/launch tests and the input of 03-05's tests.
    Tests read it or branch from it with `tiny_run`; none changes it."""
    from ftlab import pipeline

    out = tmp_path_factory.mktemp("tiny-series")
    with pytest.MonkeyPatch.context() as mp:  # the variables are back as they were after the series
        mp.setenv("FTLAB_OUTPUTS", str(out))
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(OFFLINE_GUARD), os.environ.get("PYTHONPATH")) if p))
        mp.setenv("FTLAB_GUARD_LOG", str(out / "guard.log"))
        pipeline.run("01", "02", overrides={"run_name": "base", **TINY_SFT}, log=lambda *a: None)
        pipeline.run("05", "05", overrides={"run_name": "base", **TINY["05_evaluate"]}, log=lambda *a: None)
    return out / "base"


def branch(src, dst, stages=("01_prepare_data", "02_train_sft")):
    """A new run folder `dst` holding only `stages` of run folder `src` (their folders and manifest entries), under
    dst's own name: what a user has after running those stages. Later stages run there afresh."""
    import json
    import shutil

    dst.mkdir(parents=True)
    for name in stages:
        shutil.copytree(src / name, dst / name)
    m = json.loads((src / "manifest.json").read_text())
    m["run_name"] = dst.name
    m["stages"] = {k: v for k, v in m["stages"].items() if k in stages}
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.fixture
def tiny_run(tiny_sft_run, outputs):
    """`tiny_run(name)`: stages 01 and 02 of the shared tiny series under `name` in this test's outputs/
    (idempotent); `tiny_run(name, stages=("01_prepare_data",))` for stage 01 alone."""

    def copy(run_name, stages=("01_prepare_data", "02_train_sft")):
        dst = outputs / run_name
        return dst if dst.exists() else branch(tiny_sft_run, dst, stages)

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
