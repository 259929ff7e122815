"""Sweeps and cohorts: each parameter set its own run, a broken file fails alone, complete runs are skipped,
executed notebooks rendered to HTML, and stage 06 compares the runs.

Run: .venv/bin/python -m pytest tests/test_sweep.py
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import TINY as SERIES
from conftest import branch

from ftlab.core import params as P
from ftlab.core.paths import repo_root
from ftlab.runner import pipeline

COHORT = sorted((repo_root() / "params" / "cohort").glob("*.yaml"))
TINY = [
    "-p",
    "base_model",
    "tiny-random",
    "-p",
    "max_steps",
    "2",
    "-p",
    "max_rows",
    "60",
    "-p",
    "eval_steps",
    "0",
    "-p",
    "batch_size",
    "4",
]


def test_grid_and_run_names():
    g = pipeline.grid(["lora_r=8,16", "learning_rate=1e-4,3e-4"])
    assert len(g) == 4 and {"lora_r": 16, "learning_rate": 3e-4} in g
    sets = pipeline.sweep_sets([], ["lora_r=8,16"], prefix="grid")
    assert [n for n, _ in sets] == ["grid-lora_r8", "grid-lora_r16"]
    with pytest.raises(P.ParamError, match="NAME=V1,V2"):
        pipeline.grid(["lora_r"])


def _sweep(outputs, *args):
    env = {**os.environ, "FTLAB_OUTPUTS": str(outputs)}
    return subprocess.run(
        [sys.executable, "-m", "ftlab", "sweep", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo_root(),
        timeout=1200,
    )


def test_cohort_sweep_broken_file_fails_alone_then_compare_runs(outputs, tmp_path, tiny_series):
    assert len(COHORT) >= 4  # the shipped cohort; two of its students are swept here (each file runs the same way,
    # and every cohort file's values are validated in test_notebooks_static): stages 01-02 a student (stage 00 runs
    # in the embedded series and test_pipeline)
    cohort = COHORT[:2]
    files = [shutil.copy(f, tmp_path / f.name) for f in cohort]
    broken = tmp_path / "zed.yaml"
    broken.write_text("run_name: cohort-zed\nlora_r: lots  # not a number\n")
    r = _sweep(outputs, *map(str, files), str(broken), "--from", "01", "--to", "02", *TINY)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 of 3 parameter set(s) are invalid" in r.stdout and "lora_r='lots'" in r.stdout
    assert "sweep: 2 ran, 0 skipped (complete), 1 failed" in r.stdout
    assert not (outputs / "cohort-zed").exists()  # nothing written for the broken file
    for f in cohort:
        run = outputs / f"cohort-{f.stem}"
        m = json.loads((run / "manifest.json").read_text())
        assert m["stages"]["02_train_sft"]["status"] == "complete"
        assert (run / "notebooks" / "02_train_sft.html").stat().st_size > 10_000  # readable without Jupyter

    again = _sweep(outputs, *map(str, files), "--from", "01", "--to", "02", *TINY)
    assert again.returncode == 0 and "sweep: 0 ran, 2 skipped (complete), 0 failed" in again.stdout

    branch(tiny_series, outputs / "cohort-series", tuple(SERIES))  # a student who ran all seven stages
    os.environ["FTLAB_OUTPUTS"] = str(outputs)
    try:
        pipeline.run("06", "06", overrides={"run_name": "cohort-report", "run_glob": "cohort-*"}, log=lambda *a: None)
    finally:
        del os.environ["FTLAB_OUTPUTS"]
    st = outputs / "cohort-report" / "06_compare_runs"
    rows = list(csv.DictReader((st / "comparison.csv").open()))
    assert sorted(r["run"] for r in rows) == sorted([*(f"cohort-{f.stem}" for f in cohort), "cohort-series"])
    nll = [float(r["heldout_nll"]) for r in rows]
    assert nll == sorted(nll)  # ranked by held-out NLL: stage 05's where it ran, else stage 02's eval loss
    sources = {r["run"]: r["score_source"] for r in rows}
    assert sources.pop("cohort-series") == "05 (dpo)" and set(sources.values()) == {"02 eval loss"}
    page = (st / "comparison.html").read_text()
    assert "Parameters that differ" in page and "02.lora_r" in page and "data:image/png;base64," in page
