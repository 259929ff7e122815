"""Reading the data files people bring (JSONL, JSON, CSV/TSV, Parquet, a `datasets` folder) into numbered records.

A line that cannot be read (bad UTF-8, bad JSON, nested too deeply, a number too large) becomes a `Rejected` with its
line number; only a file that cannot be read at all is a `DataError`. `ftlab.data` normalizes the records.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """The input as a whole cannot be used (missing file, unreadable format, too many rejected rows)."""


@dataclass
class Rejected:
    line: int  # 1-based line (JSONL, CSV) or row/record number (JSON, Parquet, datasets folder)
    reason: str
    detail: str
    raw: Any
    source: str = ""


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
        except RecursionError:
            rejected.append(Rejected(n, "too_deep", "nested deeper than Python's JSON reader goes", text[:2000]))
        except ValueError as e:  # e.g. an integer of more digits than Python converts
            rejected.append(Rejected(n, "invalid_json", str(e), text[:2000]))
    return records, rejected


def _read_json(path: Path) -> tuple[list[tuple[int, Any]], list[Rejected]]:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except RecursionError:
        raise DataError(
            f"{path}: a record is nested too deeply to read; a .json file is read whole, so save one record per "
            "line as .jsonl, which rejects such a record with its line number and keeps the others."
        ) from None
    except (UnicodeDecodeError, ValueError) as e:
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
