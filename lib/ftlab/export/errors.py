"""What every export step shares: its error type and a timer."""

from __future__ import annotations

import time
from typing import Any


class ExportError(RuntimeError):
    """An export step failed or a verification did not hold; the message says which and what to do."""


def timed(fn: Any, *a: Any, **kw: Any) -> tuple[Any, float]:
    """(fn(*a, **kw), seconds it took)."""
    t = time.time()
    r = fn(*a, **kw)
    return r, round(time.time() - t, 2)
