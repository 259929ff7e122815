""" "Check yourself" cells: the reader computes a number from the live objects and compares it with the notebook's.

A check never raises: a headless run (the answer left as None) prints what to try; a wrong answer prints a hint.
"""

from __future__ import annotations

import math
from typing import Any


def check(question: str, answer: Any, expected: Any, tol: float = 0.0, hint: str = "") -> bool | None:
    """Print whether `answer` matches `expected` (numbers within `tol`); None when not answered yet."""
    if answer is None:
        print(f"Check yourself: {question} Fill in your answer in this cell and run it again.")
        return None
    try:
        if isinstance(expected, (int, float)) and not isinstance(expected, bool):
            ok = math.isclose(float(answer), float(expected), abs_tol=tol, rel_tol=0.0)
        else:
            ok = answer == expected
    except (TypeError, ValueError):
        ok = False
    if ok:
        print(f"Right: {question} -> {expected!r}")
    else:
        print(f"Not quite: you have {answer!r}. Hint: {hint}" if hint else f"Not quite: you have {answer!r}.")
    return ok
