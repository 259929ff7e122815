"""What `ftlab run` shows while a stage runs, and the table at the end.

While a notebook executes, one status line: the stage, the cell it is in, and for a training stage the latest line of
its `metrics.jsonl` (step / total, loss, tokens/s, ETA). On a terminal the line is rewritten in place; elsewhere (CI
logs, a file) each change is printed as its own line, at most one per `every_s` seconds for training records.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftlab.core.stages import dig


def cell_label(source: str, width: int = 60) -> str:
    """A cell in a few words: its first comment, else its first line of code."""
    lines = [x.strip() for x in source.splitlines() if x.strip()]
    if not lines:
        return "(empty cell)"
    comment = next((x.lstrip("# ") for x in lines if x.startswith("#")), None)
    text = comment or lines[0]
    return text if len(text) <= width else text[: width - 3] + "..."


def last_record(path: Path, since: float = 0.0) -> dict[str, Any] | None:
    """The newest complete training record of a metrics.jsonl written at or after `since` (a half-written last line
    is skipped; so are the records of an earlier run of the stage)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "loss" in rec:
            return rec if rec.get("time", since) >= since else None
    return None


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def training_text(rec: dict[str, Any]) -> str:
    """`step 40/120 · loss 1.234 · 2,345 tok/s · ETA 3m20s` from one metrics.jsonl record."""
    total = rec.get("max_steps")
    parts = [f"step {rec['step']}/{total}" if total else f"step {rec['step']}", f"loss {rec['loss']:.4g}"]
    if rec.get("tokens_per_s"):
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
    if rec.get("eta_s") is not None:
        parts.append(f"ETA {_duration(rec['eta_s'])}")
    if rec.get("vram_peak_gib") is not None:
        parts.append(f"GPU peak {rec['vram_peak_gib']:.1f} GiB")
    return " · ".join(parts)


class Progress:
    """The live line of one stage. `cell` is called by the executing engine as each code cell starts; `poll` (every
    `interval_s` on the thread `running` starts) reads the stage's metrics.jsonl.

    Off a terminal, a cell is printed only once it has run for `slow_s` (quick cells make no noise) and training
    records at most one per `every_s`."""

    def __init__(
        self,
        tag: str,
        stage_dir: Path,
        out: Callable[[str], None] = print,
        tty: bool | None = None,
        every_s: float = 10.0,
        slow_s: float = 5.0,
    ):
        self.tag, self.metrics = tag, Path(stage_dir) / "metrics.jsonl"
        self.out, self.every_s, self.slow_s = out, every_s, slow_s
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.t0 = self._cell_t = time.time()
        self.where = self.training = ""
        self._shown_where, self._step, self._printed_at = "", None, 0.0
        self._stop = threading.Event()

    def cell(self, index: int, total: int, source: str) -> None:
        self.where, self._cell_t, self.training = f"cell {index}/{total}: {cell_label(source)}", time.time(), ""
        if self.tty:
            self._emit()

    def poll(self) -> None:
        now = time.time()
        rec = last_record(self.metrics, self.t0)
        if rec is not None and rec.get("step") != self._step:
            self._step, self.training = rec.get("step"), training_text(rec)
            if self.tty or now - self._printed_at >= self.every_s:
                self._emit()
        elif self.tty or (self.where != self._shown_where and now - self._cell_t >= self.slow_s):
            self._emit()

    def line(self) -> str:
        return f"{self.tag} {_duration(time.time() - self.t0)} · {self.training or self.where or 'starting the kernel'}"

    def _emit(self) -> None:
        text = self.line()
        if self.tty:
            sys.stdout.write("\r\033[K" + text[:160])
            sys.stdout.flush()
            return
        self._shown_where, self._printed_at = self.where, time.time()
        self.out(text)

    def end(self) -> None:
        self._stop.set()
        if self.tty:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()

    def running(self, interval_s: float = 2.0) -> Progress:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.poll()

        threading.Thread(target=loop, daemon=True).start()
        return self


ENGINE = "ftlab"


def engine() -> str:
    """Register (once) a papermill engine that calls `on_cell(index, total, source)` as each code cell starts (the
    kwarg travels through `papermill.execute_notebook`); returns the engine's name."""
    from papermill.engines import NBClientEngine, papermill_engines

    class Watched(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, on_cell=None, **kwargs):
            if on_cell is not None:
                code = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
                start = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    if cell.cell_type == "code" and cell_index in code:
                        on_cell(code.index(cell_index) + 1, len(code), cell.source)
                    return start(cell, cell_index, **kw)

                nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    if ENGINE not in papermill_engines._engines:
        papermill_engines.register(ENGINE, Watched)
    return ENGINE


# ---- the table at the end of a run ----------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, dict):  # {"base": 2.31, "sft": 1.72}: base 2.31 / sft 1.72
        return " / ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def stage_table(run: Path, stages: list[tuple[str, tuple[str, ...]]]) -> str:
    """Markdown table: each stage's time, peak host RAM, peak GPU memory and its key figures from summary.json."""
    rows = ["| stage | time | peak RAM GiB | peak GPU GiB (alloc/reserved) | key figures |", "|---|---|---|---|---|"]
    for name, keys in stages:
        p = Path(run) / name / "summary.json"
        if not p.exists():
            rows.append(f"| {name} | not run | | | |")
            continue
        s = json.loads(p.read_text(encoding="utf-8"))
        peak = s.get("peak", {})
        gpu = (
            f"{peak['gpu_allocated_gib']:.1f} / {peak['gpu_reserved_gib']:.1f}" if "gpu_allocated_gib" in peak else "-"
        )
        keyed = ", ".join(f"{k} {_fmt(dig(s, k))}" for k in keys if dig(s, k) is not None)
        rows.append(f"| {name} | {_duration(s.get('seconds', 0))} | {peak.get('ram_gib', '-')} | {gpu} | {keyed} |")
    return "\n".join(rows)
