"""The environment checks of stage 00.  Run: .venv/bin/python -m pytest tests/test_env.py"""

import pytest

from ftlab.hardware import env


def test_bnb_4bit_smoke_test_passes_here():
    c = env.check_bnb_4bit()
    assert c.status == "pass", c.detail
    assert "gradients present" in c.detail


def test_version_check_flags_a_mismatch(tmp_path, monkeypatch):
    lock = tmp_path / "requirements.lock"
    lock.write_text("torch==0.0.1\nno-such-package-ftlab==1.0\n")
    monkeypatch.setattr(env, "repo_root", lambda: tmp_path)
    c = env.check_versions()
    assert c.status == "warn"
    assert "torch" in c.detail and "(lock 0.0.1)" in c.detail and "missing: no-such-package-ftlab" in c.detail


def test_version_check_passes_on_the_real_lock():
    c = env.check_versions()
    assert c.status == "pass", c.detail


def test_require_gpu_fails_without_gpu():
    import torch

    checks = env.check_torch(require_gpu=True)
    if not torch.cuda.is_available():
        assert checks[-1].status == "fail" and "no CUDA GPU" in checks[-1].detail


def test_disk_check_fails_when_space_is_far_below_minimum(outputs):
    assert env.check_disk(min_gb=10**9).status == "fail"
    assert env.check_disk(min_gb=0).status == "pass"


def test_report_ok_only_without_failures():
    ok = env.report([env.Check("a", "pass", ""), env.Check("b", "warn", "")])
    bad = env.report([env.Check("a", "pass", ""), env.Check("b", "fail", "x", "do y")])
    assert ok["ok"] and not bad["ok"] and bad["counts"] == {"pass": 1, "warn": 0, "fail": 1}
    assert "FAIL  b  x" in env.table([env.Check("b", "fail", "x", "do y")])


def test_python_check_tells_the_project_env_from_another(monkeypatch):
    import sys

    from ftlab.core.paths import repo_root

    monkeypatch.setattr(sys, "prefix", str(repo_root() / ".venv"))
    assert env.check_python().status == "pass" and "project venv" in env.check_python().detail
    monkeypatch.setattr(sys, "prefix", "/opt/some-other-env")
    monkeypatch.delenv("CONDA_DEFAULT_ENV", raising=False)
    c = env.check_python()
    assert c.status == "warn" and "not the project's environment" in c.advice and "ftlab" in c.advice


def test_device_check_names_the_training_device_and_why_there_is_no_telemetry(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    c = env.check_device(require_gpu=False)
    assert c.status == "pass" and c.detail.startswith("cpu") and "CUDA_VISIBLE_DEVICES=" in c.detail
    assert "telemetry off" in c.detail
    assert env.check_device(require_gpu=True).status == "warn"  # check_torch's gpu line is the one that fails
