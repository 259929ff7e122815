"""Preference tuning with DPO (TRL's DPOTrainer) on top of the SFT adapter: options, config, pairs, the reference
check and the regression guard.

The policy is the SFT adapter (trainable); TRL adds a frozen copy of it as `ref`, on the same base weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab import data, metrics
from ftlab.core import runs, stages
from ftlab.core.params import Param
from ftlab.data.template_audit import encode
from ftlab.models import generate
from ftlab.train.config import TrainParams, from_params
from ftlab.train.preflight import longest

FIRST_LOSS = "ln 2 = 0.693: the loss is -log(sigmoid(beta x margin)); with margin 0, sigmoid(0) = 0.5"
FIRST_LOSS_TOL = 1e-3
SHOWN = ("steps", "first_loss", "last_loss", "first_margin", "last_margin")  # what the notebook's last cell prints
NOT_ARGS: tuple[str, ...] = ()
LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "apo_zero")
PAIR_SOURCES = ("prefs", "self", "both")  # stage 01's pairs, the SFT model's own answers as the rejected ones, both
PARAMS = {  # stage 03's parameters that DPO reads and some other method does not
    "beta": Param(float, lo=1e-4, hi=10),
    "loss_type": Param(str, choices=LOSS_TYPES),
    "pairs": Param(str, choices=PAIR_SOURCES),
    "self_pairs_max": Param(int, lo=0),
}


@dataclass(frozen=True)
class Options:
    """Stage 03's own parameters beyond TrainParams; the defaults are the notebook's (a test holds them equal)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    pairs: str = "prefs"
    self_pairs_max: int = 64
    eval_pairs: int = 32
    max_prompt_length: int = 256
    guard_rows: int = 32
    max_new_tokens: int = 64
    max_rejected_share: float = 0.05


def config_kwargs(
    out_dir: Path, t: TrainParams, o: Options, device: str, attn: str | None, offload_needed: bool = False
) -> dict[str, Any]:
    return {"beta": o.beta, "loss_type": [o.loss_type]}  # TRL takes a list of losses (weighted sum)


def batch_rows(p: dict[str, Any]) -> int:
    """Sequences in one batch for the memory plan: each pair runs as two (chosen and rejected)."""
    return 2 * p["batch_size"]


def planned_length(p: dict[str, Any], device: str, seq_len: int) -> int:
    return seq_len  # pairs are padded to the longest of the batch, never packed


def worst_case(trainer: Any) -> list[int]:
    """The preflight's batch: the pairs whose prompt + longer answer is longest (KTO: prompt + its answer, and its
    KL partner's)."""
    ds = trainer.train_dataset
    answers = [k for k in ("chosen_ids", "rejected_ids", "completion_ids", "KL_completion_ids") if k in ds.column_names]
    cols = zip(ds["prompt_ids"], *(ds[k] for k in answers), strict=True)
    return longest([len(p) + max(len(a) for a in rest) for p, *rest in cols], trainer.args.per_device_train_batch_size)


def trainer_kwargs(o: Options, **_: Any) -> dict[str, Any]:
    return {}  # the model is already the SFT adapter; TRL adds its frozen `ref` copy


def dataset(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


def read_inputs(stage: runs.Stage) -> dict[str, Any]:
    """Stage 01's pairs, train and eval rows and stage 02's adapter, hashed into the manifest."""
    sft = stages.method(stage.method.builds_on)
    adapter = stage.input(sft.stage, sft.adapter)
    paths = {k: stage.input(stages.DATA, f"{k}.jsonl") for k in ("prefs", "train", "eval")}
    stage.record_inputs({**paths, "sft_adapter": adapter / "adapter_model.safetensors"})
    return {"adapter": adapter, **{k: data.read_jsonl(p) for k, p in paths.items()}}


# ---- pairs -------------------------------------------------------------------------------------------------------


def prompt_length(tokenizer: Any, prompt: list[dict[str, str]]) -> int:
    enc = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    return len(enc["input_ids"])


def check_pairs(
    rows: list[dict[str, Any]], tokenizer: Any, max_length: int, max_prompt_length: int
) -> tuple[list[dict[str, Any]], list[data.Rejected]]:
    """Pairs DPO can train on whole. TRL would silently cut long prompts or drop fully truncated rows; here such
    rows are reported (with their line numbers) instead. Returns (kept rows, rejected records)."""
    keep, rejected = [], []
    for r in rows:
        p = prompt_length(tokenizer, r["prompt"])
        full = max(len(encode(tokenizer, r["prompt"] + r[k]).input_ids) for k in answer_keys(r))
        line, src = r.get("_line", 0), r.get("_source", "")
        if p > max_prompt_length:
            rejected.append(
                data.Rejected(line, "prompt_too_long", f"{p} > max_prompt_length {max_prompt_length}", r, src)
            )
        elif full > max_length:
            rejected.append(data.Rejected(line, "too_long", f"{full} tokens > max_length {max_length}", r, src))
        else:
            keep.append({**r, "_tokens": full})
    return keep, rejected


def answer_keys(row: dict[str, Any]) -> tuple[str, ...]:
    """The answers a stage-03 row holds: chosen and rejected for a pair, the one judged answer of a labelled row."""
    return ("completion",) if "label" in row else ("chosen", "rejected")


def refuse_labelled(stage: runs.Stage, rows: list[dict[str, Any]]) -> None:
    """Pairs-only methods (DPO, ORPO) stop on labelled KTO rows instead of dropping them: say which lines and what
    to run instead."""
    lines = [str(r.get("_line", "?")) for r in rows if "label" in r]
    if lines:
        title = stage.method.title
        src = next(r.get("_source", "prefs") for r in rows if "label" in r)
        raise data.DataError(
            f"{title} trains on preference pairs (prompt/chosen/rejected), but stage 01's prefs hold {len(lines)} "
            f"labelled rows (prompt/completion/label; {src} lines {', '.join(lines[:8])}"
            f'{" ..." if len(lines) > 8 else ""}); train them with method="kto", or give a file of pairs'
        )


def self_pairs(rows: list[dict[str, Any]], answers: list[str]) -> tuple[list[dict[str, Any]], list[data.Rejected]]:
    """On-the-fly pairs: chosen = the reference answer, rejected = the model's own greedy answer where it differs.
    An empty answer (the model stopped at once) is kept as a rejected answer: it is a real failure to push down."""
    pairs, same = [], []
    for r, a in zip(rows, answers, strict=True):
        prompt, ref = r["messages"][:-1], r["messages"][-1]["content"]
        line, src = r.get("_line", 0), r.get("_source", "")
        if metrics.exact_match(a, ref):
            same.append(data.Rejected(line, "self_answer_matches", f"model answer {a[:60]!r}", r, src))
            continue
        pairs.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": ref}],
                "rejected": [{"role": "assistant", "content": a}],
                "_line": line,
                "_source": "self:" + str(src),
            }
        )
    return pairs, same


@dataclass
class Pairs:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    too_long: list[data.Rejected]
    skipped: list[data.Rejected]  # self pairs whose answer already equals the reference

    def __repr__(self) -> str:
        return (
            f"{len(self.train)} training pairs, {len(self.eval)} held-out pairs, {len(self.too_long)} too long, "
            f"{len(self.skipped)} self answers equal to the reference"
        )


def make_pairs(
    stage: runs.Stage, rows: dict[str, Any], model: Any, tokenizer: Any, done: bool, labelled: bool = False
) -> Pairs:
    """Stage 01's pairs and/or self pairs, checked against the length limits (rejects go to pairs_rejected.jsonl),
    split into training pairs and a seeded held-out set for reward accuracy. `labelled`: stage 01's labelled KTO
    rows count as pairs do (KTO); otherwise they stop the stage (`refuse_labelled`)."""
    o, t = options(stage), stage.params
    pool, skipped = (rows["prefs"] if o.pairs in ("prefs", "both") else []), []
    if not labelled:
        refuse_labelled(stage, pool)
    if o.pairs in ("self", "both") and not done:
        src = data.sample([data.Row(r["_line"], r) for r in rows["train"]], o.self_pairs_max, t["seed"])
        answers = generate.greedy(model, tokenizer, [r.data["messages"][:-1] for r in src], o.max_new_tokens)
        made, skipped = self_pairs([r.data for r in src], [a.text for a in answers])
        pool = pool + made
        print(f"self pairs: {len(made)} made, {len(skipped)} skipped (answer already equals the reference)")
    kept, too_long = check_pairs(pool, tokenizer, t["max_length"], o.max_prompt_length)
    if not kept:
        raise data.DataError(
            f"no preference pairs to train on (pairs={o.pairs!r}: {len(pool)} candidates, "
            f"{len(too_long)} too long, {len(skipped)} self answers equal to the reference); "
            "see pairs_rejected.jsonl"
        )
    data.write_jsonl(stage.path("pairs_rejected.jsonl"), data.rejected_json(too_long + skipped))
    if not done:
        data.check_rejected_share("pairs", len(kept), too_long, o.max_rejected_share)
    n_held = min(o.eval_pairs, len(kept) // 5)
    held = data.sample([data.Row(i, r) for i, r in enumerate(kept)], n_held, t["seed"]) if n_held else []
    held_ids = {r.line for r in held}
    return Pairs([r for i, r in enumerate(kept) if i not in held_ids], [r.data for r in held], too_long, skipped)


def options(stage: runs.Stage) -> Options:
    return from_params(Options, stage.params)


# ---- the reference and the regression guard ------------------------------------------------------------------------


def reference_is_sft(model: Any) -> dict[str, Any]:
    """The frozen reference must be a copy of the SFT adapter (TRL's "ref"), not the raw base: check the weights."""
    import torch

    from ftlab.train.preflight import TrainingStopped

    ref = {n: p for n, p in model.named_parameters() if ".ref." in n}
    if not ref:
        raise TrainingStopped(
            "no frozen 'ref' adapter: training would compare against the raw base model, not the SFT policy"
        )
    pol = dict(model.named_parameters())
    diff = max(float((p - pol[n.replace(".ref.", ".default.")]).abs().max()) for n, p in ref.items())
    return {
        "ref_tensors": len(ref),
        "ref_trainable": sum(p.requires_grad for p in ref.values()),
        "max_abs_diff_to_policy": diff,
        "ref_nonzero": any(bool(torch.any(p != 0)) for p in ref.values()),
    }


def check_reference(trainer: Any) -> dict[str, Any]:
    """At step 0 the reference equals the policy, is frozen and is not empty; anything else stops the stage."""
    from ftlab.train.preflight import TrainingStopped

    ref = reference_is_sft(trainer.model)
    if not (ref["max_abs_diff_to_policy"] == 0 and ref["ref_trainable"] == 0 and ref["ref_nonzero"]):
        raise TrainingStopped(f"the reference is not a frozen copy of the SFT adapter: {ref}")
    return ref


def summary(
    job: Any, metrics: list[dict[str, Any]], pairs: Pairs, reference: dict[str, Any], guard: dict[str, Any]
) -> dict[str, Any]:
    """Stage 03's own summary entries: pairs, reward margins, the reference check and the guard's verdict."""
    margins = [m for m in metrics if "rewards/margins" in m] or [{"rewards/margins": None}]
    return {
        "train_pairs": len(pairs.train),
        "eval_pairs": len(pairs.eval),
        "pairs_rejected": len(pairs.too_long),
        "self_pairs_skipped": len(pairs.skipped),
        "first_margin": margins[0]["rewards/margins"],
        "last_margin": margins[-1]["rewards/margins"],
        "reference": reference,
        "guard": {k: guard[k] for k in ("before", "after", "nll_diff", "rouge_l_diff", "verdict", "regressed")},
    }
