"""Where things live: the repo root, run and stage folders, the model cache; atomic writes.

Every path the notebooks use is derived here from a run name and a stage name, never typed twice.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ftlab.core import stages

RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def repo_root() -> Path:
    """The project root: $FTLAB_ROOT, else the folder above lib/ that holds pyproject.toml."""
    if os.environ.get("FTLAB_ROOT"):
        return Path(os.environ["FTLAB_ROOT"]).resolve()
    return Path(__file__).resolve().parents[3]


def outputs_dir() -> Path:
    """Root of all run folders: $FTLAB_OUTPUTS, else <repo>/outputs."""
    return Path(os.environ.get("FTLAB_OUTPUTS") or repo_root() / "outputs").resolve()


def cache_dir() -> Path:
    """Model cache (converted embedded model, tiny test model): $FTLAB_CACHE, else <repo>/.cache/ftlab."""
    return Path(os.environ.get("FTLAB_CACHE") or repo_root() / ".cache" / "ftlab").resolve()


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def check_run_name(run_name: str) -> str:
    """A run name is one folder name: letters, digits, '_', '.', '-'; no separators, no '..'."""
    if not isinstance(run_name, str) or not RUN_NAME_RE.match(run_name) or ".." in run_name:
        raise ValueError(
            f"run_name must be 1-64 characters of letters, digits, '_', '.', '-' starting with a letter or digit "
            f"(it becomes the folder outputs/<run_name>); got {run_name!r}. Pick a name like 'lab1-alice'."
        )
    return run_name


def check_stage(stage: str) -> str:
    return stages.stage(stage).name


def run_dir(run_name: str) -> Path:
    path = outputs_dir() / check_run_name(run_name)
    # belt and braces: whatever the name, the folder stays inside outputs/
    if outputs_dir() not in path.resolve().parents:
        raise ValueError(f"run folder {path} would fall outside {outputs_dir()}")
    return path


def stage_dir(run_name: str, stage: str) -> Path:
    return run_dir(run_name) / check_stage(stage)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def folder_mb(p: Path) -> float:
    """Size of a file or of every file under a folder, in MiB."""
    p = Path(p)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 1)


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
