"""Stage 03's regression guard: the SFT model scored on held-out SFT rows before any preference step (held-out NLL
and greedy answers), the tuned policy scored on the same rows after, and a verdict from their paired comparison
(`regressed` when it got worse). Its scores are kept for stage 05 (`reuse`), which reads them instead of scoring the
same adapters on the same rows again. Every stage-03 method is guarded the same way; notebook 03 calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftlab import models
from ftlab.core import runs, stages
from ftlab.evaluation import reuse, scoring
from ftlab.hardware import devices
from ftlab.train import dpo

GUARD_BATCH = 8  # rows per forward pass of the guard's scoring (stage 05's batch_size default: its scores are reusable)


def _guard_kw(stage: runs.Stage) -> dict[str, Any]:
    """`scoring.score`'s settings for the guard (and the key its reusable scores are kept under)."""
    o = dpo.options(stage)
    return {
        "max_length": stage.params["max_length"],
        "n_generate": o.guard_rows,
        "max_new_tokens": o.max_new_tokens,
        "batch_size": GUARD_BATCH,
    }


def score(stage: runs.Stage, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Held-out NLL (every eval row) and greedy answers on `guard_rows` of them: the regression guard's score."""
    return scoring.score(model, tokenizer, rows, **_guard_kw(stage))


def keep_for_reuse(stage: runs.Stage, name: str, adapter: Path, tokenizer: Any, rows: list[dict[str, Any]], score: Any):
    """The guard's score of `adapter`, kept with its key in scores.json: stage 05 reads it instead of scoring the
    same adapter on the same rows again (`reuse`)."""

    device = devices.kind()
    quantization = devices.resolve_quantization(stage.params["quantization"], device)
    base = models.resolve_model(stage.params["base_model"])
    k = reuse.key(
        adapter, rows, tokenizer, base_model=base, device=device, quantization=quantization, **_guard_kw(stage)
    )
    reuse.keep(stage.path(), name, k, score)


def before(stage: runs.Stage, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The SFT model's score before any preference step; kept in guard_before.json so a resumed run reuses it."""
    path = stage.path("guard_before.json")
    if path.exists() and runs.read_json(path)["params"] == stage.params:
        return runs.read_json(path)["score"]
    before = score(stage, model, tokenizer, rows)
    stage.write_json("guard_before.json", {"params": stage.params, "score": before})
    sft = stages.method(stage.method.builds_on)
    keep_for_reuse(stage, sft.name, stage.input(sft.stage, sft.adapter), tokenizer, rows, before)
    return before


def after(stage: runs.Stage, job: Any, before: dict[str, Any] | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The same score with the tuned policy, compared with `before` (paired bootstrap): guard.json and its verdict."""
    if job.done:
        return runs.read_json(stage.path("guard.json"))
    after = score(stage, job.trainer.model, job.tokenizer, rows)
    keep_for_reuse(stage, job.method.name, stage.path(job.method.adapter), job.tokenizer, rows, after)
    names = tuple(m.title for m in stages.lineage(job.method.name)[-2:])
    guard = {
        "before": scoring.summary(before),
        "after": scoring.summary(after),
        **scoring.compare(before, after, names),
    }
    stage.write_json("guard.json", guard)
    return guard
