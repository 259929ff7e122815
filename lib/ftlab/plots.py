"""matplotlib figures for the notebooks. Each returns the Figure and, given a path, saves it as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _save(fig: Any, path: str | Path | None) -> Any:
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def length_histogram(lengths: list[int], max_length: int, path: str | Path | None = None, title: str = "") -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(lengths, bins=min(50, max(10, len(set(lengths)))), color="#4C72B0")
    ax.axvline(max_length, color="#C44E52", linestyle="--", label=f"max_length = {max_length}")
    ax.set_title(title or "Tokens per row after the chat template")
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
