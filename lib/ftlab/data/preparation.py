"""Stage 01's closing step: the rejected-rows gate and what the later stages read (train, eval and preference rows,
the chat template, stats.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftlab import data
from ftlab.core import runs


def gate(
    stage: runs.Stage,
    inputs: dict[str, Path],
    accepted: int,
    rejected: list[data.Rejected],
    prefs: int,
    pref_rejected: list[data.Rejected],
) -> tuple[float, float]:
    """rejected.jsonl first (it is what a reader needs when the gate fails), then the share of bad rows of the SFT file
    and of the preference file against max_rejected_share. Returns both shares."""
    limit = stage.params["max_rejected_share"]
    data.write_jsonl(stage.path("rejected.jsonl"), data.rejected_json(rejected + pref_rejected))
    sft_rej = [r for r in rejected if r.source == str(inputs["data"])]
    path = stage.path("rejected.jsonl")
    sft = data.check_rejected_share(inputs["data"].name, accepted, sft_rej, limit, path)
    pref = (
        data.check_rejected_share(inputs["prefs"].name, prefs, pref_rejected, limit, path) if "prefs" in inputs else 0.0
    )
    return sft, pref


def write_splits(stage: runs.Stage, train: list[dict], evals: list[dict], prefs: list[dict], tokenizer: Any) -> None:
    """train.jsonl, eval.jsonl, prefs.jsonl and the chat template the rows were audited with."""
    for name, rows in (("train", train), ("eval", evals), ("prefs", prefs)):
        data.write_jsonl(stage.path(f"{name}.jsonl"), rows)
    stage.path("template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")


def stats(
    stage: runs.Stage,
    formats: str,
    counts: dict[str, int],
    rejected: list[data.Rejected],
    shares: tuple[float, float],
    audit: dict[str, Any],
    lengths: dict[str, Any],
    longest: list[tuple[int, int]],
    warnings: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """stats.json: what the later stages check (the base model and its template) and what a reader wants to know."""
    out = {
        "base_model": stage.params["base_model"],
        "formats": formats,
        **counts,
        "rejected": len(rejected),
        "rejected_reasons": data.reason_counts(rejected),
        "rejected_share": round(shares[0], 4),
        "prefs_rejected_share": round(shares[1], 4),
        "audit": audit,
        "lengths": lengths,
        "longest": [{"tokens": n, "line": ln} for n, ln in longest],
        "warnings": warnings or {},  # per file: content_warnings (rows and examples per kind)
    }
    stage.write_json("stats.json", out)
    return out
