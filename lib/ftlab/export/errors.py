"""What every export step shares: its error type and a timer."""

from __future__ import annotations

import time
from typing import Any


class ExportError(RuntimeError):
    """An export step failed or a verification did not hold; the message says which and what to do."""


STEP_GPU_PEAK_GIB: dict[str, float] = {}  # on a GPU: each timed step's own peak (merge, verify_merge, ...)


def timed(fn: Any, *a: Any, **kw: Any) -> tuple[Any, float]:
    """(fn(*a, **kw), seconds it took). With CUDA in use, the step's own peak of allocated GPU memory goes into
    STEP_GPU_PEAK_GIB under the function's name: the stage's peak says which step set it (the merge runs on the
    CPU; its check may use the GPU)."""
    import torch

    from ftlab.hardware import devices

    cuda = torch.cuda.is_available()
    if cuda:
        devices.measure_step_start()  # the stage's peak so far is kept (runs.peak_memory)
    t = time.time()
    r = fn(*a, **kw)
    if cuda:
        STEP_GPU_PEAK_GIB[fn.__name__] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return r, round(time.time() - t, 2)
