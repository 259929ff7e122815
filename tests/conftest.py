"""Shared fixtures. Run everything with `make test`; fast only with `make test-fast`.

Tests never reach the Hugging Face hub: the offline variables are set here as well as in the Makefile.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402


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
