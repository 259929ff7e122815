"""Reading the data files people bring (JSONL, JSON, CSV/TSV, Parquet, a `datasets` folder) into numbered records.

A line that cannot be read (bad UTF-8, bad JSON, nested too deeply, a number too large) becomes a `Rejected` with its
line number; only a file that cannot be read at all is a `DataError`. `ftlab.data.rows` normalizes the records.
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
    unit: str = "line"  # what `line` counts: "line" of a text file, or "record" of a JSON array, Parquet, dataset


# ---- reading files ----------------------------------------------------------------------------------------------


def read_records(path: str | Path) -> tuple[list[tuple[int, Any]], list[Rejected], str]:
    """Read a JSONL, JSON, CSV or Parquet file, or a `datasets` folder, into (number, record) pairs, the rows that
    could not be read, and what the numbers count: "line" (JSONL, CSV) or "record" (arrays, Parquet, folders)."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"data file {path} does not exist; expected a .jsonl, .json, .csv, .parquet file or a "
            "folder saved with datasets' save_to_disk. Check the data_path parameter."
        )
    if path.is_dir():
        return _read_datasets_folder(path), [], "record"
    suffixes = [x.lower() for x in path.suffixes[-2:]]
    gz = suffixes[-1:] == [".gz"]
    suffix = suffixes[0] if gz and len(suffixes) == 2 else path.suffix.lower()
    compressed = _is_gzip(path)
    if compressed != gz:
        raise DataError(
            f"{path} is gzip-compressed but not named .gz; rename it {path.name}.gz (then it loads as is)"
            if compressed
            else f"{path} is named .gz but is not gzip-compressed; drop the .gz from its name"
        )
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, _utf8(path, _bytes(path, gz)))
    if suffix == ".json":
        return (*_read_json(path, _utf8(path, _bytes(path, gz))), "record")
    if suffix in (".csv", ".tsv") and not gz:
        return (*_read_csv(path, "\t" if suffix == ".tsv" else ","), "line")
    if suffix in (".parquet", ".pq") and not gz:
        import pyarrow.parquet as pq

        return [(i + 1, r) for i, r in enumerate(pq.read_table(path).to_pylist())], [], "record"
    raise DataError(
        f"{path}: unsupported file type {''.join(suffixes)!r}; expected .jsonl, .json (each also as .gz), .csv, .tsv, "
        ".parquet or a datasets folder."
    )


GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: Path) -> bool:
    """The gzip magic number and a readable first block (random bytes that merely start like gzip are not)."""
    import gzip

    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            return False
    try:
        with gzip.open(path) as g:
            g.read(1)
    except (OSError, EOFError):
        return False
    return True


def _bytes(path: Path, gz: bool) -> bytes:
    if not gz:
        return path.read_bytes()
    import gzip

    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: the gzip stream is damaged ({e}); re-compress or re-download the file") from None


# byte-order marks of the encodings editors save text in besides UTF-8 (UTF-32 first: its LE mark starts like UTF-16's)
BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def _utf8(path: Path, raw: bytes) -> bytes:
    """The file's bytes as UTF-8: UTF-16/32 text (a byte-order mark, or ASCII with every other byte zero, as Windows
    tools save it) is converted with a note; anything else is left to the line-by-line UTF-8 check."""
    enc = next((e for bom, e in BOMS if raw.startswith(bom)), None)
    head = raw[:400]
    if enc is None and len(head) >= 4 and head.count(0) >= len(head) // 3:  # ASCII text stored in two bytes a char
        enc = "utf-16-le" if head[1::2].count(0) > head[0::2].count(0) else "utf-16-be"
    if enc is None:
        return raw
    try:  # a lone surrogate survives as bytes that are not UTF-8, so only its own line is rejected
        text = raw.decode(enc, "surrogatepass")
    except UnicodeDecodeError:
        return raw  # not that encoding after all: each line is checked as UTF-8 and rejected on its own
    head = text[:400]
    if sum(c < "\x80" for c in head) < len(head) / 2:  # JSON and CSV text is mostly ASCII; random bytes are not
        return raw
    print(f"note: {path.name} is {enc.upper()} text, not UTF-8: converted to UTF-8 to read it")
    return text.lstrip("\ufeff").encode("utf-8", "surrogatepass")


def encoding_hint(raw: bytes) -> str:
    """What bytes that are not UTF-8 most likely are (chardet's guess) and how to convert the file to UTF-8."""
    import chardet

    guess = chardet.detect(raw[:200_000])
    enc = guess.get("encoding") or ""
    if not enc or enc.lower() in ("ascii", "utf-8", "utf-8-sig"):
        return "re-save the file as UTF-8"
    lang = f" ({guess['language']})" if guess.get("language") else ""
    return (
        f"it looks like {enc}{lang} text, {guess['confidence']:.0%} sure: re-save it as UTF-8, e.g. "
        f"iconv -f {enc} -t UTF-8 IN > OUT"
    )


def _read_jsonl(path: Path, raw: bytes) -> tuple[list[tuple[int, Any]], list[Rejected], str]:
    records, rejected, hint = [], [], ""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark is harmless; drop it
    if raw.lstrip()[:1] == b"[":  # a JSON array saved as .jsonl: read it as one, numbered by record
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            doc = None  # not one array after all: read line by line, bad lines rejected one by one
        if isinstance(doc, list) and doc and all(isinstance(r, dict) for r in doc):  # records, not one bad row
            print(f"note: {path.name} holds one JSON array, not a record per line: read as {len(doc)} records")
            return [(i + 1, r) for i, r in enumerate(doc)], [], "record"
    for n, line in enumerate(raw.split(b"\n"), 1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue  # blank lines are not rows
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            hint = hint or encoding_hint(line)  # one guess per file: its lines share an encoding
            why = f"byte {e.start}: {e.reason}; {hint}"
            rejected.append(Rejected(n, "invalid_utf8", why, line.decode("utf-8", "replace")))
            continue
        try:
            records.append((n, json.loads(text)))
        except json.JSONDecodeError as e:
            rejected.append(Rejected(n, "invalid_json", f"{e.msg} at column {e.colno}", text))
        except RecursionError:
            rejected.append(Rejected(n, "too_deep", "nested deeper than Python's JSON reader goes", text[:2000]))
        except ValueError as e:  # e.g. an integer of more digits than Python converts
            rejected.append(Rejected(n, "invalid_json", str(e), text[:2000]))
    return records, rejected, "line"


def _read_json(path: Path, raw: bytes) -> tuple[list[tuple[int, Any]], list[Rejected]]:
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except RecursionError:
        raise DataError(
            f"{path}: a record is nested too deeply to read; a .json file is read whole, so save one record per "
            "line as .jsonl, which rejects such a record with its line number and keeps the others."
        ) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(
            f"{path}: not valid UTF-8 JSON ({e}); expected a list of records"
            + (f"; {encoding_hint(raw)}" if isinstance(e, UnicodeDecodeError) else "")
            + ". For one record per line use .jsonl, which reports bad lines one by one."
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
    raw = _utf8(path, path.read_bytes())
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: invalid UTF-8 at line {line} (byte {e.start}); {encoding_hint(raw)}.") from None
    header = text.split("\n", 1)[0]
    if delimiter not in header:  # a semicolon-separated "CSV" (as spreadsheets save it in many locales)
        found = next((d for d in (";", "\t", "|", ",") if d in header), None)
        if found:
            print(
                f"note: {path.name}'s header has no {delimiter!r} but has {found!r}: read with {found!r} as delimiter"
            )
            delimiter = found
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    records, rejected = [], []
    n_header = len(reader.fieldnames or ())  # reads line 1, the header
    start = 2
    for rec in reader:
        spare, missing = rec.get(None), [k for k, v in rec.items() if k is not None and v is None]
        if spare or missing:  # csv fills a short row with None and keeps a long row's spare cells under None
            cells = n_header + len(spare or ()) - len(missing)
            why = (
                "a comma (or quote) inside a field that is not quoted splits it; quote fields that contain the "
                f"delimiter {delimiter!r}"
                if spare
                else f"missing cells for {missing}"
            )
            raw = {k: v for k, v in rec.items() if k is not None and v is not None} | ({"": spare} if spare else {})
            detail = f"{cells} cell{'' if cells == 1 else 's'} where the header has {n_header}: {why}"
            rejected.append(Rejected(start, "csv_cell_count", detail, raw))
        else:
            records.append((start, dict(rec)))
        start = reader.line_num + 1
    return records, rejected


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
