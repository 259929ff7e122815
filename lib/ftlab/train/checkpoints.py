"""Checkpoints that are only resumed once complete, a guard against resuming another run's checkpoints, the resume
point, and the metrics file cut back to it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ftlab.hardware import devices

CHECKPOINT_DONE = "CHECKPOINT_COMPLETE"


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint-N that was completely written; half-written ones are moved aside, never resumed."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    best = None
    for d in sorted(
        folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1
    ):
        if (d / CHECKPOINT_DONE).exists():
            best = d
        elif devices.is_main_process():  # several processes: the main one moves it, the others just skip it
            aside = folder / f"incomplete-{d.name}-{int(time.time())}"
            d.rename(aside)
            print(f"checkpoint {d.name} was not completely written (interrupted save): moved to {aside.name}")
    return str(best) if best else None


def guard_stale_checkpoints(folder: Path, params: dict[str, Any]) -> None:
    """Checkpoints of a run with different parameters must not be resumed: move them aside."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "params.json"
    if devices.is_main_process():
        if marker.exists() and json.loads(marker.read_text()) != params:
            aside = folder.with_name(f"{folder.name}-stale-{int(time.time())}")
            folder.rename(aside)
            print(f"parameters changed since the checkpoints were written: old checkpoints moved to {aside.name}")
            folder.mkdir(parents=True)
        marker.write_text(json.dumps(params, indent=1, sort_keys=True))
    devices.wait_for_everyone()


def resume_step(resume: str | None) -> int | None:
    return int(resume.rsplit("-", 1)[1]) if resume else None


def truncate_metrics(path: Path, step: int | None) -> None:
    """On resume keep only the records up to the checkpoint's step; on a fresh start remove the old file."""
    path = Path(path)
    if not devices.is_main_process():
        return
    if step is None:
        path.unlink(missing_ok=True)
        return
    keep = [r for r in _read(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
