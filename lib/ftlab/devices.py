"""Which device this process trains on, in which precision, and which process of a launch it is.

The one place that asks torch about CUDA, bf16 support and ranks; every other module asks here.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from typing import Any


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def kind() -> str:
    """ "cuda" or "cpu"."""
    return "cuda" if has_cuda() else "cpu"


def release_memory() -> None:
    """Give the memory of deleted models back: Python's garbage first, then the GPU's cached blocks."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_count() -> int:
    """CUDA GPUs this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


CAP_VARIABLE = "FTLAB_GPU_CAP_GIB"  # rehearse a smaller card on a big one: e.g. 22 for a 24 GB card


def gpu_cap_bytes() -> float | None:
    """The per-process GPU memory cap `FTLAB_GPU_CAP_GIB` asks for, in bytes (None: the whole GPU)."""
    cap = os.environ.get(CAP_VARIABLE)
    return float(cap) * 2**30 if cap else None


def cap_memory() -> float | None:
    """Apply `FTLAB_GPU_CAP_GIB` to this process's GPU (torch's allocator refuses more, as a smaller card would);
    returns the cap in bytes. No-op without the variable or without CUDA."""
    import torch

    cap = gpu_cap_bytes()
    if cap and torch.cuda.is_available():
        i = torch.cuda.current_device()
        total = torch.cuda.get_device_properties(i).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), i)
    return cap


def torch_device(device: str) -> str:
    """This process's own GPU under `accelerate launch` (cuda:LOCAL_RANK), else the device as given."""
    return f"cuda:{process_rank()[1]}" if device == "cuda" else device


def precision(device: str) -> dict[str, bool]:
    """The Trainer's bf16/fp16 flags: bf16 where the GPU has it, fp16 on older GPUs, neither on a CPU."""
    import torch

    if device != "cuda":
        return {"bf16": False, "fp16": False}
    bf16 = torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "fp16": not bf16}


def compute_dtype(device: str, name: str = "auto") -> Any:
    """A torch dtype: `name` as given, or for `auto` bfloat16 on a GPU (float16 where it lacks bf16), float32 on a
    CPU. Training, scoring and merging all take their dtype from here."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def dtype_bytes(device: str) -> int:
    return 2 if device == "cuda" else 4


def liger_available() -> bool:
    """Liger's Triton kernels run on CUDA only, and only when liger-kernel is installed."""
    return kind() == "cuda" and importlib.util.find_spec("liger_kernel") is not None


def resolve_quantization(quantization: str, device: str) -> str:
    """`auto` means 4-bit on a GPU and full LoRA precision on a CPU."""
    from ftlab.params import QUANTIZATION

    if quantization not in QUANTIZATION:
        raise ValueError(f"quantization must be one of {list(QUANTIZATION)}, got {quantization!r}")
    if quantization == "auto":
        return "4bit" if device == "cuda" else "none"
    return quantization


# ---- processes ---------------------------------------------------------------------------------------------------


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
