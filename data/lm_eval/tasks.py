"""Datasets of the local lm-evaluation-harness tasks (the YAML files beside this one), built from files in this
repository in a fixed, seeded way, so every run of every model answers the same questions with the same choices.

- `general_knowledge`: the forgetting probe (`data/probes/general_knowledge.jsonl`, built by data/build_probe.py) as
  a cloze: the reference sentence up to its key word starts the answer (lm-eval's `gen_prefix`, "The capital of
  France is"), and the choices are the key word against three other questions' key words of the same kind (the row's
  `kind`: a capital for a capital, a number for a number). Only the key word is scored, so the four choices share one
  context, and where they are one token each lm-eval scores all four from one forward pass (its one-token
  continuation cache): 47.8 s instead of 83.7 s for the 260 questions on SmolLM2-135M on 2 CPU cores, against the
  whole sentence as each choice (version 1 of the task; benchmarks/lm_eval_cloze.py), 238 of 260 picks the same.
- `heldout`: the run's own held-out rows (stage 01's `eval.jsonl`, passed as `eval_path` in the task metadata) as
  multiple choice: the reference answer against three other held-out rows' answers.

Both are scored by log-likelihood (acc, and acc_norm for choices of different lengths). Run them from the command
line too: `lm_eval --include_path data/lm_eval --tasks ftlab_general_knowledge ...` (see docs in data/README.md).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBE = HERE.parent / "probes" / "general_knowledge.jsonl"
N_CHOICES = 4
NUMBER_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"}


def _read(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: expected one JSON object per line, found {line[:60]!r} ({e})") from e
    return rows


def _kind(word: str) -> str:
    if word.isdigit():
        return "digits"
    if word.lower() in NUMBER_WORDS:
        return "number word"
    return "name" if word[:1].isupper() else "word"


def _rng(text: str) -> random.Random:
    """A generator seeded by the question itself: the same choices whatever the file order or Python version."""
    return random.Random(int(hashlib.sha256(text.encode()).hexdigest()[:16], 16))


def _mc(question: str, right: str, others: list[str]) -> dict:
    pool = sorted({o for o in others if o != right})
    if len(pool) < N_CHOICES - 1:
        raise ValueError(f"{question!r}: needs {N_CHOICES - 1} distinct wrong choices, found {len(pool)}")
    rng = _rng(question)
    choices = [right, *rng.sample(pool, N_CHOICES - 1)]
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "gold": choices.index(right)}


def general_knowledge_docs(path: Path = PROBE) -> list[dict]:
    rows = _read(path)
    answers = [(r["answer"], r.get("kind") or _kind(r["answer"])) for r in rows]
    docs = []
    for n, r in enumerate(rows, 1):
        question, sentence, key = r["messages"][0]["content"], r["messages"][-1]["content"], r["answer"]
        spots = list(re.finditer(rf"\b{re.escape(key)}\b", sentence))
        if not spots:
            raise ValueError(f"{path}:{n}: the answer {key!r} is not a word of the reference {sentence!r}")
        prefix = sentence[: spots[-1].start()]
        kind = r.get("kind") or _kind(key)
        same = [a for a, k in answers if k == kind and a.lower() != key.lower()]
        other = [a for a, _ in answers if a.lower() != key.lower()]
        swaps = same if len(set(same)) >= N_CHOICES - 1 else other
        space = " " if prefix.endswith(" ") else ""  # the word's own space goes with it, as the tokenizer sees it
        doc = _mc(question, space + key, [space + w for w in swaps])
        docs.append({**doc, "prefix": prefix.rstrip()})
    return docs


def heldout_docs(eval_path: str) -> list[dict]:
    rows = _read(Path(eval_path))
    pairs = []
    for r in rows:
        msgs = r["messages"]
        if msgs[-1]["role"] != "assistant":
            raise ValueError(f"{eval_path}: expected conversations ending on an assistant turn, found {msgs[-1]}")
        pairs.append((msgs[-2]["content"], msgs[-1]["content"]))
    answers = [a for _, a in pairs]
    return [_mc(q, a, answers) for q, a in pairs]


def _dataset(docs: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def general_knowledge(**_: object):
    return _dataset(general_knowledge_docs())


def heldout(eval_path: str = "", **_: object):
    if not eval_path:
        raise ValueError(
            "ftlab_heldout needs the held-out file: pass metadata {'eval_path': 'outputs/<run>/01_prepare_data/"
            "eval.jsonl'} (lm_eval --metadata '{\"eval_path\": ...}'); stage 05 does this for you"
        )
    return _dataset(heldout_docs(eval_path))
