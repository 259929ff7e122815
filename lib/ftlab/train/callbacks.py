"""Trainer callbacks: live metrics and guards (NaN/inf stop, loss spikes, exploding gradients), checkpoint
completion marks, the disk watch; and callbacks added by experiments or tests (`add_callback`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ftlab.core import stages
from ftlab.train.checkpoints import CHECKPOINT_DONE

_EXTRA: list[Callable[[], TrainerCallback]] = []


def add_callback(factory: Callable[[], TrainerCallback]) -> None:
    """Every trainer `ftlab.train.fit.attach` equips from now on also gets `factory()`, after the live metrics and
    before the checkpoint marks (so its on_save runs first). For experiments and for tests' fault injection."""
    _EXTRA.append(factory)


def extra_callbacks() -> list[TrainerCallback]:
    return [f() for f in _EXTRA]


class CheckpointComplete(TrainerCallback):
    """Mark a checkpoint complete once the Trainer has written all of it (model, optimizer, RNG, state)."""

    def on_save(self, args, state, control, **kw):
        d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if d.is_dir() and getattr(state, "is_world_process_zero", True):
            (d / CHECKPOINT_DONE).write_text(str(state.global_step))


def memory_now() -> dict[str, float]:
    import psutil
    import torch

    out = {"ram_rss_gib": round(psutil.Process().memory_info().rss / 2**30, 3)}
    if torch.cuda.is_available():
        out["vram_alloc_gib"] = round(torch.cuda.memory_allocated() / 2**30, 3)
        out["vram_reserved_gib"] = round(torch.cuda.memory_reserved() / 2**30, 3)
        out["vram_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


class LiveMetrics(TrainerCallback):
    """Every log: one line in metrics.jsonl (loss, eval loss, grad norm, lr, tokens/s, memory, ETA) and guards."""

    def __init__(
        self, path: Path, on_record: Callable[[dict[str, Any]], None] | None = None, log: Callable[[str], None] = print
    ):
        self.path, self.on_record, self.log = Path(path), on_record, log
        self.losses: list[float] = []
        self.grads: list[float] = []
        self.warnings: list[str] = []
        self.stopped_reason: str | None = None
        self.sampler: Any = None  # a telemetry.Sampler: its latest GPU sample joins every record
        self.train_peak: dict[str, float] = {}  # CUDA peak of the training loop alone (train_watched fills it)
        self._t = self._tok = None
        self._t0, self._step0 = time.time(), 0

    def on_train_begin(self, args, state, control, **kw):
        self._t, self._tok, self._t0, self._step0 = (
            time.time(),
            state.num_input_tokens_seen,
            time.time(),
            state.global_step,
        )

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.log(f"WARNING: {msg}")

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        now = time.time()
        rec: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "time": round(now, 2)}
        if state.max_steps:
            rec["max_steps"] = state.max_steps
        for k in stages.log_keys():  # the shared keys and every registered method's own (DPO's rewards, ...)
            if k in logs:
                rec[k] = float(logs[k])
        seen = state.num_input_tokens_seen
        if "loss" in rec and self._t is not None and now > self._t:
            rec["tokens_per_s"] = round((seen - self._tok) / (now - self._t), 1)
            self._t, self._tok = now, seen
        done = state.global_step - self._step0
        if done > 0 and state.max_steps:
            rec["eta_s"] = round((now - self._t0) / done * (state.max_steps - state.global_step), 1)
        rec["tokens_seen"] = seen
        rec.update(memory_now())
        if self.sampler is not None:
            rec.update(self.sampler.latest())
            for w in self.sampler.warnings:
                if w not in self.warnings:
                    self._warn(w)
        self._guards(rec, control)  # every process: they all see the same gathered loss and stop together
        if not getattr(
            state, "is_world_process_zero", True
        ):  # several processes train: the main one writes and shows the records
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.on_record:
            self.on_record(rec)

    def _guards(self, rec: dict[str, Any], control: Any) -> None:
        loss = rec.get("loss", rec.get("eval_loss"))
        if loss is not None and not math.isfinite(loss):
            self.stopped_reason = (
                f"loss became {loss} at step {rec['step']}: training stopped. Usual causes: learning "
                "rate too high, fp16 overflow (use bf16 or a lower LR), bad rows (rerun stage 01)."
            )
            control.should_training_stop = True
            return
        if "loss" in rec:
            if len(self.losses) >= 5 and rec["loss"] > 2.0 * statistics.median(self.losses[-20:]):
                self._warn(
                    f"loss spike at step {rec['step']}: {rec['loss']:.3f} vs median {statistics.median(self.losses[-20:]):.3f}; "
                    "if it repeats lower the learning rate (or try nf4 -> none quantization to rule it out)"
                )
            self.losses.append(rec["loss"])
        g = rec.get("grad_norm")
        if g is not None:
            if not math.isfinite(g) or (len(self.grads) >= 5 and g > 10 * statistics.median(self.grads[-20:])):
                self._warn(f"grad norm {g:.3g} at step {rec['step']} is far above its median: lower the learning rate")
            self.grads.append(g if math.isfinite(g) else 0.0)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    p = Path(path)
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


class DiskWatch(TrainerCallback):
    """After each checkpoint: warn (with the largest consumers) when the disk will not hold the next one."""

    def __init__(self, live: LiveMetrics, need_bytes: int):
        self.live, self.need = live, need_bytes

    def on_save(self, args, state, control, **kw):
        from ftlab.hardware.telemetry import disk_check

        ok, msg = disk_check(Path(args.output_dir), self.need)
        if not ok and msg not in self.live.warnings:
            self.live._warn(msg)


def quiet(trainer: Any) -> Any:
    """Drop the Trainer's own dict printing: LiveMetrics already prints one readable line per log."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def count_pair_tokens(trainer: Any) -> Any:
    """The Trainer counts tokens from a batch's `input_ids`; ORPO's batches hold `chosen_*` and `rejected_*`
    sequences (each with its prompt) instead, which it would count as 0 tokens (and 0 tokens/s): count their
    attention masks there. Other batches are counted by the Trainer itself."""
    track = getattr(trainer, "_track_num_input_tokens", None)
    if track is None:
        return trainer

    def counted(inputs: Any) -> None:
        keys = ("chosen_attention_mask", "rejected_attention_mask")
        if isinstance(inputs, dict) and "input_ids" not in inputs and all(k in inputs for k in keys):
            trainer.state.num_input_tokens_seen += sum(int(inputs[k].sum()) for k in keys)
        else:
            track(inputs)

    trainer._track_num_input_tokens = counted
    return trainer
