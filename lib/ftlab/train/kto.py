"""KTO (TRL's KTOTrainer) on top of the SFT adapter: thumbs-up / thumbs-down rows instead of pairs.

The rows come from stage 01's prefs file: labelled rows (`kto_messages`, `kto_prompt_completion`: one answer judged
true = desirable or false = undesirable) are used as they are, and each preference pair becomes two such rows (the
chosen answer desirable, the rejected one undesirable); a file may hold both. Everything around the trainer is stage
03's as for DPO (`ftlab.train.dpo`): the same length checks and held-out split, the same frozen `ref` copy of the SFT
adapter (TRL's KTOTrainer adds it as DPOTrainer does), the same before/after regression guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab.core.params import Param
from ftlab.train import dpo
from ftlab.train.config import TrainParams
from ftlab.train.dpo import (  # noqa: F401 - stage 03's shared steps, called through this module for KTO
    FIRST_LOSS_TOL,
    NOT_ARGS,
    SHOWN,
    batch_rows,
    check_reference,
    planned_length,
    read_inputs,
    trainer_kwargs,
    worst_case,
)

PARAMS = {
    **{k: dpo.PARAMS[k] for k in ("beta", "pairs", "self_pairs_max")},
    **{k: Param(float, lo=0, hi=100) for k in ("desirable_weight", "undesirable_weight")},  # its loss weights
}
FIRST_LOSS = "0.5: each row's loss is 1 - sigmoid(beta x (reward - KL)), and reward = KL = 0 when policy == reference"


@dataclass(frozen=True)
class Options(dpo.Options):
    """DPO's stage-03 options plus KTO's weights (its `loss_type` is KTO's own: stage 03's DPO loss_type is unused)."""

    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


def config_kwargs(
    out_dir: Path, t: TrainParams, o: Options, device: str, attn: str | None, offload_needed: bool = False
) -> dict[str, Any]:
    return {"beta": o.beta, "desirable_weight": o.desirable_weight, "undesirable_weight": o.undesirable_weight}


def make_pairs(stage: Any, rows: dict[str, Any], model: Any, tokenizer: Any, done: bool) -> dpo.Pairs:
    """Stage 03's pairs (`dpo.make_pairs`) with labelled rows allowed; prints how many answers of each kind KTO gets
    (TRL warns when the weighted ratio of desirable to undesirable answers leaves [1, 4/3])."""
    pairs = dpo.make_pairs(stage, rows, model, tokenizer, done, labelled=True)
    good, bad = labels(pairs.train)
    print(f"KTO answers: {good} desirable, {bad} undesirable ({len(pairs.train)} rows and pairs)")
    return pairs


def unpaired(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows -> KTO rows: a labelled row as it is; a pair as (prompt, chosen, desirable) and (prompt, rejected,
    undesirable). In the rows' order."""
    return [
        {"prompt": r["prompt"], "completion": r[k], "label": r["label"] if "label" in r else k == "chosen"}
        for r in rows
        for k in dpo.answer_keys(r)
    ]


def labels(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(desirable, undesirable) answers that `rows` give KTO."""
    flags = [u["label"] for u in unpaired(rows)]
    return sum(flags), len(flags) - sum(flags)


def summary(job: Any, metrics: list[dict[str, Any]], pairs: dpo.Pairs, reference: Any, guard: Any) -> dict[str, Any]:
    """Stage 03's summary plus the desirable / undesirable answers KTO trained on."""
    good, bad = labels(pairs.train)
    return {**dpo.summary(job, metrics, pairs, reference, guard), "desirable": good, "undesirable": bad}


def dataset(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> Any:
    from datasets import Dataset

    return Dataset.from_list(unpaired(rows))
