"""The steps of stage 03 that differ by method, looked up in the registry (`ftlab.core.stages`) so that no notebook cell
names a method or picks a module: the rows the method trains on, the check of its reference model, its loss at step 0 and what its summary adds. Each method module (`ftlab.train.dpo`, `kto`,
`orpo`, `grpo`) provides these names (`ftlab.train.methods.TuningMethod`, checked once); the steps it shares with DPO it
imports from `dpo`.

The TRL objects themselves (the config and the trainer) are built in the notebook's own cells; see
`ftlab.train.trainer_config`.
"""

from __future__ import annotations

from typing import Any

from ftlab.core import runs
from ftlab.train.methods import module as method_module


def training_rows(stage: runs.Stage, rows: dict[str, Any], model: Any, tokenizer: Any, done: bool) -> Any:
    """What the method trains on, as `dpo.Pairs` (train and eval lists, the rejected rows with their line numbers in
    pairs_rejected.jsonl): DPO and ORPO preference pairs (stage 01's, or the SFT model's own answers as the rejected
    ones: `pairs`), KTO answers labelled good or bad, GRPO prompts with their reference answer. A finished stage
    reads them back without generating."""
    return method_module(stage).make_pairs(stage, rows, model, tokenizer, done)


def check_reference(stage: runs.Stage, trainer: Any) -> dict[str, Any]:
    """What the trainer compares the policy with: a frozen copy of the SFT adapter (DPO, KTO, GRPO), checked to equal
    the policy at step 0; ORPO: that there is none."""
    return method_module(stage).check_reference(trainer)


def first_loss(stage: runs.Stage) -> tuple[str, float]:
    """The method's loss at step 0, where policy == reference, explained; and how close a guess must be."""
    mod = method_module(stage)
    return mod.FIRST_LOSS, mod.FIRST_LOSS_TOL


def summary(
    stage: runs.Stage, job: Any, metrics: list[dict[str, Any]], pairs: Any, reference: Any, guard: Any
) -> dict[str, Any]:
    """What the method adds to summary.json (margins, rewards, pair counts, the guard); nothing when the stage
    finished before (its saved summary is read back whole)."""
    return {} if job.done else method_module(stage).summary(job, metrics, pairs, reference, guard)


def shown(stage: runs.Stage) -> tuple[str, ...]:
    """The summary entries the notebook's last cell prints for this method."""
    return method_module(stage).SHOWN
