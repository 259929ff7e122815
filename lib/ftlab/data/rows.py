"""Load the formats people bring, normalize them to chat messages, validate every row, dedupe, split.

Nothing is dropped silently: every row that is not accepted becomes a `Rejected` with its line (or row) number, a
reason from `REASONS` and the raw record, and stage 01 writes them all to `rejected.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlab.data import formats, turns
from ftlab.data.formats import REASONS, RowError, check_order, detect_format, normalize  # noqa: F401 - used as data.*
from ftlab.data.readers import DataError, Rejected, read_records  # noqa: F401 - used as data.*
from ftlab.data.turns import Renames  # noqa: F401 - used as data.Renames

# rejections that follow from choices made here (the split, a filter), not from bad data: not counted by the gate
CHOSEN_REASONS = {"prompt_in_eval", "low_perplexity", "self_answer_matches"}


@dataclass(slots=True)
class Row:
    line: int
    data: dict[str, Any]  # {"messages"}, a pair {"prompt", "chosen", "rejected"} or {"prompt", "completion", "label"}
    extra: dict[str, Any] = field(default_factory=dict)  # fields beyond the schema, kept as they were
    source: str = ""
    unit: str = "line"  # what `line` counts in its file: "line" or "record" (files.read_records)

    def to_json(self) -> dict[str, Any]:
        return {**self.data, **self.extra, "_line": self.line, "_source": self.source}

    def reject(self, reason: str, detail: str) -> Rejected:
        return Rejected(self.line, reason, detail, self.to_json(), self.source, self.unit)


def load(
    path: str | Path,
    fmt: str = "auto",
    kind: str = "chat",
    turn_flags: str = "reject",
    renames: turns.Renames | None = None,
) -> tuple[list[Row], list[Rejected], str]:
    """Read and normalize a file of `kind` "chat" (conversations) or "prefs" (pairs, labelled rows). Returns accepted
    rows, rejected rows and the format used. `turn_flags`: a turn's key that says whether it is trained (OpenAI's
    `weight` 0/1, axolotl's `train`) fails its row ("reject"), or is honoured ("honour": `turns.honour_turn_flags`).
    `renames`: renamed keys and roles read as the layout they rename (`turns.Renames`)."""
    renames = renames or turns.Renames()
    if fmt != "auto" and fmt not in formats.names():
        raise DataError(f"data_format must be one of {['auto', *formats.names()]}, got {fmt!r}")
    if turn_flags not in turns.TURN_FLAGS:
        raise DataError(f"turn_flags must be one of {list(turns.TURN_FLAGS)}, got {turn_flags!r}")
    records, rejected, counts = read_records(path)
    for r in rejected:
        r.source, r.unit = str(path), counts
    rows: list[Row] = []
    used: Counter[str] = Counter()
    for line, original in records:
        rec = original
        try:
            rec = renames.apply(original)
            f = fmt if fmt != "auto" else formats.detect_format(rec) if isinstance(rec, dict) else "auto"
            data, extra = formats.normalize(rec, f)
            extra |= turns.turn_extras(rec, formats.get(f).fields, honour=turn_flags == "honour")
            if turn_flags == "honour":
                turns.honour_turn_flags(rec, data, formats.get(f))
        except RowError as e:
            rejected.append(Rejected(line, e.reason, e.detail, _writable(original), str(path), counts))
            continue
        except RecursionError:
            detail = "a value nested too deeply to check"
            rejected.append(Rejected(line, "too_deep", detail, _writable(original), str(path), counts))
            continue
        is_pref = "prompt" in data  # a pair (prompt/chosen/rejected) or a labelled answer (prompt/completion/label)
        if is_pref != (kind == "prefs"):
            rejected.append(Rejected(line, *_misplaced(f, kind), original, str(path), counts))
            continue
        used[f] += 1
        rows.append(Row(line, data, extra, str(path), counts))
    if records and renames.require_all and renames.unused():
        found = sorted({name for _, r in records for name in _field_names(r)})[:16]
        raise DataError(
            f"{path}: data_fields / data_roles name {', '.join(renames.unused())}, which no row has (its rows' fields: "
            f"{found}); fix the name or remove it"
        )
    return rows, rejected, ", ".join(f"{k} ({v})" for k, v in used.most_common()) or "none"


def _field_names(rec: Any) -> set[str]:
    """A record's keys, and its turns' keys as `field[].key`."""
    names = set(rec) if isinstance(rec, dict) else set()
    for k, v in rec.items() if isinstance(rec, dict) else ():
        names |= {f"{k}[].{tk}" for t in (v if isinstance(v, list) else ()) if isinstance(t, dict) for tk in t}
    return names


def _misplaced(fmt: str, kind: str) -> tuple[str, str]:
    """(reason, detail) for a row in the wrong file: SFT rows in prefs_path, or pairs / labelled rows in data_path."""
    if kind == "prefs":
        return (
            "unknown_schema",
            f"expected prompt/chosen/rejected or a labelled KTO row in this file, found a {fmt} row",
        )
    if fmt.startswith("kto_"):
        detail = (
            "a labelled answer is judged, not a target to imitate, so SFT must not train it: "
            'give the file as prefs_path and train it in stage 03 with method="kto"'
        )
        return "kto_row", detail
    return "unknown_schema", f"expected an SFT format in this file, found a {fmt} row"


def _writable(rec: Any) -> Any:
    """The record as rejected.jsonl can hold it: itself, or its ASCII-escaped JSON text where it holds lone
    surrogates, or a note where it is nested too deeply to write at all."""
    try:
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
        return rec
    except UnicodeEncodeError:
        return json.dumps(rec)  # \ud800 stays an escape sequence
    except (RecursionError, ValueError):
        return "<record nested too deeply to copy; see its line in the data file>"


# ---- content that is almost certainly a mistake: warned about, with counts and examples -------------------------

_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}")  # {{name}}: a template that was never filled in
_MEDIA = re.compile(r"<\|?(image|video|audio)\|?>")  # LLaVA-style media placeholders


def content_warnings(rows: list[Row], examples: int = 3) -> dict[str, dict[str, Any]]:
    """Rows that will train something the author did not mean: unfilled template placeholders ({{name}}), media
    placeholders (<image>) in a text-only run, and fields present but not trained (kept beside the row)."""
    found: dict[str, list[tuple[str, int, str]]] = {}
    for r in rows:
        parts = ("messages", "prompt", "chosen", "rejected", "completion")
        texts = [m["content"] for part in parts for m in r.data.get(part, [])]
        for kind, pattern in (("template_placeholder", _PLACEHOLDER), ("media_placeholder", _MEDIA)):
            hit = next((m.group() for t in texts for m in [pattern.search(t)] if m), None)
            if hit:
                found.setdefault(kind, []).append((r.unit, r.line, hit))
        for k in r.extra:
            found.setdefault(f"ignored_field:{k}", []).append((r.unit, r.line, k))
    return {k: {"rows": len(v), "examples": [f"{u} {n}: {x}" for u, n, x in v[:examples]]} for k, v in found.items()}


def brief_warnings(warnings: dict[str, dict[str, Any]]) -> str:
    if not warnings:
        return "no content warnings"
    lines = []
    for k, w in warnings.items():
        if k.startswith("ignored_field:"):  # metadata is often meant; say so without alarm
            lines.append(f"note: field {k.split(':', 1)[1]!r} in {w['rows']} rows is kept beside the row, not trained")
        else:
            lines.append(f"WARNING {k}: {w['rows']} rows would train it verbatim ({'; '.join(w['examples'])})")
    return "\n".join(lines)


# ---- dataset-level checks ------------------------------------------------------------------------------------

_PUNCT = str.maketrans("", "", string.punctuation)


def key_text(row: Row) -> str:
    return json.dumps(row.data, sort_keys=True, ensure_ascii=False)


def near_key(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def prompt_key(row: Row) -> str:
    """What identifies a conversation for splitting and leak checks: its non-assistant turns, normalized."""
    msgs = row.data.get("prompt") or row.data["messages"]
    turns = [m["content"] for m in msgs if m["role"] != "assistant"] or [msgs[0]["content"]]
    return near_key("\n".join(turns))


def dedupe(rows: list[Row]) -> tuple[list[Row], list[Rejected]]:
    exact: dict[str, int] = {}
    near: dict[str, int] = {}
    keep, rejected = [], []
    for r in rows:
        k = key_text(r)
        nk = near_key(k)
        if k in exact:
            rejected.append(r.reject("duplicate", f"same as {r.unit} {exact[k]}"))
        elif nk in near:
            rejected.append(r.reject("near_duplicate", f"same as {r.unit} {near[nk]} up to case/spacing/punctuation"))
        else:
            exact[k], near[nk] = r.line, r.line
            keep.append(r)
    return keep, rejected


def split(rows: list[Row], eval_fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Seeded split by conversation: rows sharing a prompt always land on the same side."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(prompt_key(r), []).append(r)
    keys = sorted(groups, key=lambda k: hashlib.sha256(k.encode()).hexdigest())
    random.Random(seed).shuffle(keys)
    n_eval = round(len(keys) * eval_fraction)
    if eval_fraction > 0 and n_eval == 0 and len(keys) > 1:
        n_eval = 1
    eval_keys = set(keys[:n_eval])
    train = [r for r in rows if prompt_key(r) not in eval_keys]
    evals = [r for r in rows if prompt_key(r) in eval_keys]
    return train, evals


def drop_leaks(
    reference: list[Row], rows: list[Row], reason: str = "eval_in_train"
) -> tuple[list[Row], list[Rejected]]:
    """Reject the `rows` whose prompt also appears in `reference` (eval vs train, or prefs vs eval)."""
    seen = {prompt_key(r) for r in reference}
    keep, rejected = [], []
    other = "train" if reason == "eval_in_train" else "eval"
    for r in rows:
        if prompt_key(r) in seen:
            rejected.append(r.reject(reason, f"its prompt is also an {other} row"))
        else:
            keep.append(r)
    return keep, rejected


def sample(rows: list[Row], n: int, seed: int) -> list[Row]:
    if n <= 0 or n >= len(rows):
        return rows
    idx = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in idx]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    from ftlab.core.paths import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def rejected_json(rejected: list[Rejected]) -> list[dict[str, Any]]:
    keys = ("line", "unit", "reason", "detail", "raw", "source")  # not asdict: it deep-copies every raw record
    return [{k: getattr(r, k) for k in keys} for r in sorted(rejected, key=lambda r: (r.source, r.line))]


def reason_counts(rejected: list[Rejected]) -> dict[str, int]:
    return dict(Counter(r.reason for r in rejected).most_common())


# ---- tokens ---------------------------------------------------------------------------------------------------


def resolve_data_path(p: str) -> Path:
    """Paths in parameters are relative to the repo root (notebooks run with notebooks/ as cwd)."""
    from ftlab.core.paths import repo_root

    path = Path(p).expanduser()
    return path if path.is_absolute() else repo_root() / path


def conversations(row: Row) -> list[list[dict[str, str]]]:
    """The conversations a row trains on: one for SFT or a labelled KTO answer, chosen and rejected for a pair."""
    if "messages" in row.data:
        return [row.data["messages"]]
    if "completion" in row.data:
        return [row.data["prompt"] + row.data["completion"]]
    return [row.data["prompt"] + row.data["chosen"], row.data["prompt"] + row.data["rejected"]]


def tokenize_rows(rows: list[Row], tokenizer: Any, max_length: int) -> tuple[list[Row], list[Any], list[Rejected]]:
    """Encode each row through the chat template; rows longer than max_length are rejected, not cut. The encodings
    are kept compact (`Encoded.compact`), so a big file fits."""
    from ftlab.data.template_audit import encode

    keep, encoded, rejected = [], [], []
    for r in rows:
        encs = [encode(tokenizer, msgs) for msgs in conversations(r)]
        longest = max(e.length for e in encs)
        if longest > max_length:
            rejected.append(r.reject("too_long", f"{longest} tokens > max_length {max_length}"))
            continue
        keep.append(r)
        encoded.append(encs[0].compact())
    return keep, encoded, rejected


FIXES = {  # the parameter that changes the outcome for a reason, where one does
    "too_long": "raise max_length (stage 01 and 02) if the model's context allows it",
    "unknown_schema": f"rename the fields to one of the known layouts: {formats.layouts()}",
}


def rejection_summary(rejected: list[Rejected], examples: int = 3) -> str:
    """Per reason: the count, the first few line numbers with their detail, and the fix where a parameter is one."""
    out = []
    for reason, n in reason_counts(rejected).items():
        first = [r for r in rejected if r.reason == reason][:examples]
        where = "; ".join(f"{r.unit} {r.line}: {r.detail[:100]}" for r in first)
        fix = f" -> {FIXES[reason]}" if reason in FIXES else ""
        out.append(f"  {reason} x{n} ({where}{', ...' if n > examples else ''}){fix}")
    return "\n".join(out)


def check_rejected_share(
    name: str, accepted: int, rejected: list[Rejected], limit: float, rejected_path: Path | None = None
) -> float:
    """Fail when bad data (not the split or an opt-in filter) made up more than `limit` of a file, saying per reason
    which lines, where the rejected rows are written and what would change the outcome."""
    rejected = [r for r in rejected if r.reason not in CHOSEN_REASONS]
    total = accepted + len(rejected)
    share = len(rejected) / total if total else 0.0
    if total == 0:
        raise DataError(f"{name}: no rows at all; check the file and data_path")
    where = f"every rejected row, with its line and raw record: {rejected_path}" if rejected_path else "rejected.jsonl"
    if accepted == 0 or share > limit:
        head = (
            f"{name}: none of its {total} rows was accepted"
            if accepted == 0
            else f"{name}: {len(rejected)} of {total} rows rejected ({share:.1%} > max_rejected_share {limit:.1%})"
        )
        raise DataError(
            f"{head}; by reason:\n{rejection_summary(rejected)}\n{where}. Fix the data, or raise max_rejected_share "
            "if these rejections are expected."
        )
    if rejected:
        print(f"{name}: {accepted} rows accepted, {len(rejected)} rejected ({share:.1%}): {reason_counts(rejected)}")
    return share


def perplexity_filter(rows: list[Row], nll: list[float], min_perplexity: float) -> tuple[list[Row], list[Rejected]]:
    import math

    keep, rejected = [], []
    for r, x in zip(rows, nll, strict=True):
        ppl = math.exp(x) if x == x else math.inf
        if ppl < min_perplexity:
            rejected.append(r.reject("low_perplexity", f"perplexity {ppl:.2f} < {min_perplexity}"))
        else:
            keep.append(r)
    return keep, rejected
