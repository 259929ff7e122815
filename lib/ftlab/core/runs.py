"""Runs and stages: the resolve call every notebook makes, the run manifest, stage completion.

`resolve_stage(<stage>, globals())` validates the notebook's parameters (including any that papermill
injected, known or not, found in the namespace itself), creates `outputs/<run_name>/02_train_sft/` and records the parameters in
`outputs/<run_name>/manifest.json`. `Stage.finish(summary)` writes `summary.json` and marks the stage complete.
"""

from __future__ import annotations

import ast
import functools
import getpass
import hashlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from ftlab.core import params as P
from ftlab.core import process, stages
from ftlab.core.paths import atomic_write_json, notebooks_dir, read_json, repo_root, run_dir, stage_dir

KEY_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "evaluate",
    "papermill",
    "llama_cpp_python",
    "ftlab",
)
# the names IPython puts in a notebook's namespace besides its underscore names
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_commit() -> dict[str, Any]:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_root(),
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return {"commit": sha or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_path(run_name: str) -> Path:
    return run_dir(run_name) / "manifest.json"


def load_manifest(run_name: str) -> dict[str, Any]:
    path = manifest_path(run_name)
    if path.exists():
        return read_json(path)
    return {"run_name": run_name, "created": now(), "stages": {}}


def save_manifest(run_name: str, manifest: dict[str, Any]) -> None:
    if not process.is_main_process():  # under `accelerate launch` only the main process writes the run's files
        return
    manifest["updated"] = now()
    atomic_write_json(manifest_path(run_name), manifest)


@dataclass
class Stage:
    """One stage of one run: where it writes, what it was given."""

    run_name: str
    name: str
    params: dict[str, Any]
    started: float

    @functools.cached_property
    def method(self) -> stages.Method:
        """The training method this stage trains (`method` in its params where several share it), resolved once;
        `ftlab.train.methods.module(stage)` is its checked module."""
        return stages.method_of_stage(self.name, self.params)

    @property
    def dir(self) -> Path:
        return stage_dir(self.run_name, self.name)

    @property
    def run_dir(self) -> Path:
        return run_dir(self.run_name)

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def of(self, stage: str) -> Path:
        """The folder of another stage of this run (whether or not it has run)."""
        return stage_dir(self.run_name, stage)

    def write_json(self, name: str, obj: Any) -> Path:
        """Write a JSON file into this stage's folder atomically (the main process's job when several train)."""
        return atomic_write_json(self.path(name), obj) if process.is_main_process() else self.path(name)

    def input(self, stage: str, *parts: str) -> Path:
        """A file of an earlier stage of this run; a clear error when that stage has not produced it."""
        p = stage_dir(self.run_name, stage).joinpath(*parts)
        if not p.exists():
            raise FileNotFoundError(
                f"{self.name} needs {p}, which stage {stage} writes; it is missing. "
                f"Run notebooks/{stage}.ipynb with run_name={self.run_name!r} first "
                f"(or: python -m ftlab run --from {stage[:2]} --to {self.name[:2]} -p run_name {self.run_name})."
            )
        return p

    def record_inputs(self, paths: dict[str, Path]) -> dict[str, str]:
        hashes = {k: file_sha256(Path(v)) for k, v in paths.items()}
        m = load_manifest(self.run_name)
        m["stages"].setdefault(self.name, {})["inputs"] = hashes
        save_manifest(self.run_name, m)
        return hashes

    def previous(self) -> dict[str, Any] | None:
        """The summary of an earlier complete run of this stage with the same params, else None."""
        entry = load_manifest(self.run_name)["stages"].get(self.name, {})
        summary = self.path("summary.json")
        if entry.get("status") == "complete" and entry.get("params") == self.params and summary.exists():
            return read_json(summary)
        return None

    def finish(self, summary: dict[str, Any]) -> Path:
        summary = {
            "stage": self.name,
            "run_name": self.run_name,
            "seconds": round(time.time() - self.started, 2),
            **summary,
            "peak": peak_memory(),
        }
        out = self.write_json("summary.json", summary)
        m = load_manifest(self.run_name)
        entry = m["stages"].setdefault(self.name, {})
        entry.update(status="complete", finished=now(), seconds=summary["seconds"])
        if "config" in summary:  # a training stage: the trainer config that trained, edits in the notebook included
            entry["trained_with"] = summary["config"]
        save_manifest(self.run_name, m)
        return out


def peak_memory() -> dict[str, float]:
    """This process's peak host RAM and, where it used CUDA, the CUDA caching allocator's peaks (reset by a stage that
    measures a part of its work alone, e.g. the training loop in 02: then the peak since that reset)."""
    import resource

    out = {"ram_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}  # Linux: KiB
    torch = sys.modules.get("torch")  # never imported just to say it was not used
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        allocated, reserved = process.gpu_peaks()
        out["gpu_allocated_gib"] = round(allocated / 2**30, 2)
        out["gpu_reserved_gib"] = round(reserved / 2**30, 2)
    return out


_PLAIN = (str, int, float, bool, type(None))


def _plain(v: Any) -> bool:
    return isinstance(v, _PLAIN) or (isinstance(v, (list, tuple)) and all(isinstance(x, _PLAIN) for x in v))


@functools.cache
def _notebook_names(stage: str) -> frozenset[str]:
    """Every name the stage's own notebook code assigns, imports or defines (its variables are not parameters)."""
    path = notebooks_dir() / f"{stage}.ipynb"
    if not path.exists():
        return frozenset()
    names: set[str] = set()
    for src, tags in P.code_cells(path):
        if "parameters" in tags:
            continue
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(names)


def unknown_names(stage: str, ns: dict[str, Any], spec: dict[str, P.Param]) -> list[str]:
    """Names in the notebook's namespace that look like parameters but are not in the spec: plain values (str, int,
    float, bool, None, a list of those) that neither the spec nor the notebook's own cells define. That is a typo in
    the parameters cell, or a name papermill (or `-p`) injected; papermill itself only warns about those."""
    own = _notebook_names(stage)
    return sorted(
        k
        for k, v in ns.items()
        if not k.startswith("_") and k not in spec and k not in own and k not in _IPYTHON_NAMES and _plain(v)
    )


def resolve_stage(stage: str, ns: dict[str, Any]) -> Stage:
    """Validate this notebook's parameters from its namespace, create the stage folder, record the params."""
    spec = P.SPECS.get(stage)
    if spec is None:
        raise P.ParamError(f"no parameter spec for stage {stage!r}; known: {sorted(P.SPECS)}")
    values = {k: ns[k] for k in spec if k in ns}
    params = P.validate(stage, values, unknown=unknown_names(stage, ns, spec))
    st = Stage(params["run_name"], stage, params, time.time())
    st.run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(st.run_dir, 0o700)  # runs hold private data and models trained on it: readable by their owner only
    st.dir.mkdir(exist_ok=True)
    m = load_manifest(st.run_name)
    code = git_commit()
    m.setdefault("git", code)  # the commit the run was created at; each stage records the one it ran at
    m["versions"] = package_versions()
    m["python"] = sys.version.split()[0]
    m["host"] = {"platform": platform.platform(), "user": getpass.getuser()}
    m["device"] = process.summary()
    prev = m["stages"].get(stage, {})
    same = prev.get("params") == params and prev.get("status") == "complete"
    m["stages"][stage] = {
        **(prev if same else {}),
        "params": params,
        "started": now(),
        "git": code,
        "status": prev.get("status") if same else "running",
    }
    save_manifest(st.run_name, m)
    return st
