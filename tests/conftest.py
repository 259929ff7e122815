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


TINY_SFT = {
    "base_model": "tiny-random",
    "max_rows": 200,
    "max_steps": 6,
    "eval_steps": 0,
    "save_steps": 6,
    "logging_steps": 1,
    "learning_rate": 0.003,
    "batch_size": 4,
}


@pytest.fixture(scope="session")
def tiny_sft_run(tmp_path_factory):
    """Stages 01 (a 200-row sample) and 02 (6 steps) once per session on the tiny model, for stages 03-05's tests.
    Tests copy it with `copy_run` and never change it."""
    from ftlab import pipeline

    out = tmp_path_factory.mktemp("tiny-sft")
    old = os.environ.get("FTLAB_OUTPUTS")
    os.environ["FTLAB_OUTPUTS"] = str(out)
    try:
        pipeline.run("01", "02", overrides={"run_name": "base", **TINY_SFT}, log=lambda *a: None)
    finally:
        if old is None:
            del os.environ["FTLAB_OUTPUTS"]
        else:
            os.environ["FTLAB_OUTPUTS"] = old
    return out / "base"


@pytest.fixture
def tiny_run(tiny_sft_run, outputs):
    """`tiny_run(name)`: a copy of the session's tiny SFT run under `name` in this test's outputs/ (idempotent)."""
    import json
    import shutil

    def copy(run_name):
        dst = outputs / run_name
        if not dst.exists():
            shutil.copytree(tiny_sft_run, dst, ignore=shutil.ignore_patterns("notebooks"))
            m = json.loads((dst / "manifest.json").read_text())
            (dst / "manifest.json").write_text(json.dumps({**m, "run_name": run_name}))
        return dst

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
