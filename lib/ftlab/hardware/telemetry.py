"""What the hardware is doing and what a run costs: GPU samples through NVML (temperature, power against its limit,
SM clock, throttle reasons, utilisation) in a background thread, throttle warnings, free disk space where a run
writes, a wall-time forecast from measured throughput, and energy and cost.

On a machine without NVML (a CPU, or a GPU without the driver library) the sampler says so once and records
nothing; energy is then estimated from a stated device power.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

THROTTLE_TEMP_C = 85.0
# NVML clock-event reasons that mean the GPU is slowing itself down (not idle or app-requested clocks)
THROTTLE_BITS = {
    0x2: "power cap (software)",
    0x4: "hardware slowdown",
    0x8: "sync boost",
    0x20: "thermal (software)",
    0x40: "thermal (hardware)",
    0x80: "power brake (hardware)",
}


def nvml_status() -> str | None:
    """None when NVML can be read; otherwise one plain sentence why there is no GPU telemetry."""
    try:
        import pynvml
    except ImportError:
        return "GPU telemetry off: nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
    except Exception as e:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return f"GPU telemetry off: no NVIDIA driver library on this machine ({type(e).__name__})"
    return None if n else "GPU telemetry off: NVML sees no GPU"


def read_gpu(index: int = 0) -> dict[str, float]:
    import pynvml

    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    out = {
        "gpu_temp_c": float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
        "gpu_power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
        "gpu_power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
        "gpu_sm_clock_mhz": float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
        "gpu_util_pct": float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
    }
    try:
        out["gpu_throttle_reasons"] = float(pynvml.nvmlDeviceGetCurrentClocksEventReasons(h))
    except (AttributeError, pynvml.NVMLError):
        out["gpu_throttle_reasons"] = float(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h))
    return out


def _kinds(sample: dict[str, float]) -> tuple[str, ...]:
    hot = ("hot",) if sample.get("gpu_temp_c", 0) > THROTTLE_TEMP_C else ()
    return hot + tuple(name for bit, name in THROTTLE_BITS.items() if int(sample.get("gpu_throttle_reasons", 0)) & bit)


def throttle_warning(sample: dict[str, float]) -> str | None:
    """A warning with advice when a sample shows the GPU hot or slowing itself down; else None."""
    why = []
    if sample.get("gpu_temp_c", 0) > THROTTLE_TEMP_C:
        why.append(f"{sample['gpu_temp_c']:.0f} °C (above {THROTTLE_TEMP_C:.0f})")
    bits = int(sample.get("gpu_throttle_reasons", 0))
    why += [name for bit, name in THROTTLE_BITS.items() if bits & bit]
    if not why:
        return None
    return (
        f"GPU throttling: {', '.join(why)}; SM clock {sample.get('gpu_sm_clock_mhz', 0):.0f} MHz. Check the case "
        "airflow and fans, a power limit set below the card's default (nvidia-smi -q -d POWER), or lower the "
        "batch size; throttling makes every step slower."
    )


@dataclass
class Sampler:
    """Samples the GPU every `every_s` seconds in a daemon thread; `latest()` for the metrics line, `energy_wh()`."""

    every_s: float = 2.0
    index: int = 0
    samples: list[dict[str, float]] = field(default_factory=list)
    note: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.note = nvml_status()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: set[tuple[str, ...]] = set()

    def start(self) -> Sampler:
        if self.note is None and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ftlab-nvml", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.add({"t": time.time(), **read_gpu(self.index)})
            except Exception as e:  # noqa: BLE001 - a read can fail transiently; never break training for it
                self.note = f"GPU telemetry stopped: {type(e).__name__}: {e}"
                return
            self._stop.wait(self.every_s)

    def add(self, sample: dict[str, float]) -> None:
        """Record one sample (the thread does this; tests inject samples) and warn once per kind of throttling."""
        self.samples.append(sample)
        kinds = _kinds(sample)
        if kinds and kinds not in self._seen:
            self._seen.add(kinds)
            self.warnings.append(throttle_warning(sample) or "")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def latest(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.samples[-1].items() if k != "t"} if self.samples else {}

    def energy_wh(self) -> float:
        """Energy from the power samples (trapezoid rule over time), in watt-hours."""
        s = [x for x in self.samples if "gpu_power_w" in x]
        return sum((b["t"] - a["t"]) * (a["gpu_power_w"] + b["gpu_power_w"]) / 2 for a, b in zip(s, s[1:])) / 3600


def economics(
    energy_wh: float | None, seconds: float, device_power_w: float, price_per_kwh: float, price_per_gpu_hour: float
) -> dict[str, Any]:
    """Energy (measured, else `device_power_w` x time) and its cost; the cloud price of the same hours to compare."""
    measured = energy_wh is not None and energy_wh > 0
    wh = energy_wh if measured else device_power_w * seconds / 3600
    return {
        "energy_wh": round(wh, 3),
        "energy_source": "NVML power samples" if measured else f"estimate: {device_power_w:.0f} W x {seconds:.0f} s",
        "cost_energy": round(wh / 1000 * price_per_kwh, 4),
        "cost_cloud_equivalent": round(seconds / 3600 * price_per_gpu_hour, 4),
        "price_per_kwh": price_per_kwh,
        "price_per_gpu_hour": price_per_gpu_hour,
    }


# ---- disk ------------------------------------------------------------------------------------------------------


def largest(root: Path, n: int = 5) -> list[tuple[str, float]]:
    """The biggest immediate children of `root` (GiB), for a 'what fills the disk' hint."""
    sizes = []
    for p in Path(root).iterdir() if Path(root).is_dir() else []:
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        sizes.append((str(p), sum(f.stat().st_size for f in files) / 2**30))
    return sorted(sizes, key=lambda x: -x[1])[:n]


def checkpoint_bytes(trainable_params: int, optim: str, keep: int = 2) -> int:
    """Disk one run's checkpoints need: adapter (fp32) + optimizer state, times the checkpoints kept plus one being
    written, plus the final adapter."""
    opt = 2 if "8bit" in optim else 8  # two moments, 1 byte each (8-bit) or 4 bytes each
    one = trainable_params * (4 + opt) + 50 * 2**20  # + tokenizer, trainer state, RNG (about 50 MB with a big vocab)
    return one * (keep + 1) + trainable_params * 4


def disk_check(folder: Path, need_bytes: int, free_bytes: int | None = None) -> tuple[bool, str]:
    """(ok, message): is there room for `need_bytes` where `folder` lives? `free_bytes` overrides (for tests)."""
    folder = Path(folder)
    probe = next((p for p in [folder, *folder.parents] if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free if free_bytes is None else free_bytes
    if free >= need_bytes * 1.2:
        return True, f"disk: {free / 2**30:.1f} GiB free at {probe}, about {need_bytes / 2**30:.2f} GiB needed"
    hogs = ", ".join(f"{p} ({g:.1f} GiB)" for p, g in largest(probe.parent if probe.is_file() else probe))
    return False, (
        f"disk: only {free / 2**30:.2f} GiB free at {probe} but checkpoints need about "
        f"{need_bytes / 2**30:.2f} GiB (+20% margin). Largest here: {hogs or 'nothing large'}. Free space, "
        "lower save_total_limit/save_steps, or point FTLAB_OUTPUTS at a bigger disk."
    )


# ---- wall-time forecast ----------------------------------------------------------------------------------------


def forecast(seconds_per_step: float, steps: int, eval_runs: int = 0, seconds_per_eval: float = 0.0) -> dict[str, Any]:
    """The whole run's wall time from a measured step time, with advice when it is long."""
    total = seconds_per_step * steps + eval_runs * seconds_per_eval
    advice = ""
    if total > 4 * 3600:
        advice = (
            "that is many hours: try a smaller subset (max_rows), fewer epochs or max_steps, a lower lora_r, or "
            "a shorter max_length; check the GPU is really used (stage 00)"
        )
    return {
        "seconds_per_step": round(seconds_per_step, 3),
        "steps": steps,
        "forecast_s": round(total, 1),
        "forecast_h": round(total / 3600, 2),
        "advice": advice,
    }


def human(seconds: float) -> str:
    h, rest = divmod(int(seconds), 3600)
    return f"{h} h {rest // 60} min" if h else f"{rest // 60} min {rest % 60} s"


def interpreter() -> dict[str, Any]:
    """Which Python runs this, and whether it is the project's environment (.venv at the repo root)."""
    import sys

    from ftlab.core.paths import repo_root

    venv = (repo_root() / ".venv").resolve()
    return {
        "python": sys.executable,
        "prefix": sys.prefix,
        "project_env": Path(sys.prefix).resolve() == venv,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def compute_rows(run_name: str) -> list[dict[str, Any]]:
    """What each training stage of the run cost: wall time, energy (measured or estimated, and how) and money."""
    import json

    from ftlab.core import stages
    from ftlab.core.paths import stage_dir

    rows = []
    for st in dict.fromkeys(m.stage for m in stages.methods()):  # methods may share a stage
        p = stage_dir(run_name, st) / "summary.json"
        s = json.loads(p.read_text()) if p.exists() else {}
        if "economics" in s:
            e = s["economics"]
            rows.append(
                {
                    "stage": st,
                    "train_seconds": s.get("train_seconds"),
                    "energy_wh": e["energy_wh"],
                    "energy_source": e["energy_source"],
                    "cost_energy": e["cost_energy"],
                    "cost_cloud_equivalent": e["cost_cloud_equivalent"],
                    "price_per_kwh": e["price_per_kwh"],
                    "gpu_samples": s.get("telemetry", {}).get("samples", 0),
                    "throttle_warnings": len(s.get("telemetry", {}).get("warnings", [])),
                }
            )
    return rows
