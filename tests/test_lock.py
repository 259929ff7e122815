"""requirements.lock, environment.yml and requirements.in agree.  Run: .venv/bin/python -m pytest tests/test_lock.py"""

import re

import yaml

from ftlab.core.paths import repo_root
from ftlab.hardware.env import normalize, read_lock

ROOT = repo_root()


def _env_yml_pins() -> dict[str, str]:
    doc = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in doc["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {normalize(p.split("==")[0]): p.split("==")[1] for p in pip}


def test_environment_yml_has_exactly_the_lock_pins():
    assert _env_yml_pins() == read_lock()
    doc = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in doc["dependencies"]


def test_every_lock_line_is_an_exact_pin_and_torch_comes_first():
    lines = [ln for ln in (ROOT / "requirements.lock").read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.\-]+", ln) for ln in lines), lines
    assert lines[0] == "torch==2.13.0"  # no +cpu: the same pin installs the CUDA wheel on a GPU machine


def test_every_input_requirement_is_pinned_in_the_lock():
    pins = read_lock()
    for ln in (ROOT / "requirements.in").read_text().splitlines():
        ln = ln.split("#")[0].strip()
        if not ln:
            continue
        name = normalize(re.split(r"[=<>!~\[]", ln)[0])
        assert name in pins, f"{name} is in requirements.in but not in requirements.lock: run `make lock`"
        if "==" in ln:
            assert pins[name] == ln.split("==")[1].strip()


def test_stack_is_complete():
    pins = read_lock()
    for name in (
        "torch",
        "transformers",
        "peft",
        "trl",
        "bitsandbytes",
        "accelerate",
        "datasets",
        "evaluate",
        "papermill",
        "jupyterlab",
        "ipykernel",
        "ipywidgets",
        "matplotlib",
        "rouge-score",
    ):
        assert name in pins, name
