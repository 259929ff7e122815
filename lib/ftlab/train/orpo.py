"""ORPO (TRL's ORPOTrainer) on top of the SFT adapter: preference tuning without a reference model.

ORPO's loss is the SFT loss on the chosen answer plus `beta` x an odds-ratio term that pushes the chosen answer's
odds above the rejected one's. It needs no frozen reference (nothing is measured against a starting point), so it
holds one adapter and runs each pair once: less memory and time than DPO. It was designed to start from the base
(the NLL term does the SFT); here it starts from the SFT adapter like the other stage-03 methods, so the guard compares
it with SFT on the same footing and stage 02's work is not repeated (its NLL term keeps the model on the chosen
answers). Pairs, length checks and the before/after guard are stage 03's (`ftlab.evaluation.regression_guard`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftlab.train import dpo
from ftlab.train.config import TrainParams
from ftlab.train.dpo import (  # noqa: F401 - stage 03's shared steps, called through this module for ORPO
    FIRST_LOSS_TOL,
    NOT_ARGS,
    SHOWN,
    Options,
    batch_rows,
    dataset,
    make_pairs,
    planned_length,
    read_inputs,
    summary,
    trainer_kwargs,
)
from ftlab.train.preflight import longest

PARAMS = {k: dpo.PARAMS[k] for k in ("beta", "pairs", "self_pairs_max")}

FIRST_LOSS = (
    "no fixed value: loss = nll_loss - beta x log_odds_ratio (both logged): the chosen answer's NLL plus beta times "
    "-log sigmoid(log odds of chosen vs rejected); try metrics[0]['nll_loss'] - beta * metrics[0]['log_odds_ratio']"
)


def config_kwargs(
    out_dir: Path, t: TrainParams, o: Options, device: str, attn: str | None, offload_needed: bool = False
) -> dict[str, Any]:
    return {"beta": o.beta}  # ORPO's lambda: the weight of the odds-ratio term beside the NLL


def worst_case(trainer: Any) -> list[int]:
    """The preflight's batch: the pairs whose longer answer, tokenized with its prompt, is longest."""
    ds = trainer.train_dataset
    lengths = [max(len(a), len(b)) for a, b in zip(ds["chosen_input_ids"], ds["rejected_input_ids"], strict=True)]
    return longest(lengths, trainer.args.per_device_train_batch_size)


def check_reference(trainer: Any) -> dict[str, Any]:
    """ORPO keeps no reference: check that TRL added none (a `ref` adapter would cost memory for nothing)."""
    from ftlab.train.preflight import TrainingStopped

    refs = [n for n, _ in trainer.model.named_parameters() if ".ref." in n]
    if refs:
        raise TrainingStopped(f"ORPO needs no reference, but the model holds {len(refs)} 'ref' tensors ({refs[0]})")
    return {"reference": "none: ORPO measures the chosen/rejected odds of the policy itself"}
