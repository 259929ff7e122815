"""Tokenize conversations through the model's own chat template with an assistant-only loss mask; audit it.

The mask is derived from the template itself, turn by turn: the text an assistant turn adds after the prompt
that `add_generation_prompt=True` renders is what the model must learn to produce, up to and including the
end-of-turn token. This works for any template that renders incrementally (ChatML, Llama 3, Mistral, Gemma,
...) without `{% generation %}` markers, and stage 02 trains on exactly these `input_ids` and `assistant_masks`.
"""

from __future__ import annotations

import hashlib
import html
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class TemplateError(ValueError):
    """The chat template cannot be used for assistant-only training."""


@dataclass
class Encoded:
    input_ids: Sequence[int]
    assistant_masks: Sequence[int]
    length: int  # before truncation
    truncated: bool

    def compact(self) -> Encoded:
        """The same encoding in ~5 bytes a token (32-bit ids, one byte a mask flag) instead of two Python lists
        (~38 with the int objects, on a 65-token SmolLM2 row): what stage 01 keeps for every row of a big file. Reads
        like the lists (len, sum, zip, index)."""
        return Encoded(array("i", self.input_ids), bytes(self.assistant_masks), self.length, self.truncated)


def template_hash(tokenizer: Any) -> str:
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16]


def _render(tokenizer: Any, msgs: list[dict[str, str]], gen: bool) -> str:
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def assistant_spans(tokenizer: Any, msgs: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render `msgs`; return the text and the character spans of every trained assistant turn (content + end of
    turn): all of them but those stage 01 marked `"train": False` (`turns.honour_turn_flags`)."""
    if not tokenizer.chat_template:
        raise TemplateError("the tokenizer has no chat template; pick an instruct model or set tokenizer.chat_template")
    full = _render(tokenizer, msgs, False)
    eos = tokenizer.eos_token or ""
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or m.get("train") is False:
            continue
        before = _render(tokenizer, msgs[:i], True) if i else ""
        upto = _render(tokenizer, msgs[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise TemplateError(
                "the chat template does not render turn by turn (rendering the first turns is not a prefix of "
                "rendering them all), so the assistant tokens cannot be located; use a template that does."
            )
        end = len(upto)
        k = upto.rfind(eos, len(before)) if eos else -1
        if k >= 0:
            end = k + len(eos)  # train the end-of-turn token, not the newline the template puts after it
        spans.append((len(before), end))
    return full, spans


def encode(tokenizer: Any, msgs: list[dict[str, str]], max_length: int | None = None) -> Encoded:
    text, spans = assistant_spans(tokenizer, msgs)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    mask = [int(any(s <= a < e for s, e in spans)) for a, _ in offsets]
    n = len(ids)
    if max_length is not None and n > max_length:
        ids, mask = ids[:max_length], mask[:max_length]
    return Encoded(ids, mask, n, n > len(ids))


def marked(tokenizer: Any, e: Encoded, fmt: str = "text") -> str:
    """Decode with trained tokens marked: «trained» in text, <mark> in HTML."""
    out, run, cur = [], [], None
    for tid, m in zip([*e.input_ids, None], [*e.assistant_masks, None], strict=True):
        if m != cur and run:
            chunk = tokenizer.decode(run)
            if fmt == "html":
                chunk = html.escape(chunk)
                out.append(f"<mark>{chunk}</mark>" if cur else f"<span style='color:#666'>{chunk}</span>")
            else:
                out.append(f"«{chunk}»" if cur else chunk)
            run = []
        if tid is not None:
            run.append(tid)
        cur = m
    body = "".join(out)
    return f"<pre style='white-space:pre-wrap'>{body}</pre>" if fmt == "html" else body


def audit(tokenizer: Any, encoded: list[Encoded], vocab_size: int | None = None) -> dict[str, Any]:
    """What the loss will see: share of tokens trained, EOS trained, rows training nothing, pad/eos, vocab."""
    eos = tokenizer.eos_token_id
    total = sum(len(e.input_ids) for e in encoded)
    trained = sum(sum(e.assistant_masks) for e in encoded)
    nothing = sum(1 for e in encoded if not any(e.assistant_masks))
    eos_trained = sum(
        1 for e in encoded if any(t == eos and m for t, m in zip(e.input_ids, e.assistant_masks, strict=True))
    )
    problems = []
    if encoded and trained == 0:
        problems.append("the template masks every token: training would learn nothing")
    elif nothing:
        problems.append(f"{nothing} row(s) have no trained token")
    if encoded and eos_trained == 0:
        problems.append(
            f"the end-of-turn token {tokenizer.eos_token!r} is never trained: the model would not learn to stop"
        )
    warnings = []
    if tokenizer.pad_token_id is None:
        warnings.append("no pad token: batches need one; set tokenizer.pad_token to an unused special token")
    elif tokenizer.pad_token_id == eos:
        warnings.append("pad token == EOS: a collator that masks padding would also mask every EOS")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        problems.append(
            f"tokenizer has {len(tokenizer)} tokens but the model's embedding has {vocab_size}: resize the embeddings"
        )
    return {
        "rows": len(encoded),
        "tokens": total,
        "trained_tokens": trained,
        "trained_pct": round(100 * trained / total, 2) if total else 0.0,
        "rows_training_nothing": nothing,
        "rows_with_eos_trained": eos_trained,
        "eos_trained_pct": round(100 * eos_trained / len(encoded), 2) if encoded else 0.0,
        "truncated_rows": sum(e.truncated for e in encoded),
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "padding_side": tokenizer.padding_side,
        "tokenizer_size": len(tokenizer),
        "model_vocab_size": vocab_size,
        "template_sha256_16": template_hash(tokenizer),
        "problems": problems,
        "warnings": warnings,
        "ok": not problems,
    }


BRIEF = (
    "rows",
    "tokens",
    "trained_pct",
    "eos_trained_pct",
    "rows_training_nothing",
    "eos_token",
    "pad_token",
    "padding_side",
    "tokenizer_size",
    "model_vocab_size",
    "warnings",
)


def brief(report: dict[str, Any]) -> str:
    """The audit's headline figures, one per line."""
    return "\n".join(f"{k:>22}: {report[k]}" for k in BRIEF)


def require_ok(report: dict[str, Any]) -> None:
    if not report["ok"]:
        raise TemplateError("tokenizer audit failed: " + "; ".join(report["problems"]))


def length_stats(lengths: list[int], max_length: int) -> dict[str, Any]:
    if not lengths:
        return {"count": 0}
    a = np.asarray(lengths)
    pct = {f"p{q}": int(np.percentile(a, q)) for q in (50, 90, 95, 99)}
    suggest = int(min(max(64, -(-int(np.percentile(a, 99)) // 64) * 64), 8192))
    return {
        "count": len(a),
        "mean": round(float(a.mean()), 1),
        "min": int(a.min()),
        "max": int(a.max()),
        **pct,
        "over_max_length": int((a > max_length).sum()),
        "max_length": max_length,
        "suggested_max_length": suggest,
    }
