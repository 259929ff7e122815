"""The measures every stage scores with, below training and evaluation: the answer NLL over assistant tokens
(`answer_nll`), exact match and ROUGE-L (`exact_match`, `rouge_l`), whether an answer says a key word (`answer_match`),
bootstrap intervals (`bootstrap_ci`, `paired_drop`).

Task metrics are Hugging Face `evaluate` modules. The built-in ones are folders here (`rouge_l`, `exact_match`),
loaded by their local path, so nothing is fetched; any other name or path goes to `evaluate.load` as it is, so a metric
a user has (installed, or a folder with its script) drops in by name: stage 05's `extra_metrics`.

`evaluate` copies a module into its module cache and keeps per-run files in its metrics cache; both are pointed into
the project's cache folder (HF_MODULES_CACHE, HF_METRICS_CACHE) unless already set.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

from ftlab.core.paths import cache_dir
from ftlab.data.template_audit import Encoded

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


def answer_nll(model: Any, encoded: list[Encoded], pad_id: int, batch_size: int = 8) -> list[float]:
    """Mean negative log-likelihood per trained (assistant) token of each example, in nats."""
    import torch

    out: list[float] = []
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, len(encoded), batch_size):
        batch = encoded[i : i + batch_size]
        n = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        att = torch.zeros((len(batch), n), dtype=torch.long)
        lab = torch.full((len(batch), n), -100, dtype=torch.long)
        for j, e in enumerate(batch):
            k = len(e.input_ids)
            ids[j, :k] = torch.tensor(e.input_ids)
            att[j, :k] = 1
            lab[j, :k] = torch.tensor([t if m else -100 for t, m in zip(e.input_ids, e.assistant_masks, strict=True)])
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = lab[:, 1:].to(device)
        tok_nll = -logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        valid = tgt != -100
        per = (tok_nll * valid).sum(1) / valid.sum(1).clamp(min=1)
        out += [float(x) if v else math.nan for x, v in zip(per.cpu(), valid.any(1).cpu(), strict=True)]
    return out


def exact_match(pred: str, ref: str) -> bool:
    """Equal after lower-casing and removing punctuation and extra whitespace (the `exact_match` evaluate module)."""
    return bool(compute("exact_match", [pred], [ref])["per_example"][0])


def rouge_l(preds: list[str], refs: list[str]) -> list[float]:
    """ROUGE-L F1 per pair (the `rouge_l` evaluate module: rouge-score, stemmed, loaded from ftlab/metrics offline)."""
    if len(preds) != len(refs):
        raise ValueError(f"rouge_l: {len(preds)} predictions for {len(refs)} references")
    return list(compute("rouge_l", preds, refs).get("per_example", []))


def bootstrap_ci(values: list[float], n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a percentile bootstrap confidence interval of the mean (NaNs ignored)."""
    import numpy as np

    v = np.array([x for x in values if x == x], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(axis=1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty"
).split()


def _normal(text: str) -> str:
    """Lower case, accents and punctuation removed, number words as digits: `Bogotá.` -> `bogota`, `Seven` -> `7`."""
    import re
    import unicodedata

    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    words = re.findall(r"[a-z0-9]+", plain)
    return " ".join(str(NUMBER_WORDS.index(w)) if w in NUMBER_WORDS else w for w in words)


def answer_match(key: str, answer: str, aliases: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether a generated answer says the key word (or one of its aliases) as a whole word, whatever its length:
    "Paris." and "The capital of France is Paris, a city on the Seine." both say `Paris`; "7" says `seven`."""
    said = f" {_normal(answer)} "
    return any(f" {_normal(k)} " in said for k in (key, *aliases) if _normal(k))


def paired_drop(before: list[bool], after: list[bool], level: float = 0.95) -> tuple[float, float, float]:
    """The fall in the share of right answers from `before` to `after` on the same questions, with a paired
    bootstrap interval: (drop, low, high); positive means fewer right."""
    if len(before) != len(after):
        raise ValueError(
            f"paired_drop: {len(before)} answers before and {len(after)} after; expected the same questions"
        )
    return bootstrap_ci([float(a) - float(b) for a, b in zip(before, after, strict=True)], level=level)
