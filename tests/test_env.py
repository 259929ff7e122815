"""The environment checks of stage 00.  Run: .venv/bin/python -m pytest tests/test_env.py"""

from ftlab import env


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
