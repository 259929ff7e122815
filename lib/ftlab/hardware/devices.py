"""Which device this process trains on, in which precision, and which process of a launch it is.

The one place that asks torch about CUDA, bf16 support and ranks; every other module asks here.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from ftlab.core.process import (  # noqa: F401 - part of what devices offers its callers
    gpu_peaks,
    is_main_process,
    measure_step_start,
    process_rank,
    summary,
    wait_for_everyone,
)


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
    from ftlab.core.params import QUANTIZATION

    if quantization not in QUANTIZATION:
        raise ValueError(f"quantization must be one of {list(QUANTIZATION)}, got {quantization!r}")
    if quantization == "auto":
        return "4bit" if device == "cuda" else "none"
    return quantization
