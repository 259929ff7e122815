"""This process: its rank among the processes `accelerate launch` started (only the main one writes a run's files),
the device record and the peak memory a run's manifest keeps. Core because every stage's bookkeeping needs it;
`ftlab.hardware.devices` re-exports it beside the rest of what the machine can do.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def process_rank() -> tuple[int, int, int]:
    """(rank, local rank, world size) of this process, from the environment `accelerate launch` and `torchrun` set;
    (0, 0, 1) in a notebook or any single-process run."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """Whether this process writes the stage's files (params, manifest, metrics, summary); always True alone."""
    return process_rank()[0] == 0


def wait_for_everyone() -> None:
    """A barrier across the launched processes once torch.distributed is up (the Trainer's arguments start it);
    a no-op in a single process."""
    import torch.distributed as dist

    if process_rank()[2] > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def summary() -> dict[str, Any]:
    """The device record of the manifest: kind, name, count, driver and CUDA runtime on a GPU."""
    import torch

    common = {"python": sys.executable, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if torch.cuda.is_available():
        driver = None
        try:
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # noqa: BLE001 - no NVML: the driver version stays unknown
            pass
        name = torch.cuda.get_device_name(0)
        return {
            "type": "cuda",
            "count": torch.cuda.device_count(),
            "name": name,
            "driver": driver,
            "cuda_runtime": torch.version.cuda,
            **common,
        }
    return {"type": "cpu", "name": platform.processor() or platform.machine(), **common}


_EARLIER_PEAK = {"allocated": 0, "reserved": 0}  # CUDA peaks from before a step measured alone (measure_step_start)


def measure_step_start() -> None:
    """Reset CUDA's peak counters to measure one step alone, keeping the peak so far for the stage's own figure
    (`gpu_peaks`): stage 04 reports each step's peak and still the whole stage's."""
    import torch

    _EARLIER_PEAK["allocated"] = max(_EARLIER_PEAK["allocated"], torch.cuda.max_memory_allocated())
    _EARLIER_PEAK["reserved"] = max(_EARLIER_PEAK["reserved"], torch.cuda.max_memory_reserved())
    torch.cuda.reset_peak_memory_stats()


def gpu_peaks() -> tuple[int, int]:
    """(allocated, reserved) peak bytes of this process, steps measured alone included."""
    import torch

    return (
        max(_EARLIER_PEAK["allocated"], torch.cuda.max_memory_allocated()),
        max(_EARLIER_PEAK["reserved"], torch.cuda.max_memory_reserved()),
    )
