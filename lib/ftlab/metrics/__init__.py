"""Task metrics as Hugging Face `evaluate` modules. The built-in ones are folders here (`rouge_l`, `exact_match`),
loaded by their local path, so nothing is fetched; any other name or path goes to `evaluate.load` as it is, so a metric
a user has (installed, or a folder with its script) drops in by name: stage 05's `extra_metrics`.

`evaluate` copies a module into its module cache and keeps per-run files in its metrics cache; both are pointed into
the project's cache folder (HF_MODULES_CACHE, HF_METRICS_CACHE) unless already set.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from ftlab.paths import cache_dir

HERE = Path(__file__).resolve().parent
BUILTIN = ("rouge_l", "exact_match")


@functools.cache
def load(name: str) -> Any:
    """The `evaluate` module `name`: a built-in folder here, else whatever `evaluate.load(name)` finds."""
    os.environ.setdefault("HF_MODULES_CACHE", str(cache_dir() / "hf_modules"))
    os.environ.setdefault("HF_METRICS_CACHE", str(cache_dir() / "hf_metrics"))
    import evaluate

    local = HERE / name / f"{name}.py"
    try:
        return evaluate.load(str(local.parent) if local.exists() else name)
    except (FileNotFoundError, ConnectionError, ValueError) as e:
        raise ValueError(
            f"metric {name!r}: not a built-in ({', '.join(BUILTIN)}) and evaluate.load could not load it ({e}); "
            "give an installed evaluate metric or the path of a folder holding <name>/<name>.py"
        ) from None


def compute(name: str, predictions: list[str], references: list[str]) -> dict[str, Any]:
    if not predictions:
        return {}
    return load(name).compute(predictions=predictions, references=references)


def numbers(result: dict[str, Any]) -> dict[str, float]:
    """A metric's headline numbers (its scalar entries), for summaries and tables."""
    return {k: float(v) for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
