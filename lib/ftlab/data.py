"""Load the formats people bring, normalize them to chat messages, validate every row, dedupe, split.

Nothing is dropped silently: every row that is not accepted becomes a `Rejected` with its line (or row) number, a
reason from `REASONS` and the raw record, and stage 01 writes them all to `rejected.jsonl`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import string
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ftlab import formats
from ftlab.formats import REASONS, RowError, check_order, detect_format, normalize  # noqa: F401 - used as data.*

# rejections that follow from choices made here (the split, a filter), not from bad data: not counted by the gate
CHOSEN_REASONS = {"prompt_in_eval", "low_perplexity", "self_answer_matches"}


class DataError(ValueError):
    """The input as a whole cannot be used (missing file, unreadable format, too many rejected rows)."""


@dataclass
class Rejected:
    line: int  # 1-based line (JSONL, CSV) or row/record number (JSON, Parquet, datasets folder)
    reason: str
    detail: str
    raw: Any
    source: str = ""


@dataclass
class Row:
    line: int
    data: dict[str, Any]  # {"messages": [...]} or {"prompt": [...], "chosen": [...], "rejected": [...]}
    extra: dict[str, Any] = field(default_factory=dict)  # fields beyond the schema, kept as they were
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**self.data, **self.extra, "_line": self.line, "_source": self.source}


# ---- reading files ----------------------------------------------------------------------------------------------


def read_records(path: str | Path) -> tuple[list[tuple[int, Any]], list[Rejected]]:
    """Read a JSONL, JSON, CSV or Parquet file, or a `datasets` folder, into (line, record) pairs."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"data file {path} does not exist; expected a .jsonl, .json, .csv, .parquet file or a "
            "folder saved with datasets' save_to_disk. Check the data_path parameter."
        )
    if path.is_dir():
        return _read_datasets_folder(path), []
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return [(i + 1, r) for i, r in enumerate(pq.read_table(path).to_pylist())], []
    raise DataError(
        f"{path}: unsupported file type {suffix!r}; expected .jsonl, .json, .csv, .tsv, .parquet or a datasets folder."
    )


def _read_jsonl(path: Path) -> tuple[list[tuple[int, Any]], list[Rejected]]:
    records, rejected = [], []
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark is harmless; drop it
    for n, line in enumerate(raw.split(b"\n"), 1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue  # blank lines are not rows
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            rejected.append(Rejected(n, "invalid_utf8", f"byte {e.start}: {e.reason}", line.decode("utf-8", "replace")))
            continue
        try:
            records.append((n, json.loads(text)))
        except json.JSONDecodeError as e:
            rejected.append(Rejected(n, "invalid_json", f"{e.msg} at column {e.colno}", text))
    return records, rejected


def _read_json(path: Path) -> tuple[list[tuple[int, Any]], list[Rejected]]:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"{path}: not valid UTF-8 JSON ({e}); expected a list of records. For one record per "
            "line use .jsonl, which reports bad lines one by one."
        ) from None
    if isinstance(doc, dict):
        lists = [k for k in ("data", "rows", "train", "examples") if isinstance(doc.get(k), list)]
        if not lists:
            raise DataError(
                f"{path}: expected a JSON list of records or an object with a 'data' list, found keys "
                f"{sorted(doc)[:10]}"
            )
        doc = doc[lists[0]]
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a JSON list of records, found {type(doc).__name__}")
    return [(i + 1, r) for i, r in enumerate(doc)], []


def _read_csv(path: Path, delimiter: str) -> tuple[list[tuple[int, Any]], list[Rejected]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: invalid UTF-8 at line {line} (byte {e.start}); re-save the file as UTF-8.") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    records = []
    start = 2  # line 1 is the header
    for rec in reader:
        records.append((start, {k: v for k, v in rec.items() if k is not None}))
        start = reader.line_num + 1
    return records, []


def _read_datasets_folder(path: Path) -> list[tuple[int, Any]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path} is a folder but not one saved with datasets' save_to_disk ({e}).") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {list(ds)})")
        ds = ds["train"]
    return [(i + 1, r) for i, r in enumerate(ds)]


def load(path: str | Path, fmt: str = "auto", kind: str = "chat") -> tuple[list[Row], list[Rejected], str]:
    """Read and normalize a file of `kind` "chat" (conversations) or "prefs" (preference pairs). Returns accepted
    rows, rejected rows and the format used."""
    if fmt != "auto" and fmt not in formats.names():
        raise DataError(f"data_format must be one of {['auto', *formats.names()]}, got {fmt!r}")
    records, rejected = read_records(path)
    for r in rejected:
        r.source = str(path)
    rows: list[Row] = []
    used: Counter[str] = Counter()
    for line, rec in records:
        try:
            f = fmt if fmt != "auto" else formats.detect_format(rec) if isinstance(rec, dict) else "auto"
            data, extra = formats.normalize(rec, f)
        except RowError as e:
            rejected.append(Rejected(line, e.reason, e.detail, rec, str(path)))
            continue
        is_pref = "chosen" in data
        if is_pref != (kind == "prefs"):
            want = "prompt/chosen/rejected" if kind == "prefs" else "an SFT format"
            rejected.append(
                Rejected(line, "unknown_schema", f"expected {want} in this file, found a {f} row", rec, str(path))
            )
            continue
        used[f] += 1
        rows.append(Row(line, data, extra, str(path)))
    return rows, rejected, ", ".join(f"{k} ({v})" for k, v in used.most_common()) or "none"


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
            rejected.append(Rejected(r.line, "duplicate", f"same as line {exact[k]}", r.to_json(), r.source))
        elif nk in near:
            rejected.append(
                Rejected(
                    r.line,
                    "near_duplicate",
                    f"same as line {near[nk]} up to case/spacing/punctuation",
                    r.to_json(),
                    r.source,
                )
            )
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
            rejected.append(Rejected(r.line, reason, f"its prompt is also an {other} row", r.to_json(), r.source))
        else:
            keep.append(r)
    return keep, rejected


def sample(rows: list[Row], n: int, seed: int) -> list[Row]:
    if n <= 0 or n >= len(rows):
        return rows
    idx = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in idx]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    from ftlab.paths import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def rejected_json(rejected: list[Rejected]) -> list[dict[str, Any]]:
    return [asdict(r) for r in sorted(rejected, key=lambda r: (r.source, r.line))]


def reason_counts(rejected: list[Rejected]) -> dict[str, int]:
    return dict(Counter(r.reason for r in rejected).most_common())


# ---- tokens ---------------------------------------------------------------------------------------------------


def resolve_data_path(p: str) -> Path:
    """Paths in parameters are relative to the repo root (notebooks run with notebooks/ as cwd)."""
    from ftlab.paths import repo_root

    path = Path(p).expanduser()
    return path if path.is_absolute() else repo_root() / path


def conversations(row: Row) -> list[list[dict[str, str]]]:
    """The conversations a row trains on: one for SFT, chosen and rejected for a preference pair."""
    if "messages" in row.data:
        return [row.data["messages"]]
    return [row.data["prompt"] + row.data["chosen"], row.data["prompt"] + row.data["rejected"]]


def tokenize_rows(rows: list[Row], tokenizer: Any, max_length: int) -> tuple[list[Row], list[Any], list[Rejected]]:
    """Encode each row through the chat template; rows longer than max_length are rejected, not cut."""
    from ftlab.audit import encode

    keep, encoded, rejected = [], [], []
    for r in rows:
        encs = [encode(tokenizer, msgs) for msgs in conversations(r)]
        longest = max(e.length for e in encs)
        if longest > max_length:
            rejected.append(
                Rejected(r.line, "too_long", f"{longest} tokens > max_length {max_length}", r.to_json(), r.source)
            )
            continue
        keep.append(r)
        encoded.append(encs[0])
    return keep, encoded, rejected


def check_rejected_share(name: str, accepted: int, rejected: list[Rejected], limit: float) -> float:
    """Fail when bad data (not the split or an opt-in filter) made up more than `limit` of a file."""
    rejected = [r for r in rejected if r.reason not in CHOSEN_REASONS]
    total = accepted + len(rejected)
    share = len(rejected) / total if total else 0.0
    if total == 0:
        raise DataError(f"{name}: no rows at all; check the file and data_path")
    if accepted == 0 or share > limit:
        raise DataError(
            f"{name}: {len(rejected)} of {total} rows rejected ({share:.1%} > max_rejected_share {limit:.1%}); "
            f"reasons: {reason_counts(rejected)}. Look at rejected.jsonl (line numbers and raw rows), fix the data "
            "or raise max_rejected_share if these rejections are expected."
        )
    return share


def perplexity_filter(rows: list[Row], nll: list[float], min_perplexity: float) -> tuple[list[Row], list[Rejected]]:
    import math

    keep, rejected = [], []
    for r, x in zip(rows, nll, strict=True):
        ppl = math.exp(x) if x == x else math.inf
        if ppl < min_perplexity:
            rejected.append(
                Rejected(r.line, "low_perplexity", f"perplexity {ppl:.2f} < {min_perplexity}", r.to_json(), r.source)
            )
        else:
            keep.append(r)
    return keep, rejected
