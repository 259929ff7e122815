"""Stage 04 measures each step's GPU peak alone (the merge on the CPU, its check on the GPU) and still reports the
whole stage's peak: resetting CUDA's counters for a step must not lose what came before."""

import torch

from ftlab.core import process, runs
from ftlab.export import errors


def test_a_step_measured_alone_keeps_the_stage_peak(monkeypatch):
    state = {"alloc": 15 * 2**30, "reserved": 16 * 2**30}  # the merge check's bf16 model was on the GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: state["alloc"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: state["reserved"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: state.update(alloc=0, reserved=0))
    monkeypatch.setattr(process, "_EARLIER_PEAK", {"allocated": 0, "reserved": 0})
    monkeypatch.setattr(errors, "STEP_GPU_PEAK_GIB", {})

    def convert():  # a CPU step after it: its own peak is nil
        state["alloc"] = 2**25

    errors.timed(convert)
    assert errors.STEP_GPU_PEAK_GIB == {"convert": 0.03}  # the step alone
    peak = runs.peak_memory()
    assert peak["gpu_allocated_gib"] == 15.0 and peak["gpu_reserved_gib"] == 16.0  # the stage's, from before
