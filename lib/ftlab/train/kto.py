"""KTO (TRL's KTOTrainer) on top of the SFT adapter: thumbs-up / thumbs-down rows instead of pairs.

Each preference pair becomes two unpaired rows: the chosen answer labelled desirable, the rejected one undesirable
(a file of labelled rows is the KTO layout stage 01 names; pairs are what it validates today). Everything around the
trainer is stage 03's as for DPO (`ftlab.train.dpo`): the same pairs and length checks, the same frozen `ref` copy of
the SFT adapter (TRL's KTOTrainer adds it as DPOTrainer does), the same before/after regression guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab.train import dpo
from ftlab.train.config import TrainParams
from ftlab.train.dpo import (  # noqa: F401 - stage 03's shared steps, called through this module for KTO
    FIRST_LOSS_TOL,
    SHOWN,
    batch_rows,
    check_reference,
    guard_after,
    guard_before,
    load_policy,
    make_pairs,
    read_inputs,
    summary,
    trainer_kwargs,
)

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


def unpaired(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs -> KTO rows: (prompt, chosen, desirable) and (prompt, rejected, undesirable), in the pairs' order."""
    return [
        {"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"}
        for r in rows
        for k in ("chosen", "rejected")
    ]


def dataset(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> Any:
    from datasets import Dataset

    return Dataset.from_list(unpaired(rows))
