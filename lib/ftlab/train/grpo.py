"""GRPO (TRL's GRPOTrainer) on top of the SFT adapter: the model answers each prompt `num_generations` times, the
rewards (`ftlab.train.rewards`: plain functions) score every answer, and each answer is pushed up or down by how it
did against the others of its group (its advantage). No pairs and no reward model to train: prompts with reference
answers (stage 01's train rows) and functions that say what a good answer is.

With `beta` > 0 TRL keeps a frozen `ref` copy of the SFT adapter (as DPO does) and adds beta x KL(policy || ref) to
the loss; the KL is logged. The before/after regression guard is stage 03's (`ftlab.evaluation.regression_guard`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab import data
from ftlab.core import runs
from ftlab.core.params import Param
from ftlab.train import dpo
from ftlab.train.config import TrainParams, from_params
from ftlab.train.dpo import (  # noqa: F401 - stage 03's shared steps, called through this module for GRPO
    check_reference,
    planned_length,
    read_inputs,
)
from ftlab.train.preflight import longest

FIRST_LOSS = (
    "no fixed value, but its scale: at step 1 the ratio is 1 and KL 0, so the loss is -(sum over answers of "
    "advantage x answer length) / total length; each group's advantages sum to 0, so it is 0 only when all answers "
    "are equally long, positive when the long answers did worse than their group (they ran on and got cut); a few "
    "tenths at most (measured 0.29 on the embedded default)"
)
FIRST_LOSS_TOL = 0.5
NOT_ARGS = ("max_length",)  # GRPOConfig bounds the answer (max_completion_length), not prompt + answer
SHOWN = ("steps", "first_reward", "last_reward", "first_loss", "last_loss")
PARAMS = {
    "beta": dpo.PARAMS["beta"],
    "num_generations": Param(int, lo=2, hi=256),  # answers sampled per prompt (its group)
    "max_completion_length": Param(int, lo=1, hi=32768),
    "temperature": Param(float, lo=0.01, hi=5),
    **{k: Param(str) for k in ("judge_url", "judge_model")},  # the optional judge reward
}


@dataclass(frozen=True)
class Options(dpo.Options):
    """Stage 03's options plus GRPO's generation settings (DPO's loss_type is unused)."""

    num_generations: int = 4
    max_completion_length: int = 64
    temperature: float = 1.0
    judge_url: str = ""
    judge_model: str = ""


def config_kwargs(
    out_dir: Path, t: TrainParams, o: Options, device: str, attn: str | None, offload_needed: bool = False
) -> dict[str, Any]:
    """`batch_size` counts prompts, as it counts pairs for DPO: TRL's batch holds batch_size x num_generations
    answers (it must be a multiple of the group size)."""
    rows = t.batch_size * o.num_generations
    return {
        "beta": o.beta,
        "num_generations": o.num_generations,
        "max_completion_length": o.max_completion_length,
        "temperature": o.temperature,
        "per_device_train_batch_size": rows,
        "per_device_eval_batch_size": rows,
        "num_generations_eval": 1,  # held-out prompts: one sampled answer each for eval_reward (a group would cost 4x)
        "log_completions": False,
    }


def batch_rows(p: dict[str, Any]) -> int:
    """Sequences in one batch for the memory plan: num_generations sampled answers per prompt."""
    return p["batch_size"] * p["num_generations"]


def worst_case(trainer: Any) -> list[int]:
    """The preflight's batch: the batch_size / num_generations longest prompts (by characters: its rows are text),
    each num_generations times, as its step samples the answers it trains on."""
    group = trainer.num_generations
    lengths = [sum(len(m["content"]) for m in p) for p in trainer.train_dataset["prompt"]]
    picked = longest(lengths, max(1, trainer.args.per_device_train_batch_size // group))
    return [i for i in picked for _ in range(group)]


def trainer_kwargs(o: Options, reward_funcs: list[Any] | None = None, **_: Any) -> dict[str, Any]:
    if not reward_funcs:
        raise ValueError(
            "GRPO needs reward functions: expected train.trainer_kwargs(stage, reward_funcs=[...]) with plain functions "
            "(ftlab.train.rewards: rouge_l, ends_cleanly, judge), found none"
        )
    return {"reward_funcs": list(reward_funcs)}


def dataset(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "reference": r["reference"]} for r in rows])


def prompts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stage 01's conversations -> GRPO rows: the conversation up to the last answer as the prompt, that answer as
    the reference the rewards compare with; line numbers kept for reports."""
    return [
        {
            "prompt": r["messages"][:-1],
            "reference": r["messages"][-1]["content"],
            "_line": r.get("_line", 0),
            "_source": r.get("_source", ""),
        }
        for r in rows
    ]


def make_pairs(stage: runs.Stage, rows: dict[str, Any], model: Any, tokenizer: Any, done: bool) -> dpo.Pairs:
    """GRPO's prompts: every train row (the policy writes the answers), and `eval_pairs` eval rows whose answers are
    sampled and rewarded at each evaluation. Prompts longer than max_prompt_length are reported in
    pairs_rejected.jsonl with their line numbers, never cut."""
    o = from_params(Options, stage.params)
    out: dict[str, list] = {}
    rejected: list[data.Rejected] = []
    for split in ("train", "eval"):
        keep = []
        for r in prompts(rows[split]):
            n = dpo.prompt_length(tokenizer, r["prompt"])
            if n > o.max_prompt_length:
                why = f"{n} > max_prompt_length {o.max_prompt_length}"
                rejected.append(data.Rejected(r["_line"], "prompt_too_long", why, r, r["_source"]))
            else:
                keep.append({**r, "_tokens": n + o.max_completion_length})
        out[split] = keep
    data.write_jsonl(stage.path("pairs_rejected.jsonl"), data.rejected_json(rejected))
    if not out["train"]:
        raise data.DataError(f"no prompts for GRPO: all {len(rejected)} are longer than max_prompt_length")
    if not done:
        data.check_rejected_share("prompts", len(out["train"]), rejected, o.max_rejected_share)
    held = data.sample([data.Row(i, r) for i, r in enumerate(out["eval"])], o.eval_pairs, stage.params["seed"])
    return dpo.Pairs(out["train"], [r.data for r in held], rejected, [])


def summary(job: Any, metrics: list[dict[str, Any]], pairs: dpo.Pairs, reference: dict[str, Any], guard: dict) -> dict:
    """Stage 03's GRPO entries: prompts, the mean reward at the first and last logged step, answer length, the
    reference check and the guard's verdict."""
    logged = [m for m in metrics if "reward" in m]
    first, last = (logged[0], logged[-1]) if logged else ({}, {})
    return {
        "train_prompts": len(pairs.train),
        "eval_prompts": len(pairs.eval),
        "prompts_rejected": len(pairs.too_long),
        "first_reward": first.get("reward"),
        "last_reward": last.get("reward"),
        "last_reward_std": last.get("reward_std"),
        "last_completion_length": last.get("completions/mean_length"),
        "last_kl": last.get("kl"),
        "reference": reference,
        "guard": {k: guard[k] for k in ("before", "after", "nll_diff", "rouge_l_diff", "verdict", "regressed")},
    }
