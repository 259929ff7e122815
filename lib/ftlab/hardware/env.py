"""The environment report of stage 00: can this machine train, and what will it train on?

Each check returns a `Check(name, status, detail, advice)` with status `pass`, `warn` or `fail`. A `fail`
means training cannot work here; the notebook raises on it so a batch run stops at stage 00.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ftlab.core.paths import outputs_dir, repo_root
from ftlab.hardware import devices, telemetry


@dataclass
class Check:
    name: str
    status: str  # pass | warn | fail
    detail: str
    advice: str = ""


def read_lock(path: Path | None = None) -> dict[str, str]:
    """`name==version` pins of requirements.lock, names normalized (PEP 503)."""
    path = path or repo_root() / "requirements.lock"
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, ver = line.split("==", 1)
            pins[normalize(name)] = ver.strip()
    return pins


def normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def project_env() -> tuple[bool, str]:
    """(is this the project's environment, which one it is): `.venv` at the repo root, or the conda env that
    environment.yml creates."""
    venv = (repo_root() / ".venv").resolve()
    if Path(sys.prefix).resolve() == venv:
        return True, f"project venv {venv}"
    conda = os.environ.get("CONDA_DEFAULT_ENV")
    yml = repo_root() / "environment.yml"
    name = (
        next((ln.split(":", 1)[1].strip() for ln in yml.read_text().splitlines() if ln.startswith("name:")), None)
        if yml.exists()
        else None
    )
    if conda and conda == name and Path(sys.prefix).resolve() == Path(os.environ.get("CONDA_PREFIX", "")).resolve():
        return True, f"project conda env {conda!r}"
    return False, "other venv" if sys.prefix != sys.base_prefix else "system Python"


def check_python() -> Check:
    ours, which = project_env()
    detail = f"Python {platform.python_version()} at {sys.executable} ({which})"
    ok = sys.version_info[:2] >= (3, 11)
    return Check(
        "python",
        "pass" if ok and ours else ("warn" if ok else "fail"),
        detail,
        ""
        if ours
        else "This is not the project's environment, so package versions may differ from "
        "requirements.lock: run `make setup` and pick the 'ftlab' kernel in JupyterLab "
        "(Kernel > Change Kernel).",
    )


def check_device(require_gpu: bool) -> Check:
    """The device training will really use, with CUDA_VISIBLE_DEVICES, driver, CUDA runtime and GPU telemetry."""
    d = devices.summary()
    cvd = d["cuda_visible_devices"]
    vis = f"CUDA_VISIBLE_DEVICES={cvd if cvd is not None else 'unset'}"
    nvml = telemetry.nvml_status()
    if d["type"] == "cuda":
        return Check(
            "training device",
            "pass",
            f"cuda:0 = {d['name']} ({d['count']} visible, {vis}); driver "
            f"{d['driver'] or 'unknown'}, CUDA runtime {d['cuda_runtime']}; "
            f"{nvml or 'GPU telemetry on (NVML)'}",
            ""
            if not nvml
            else "Install nvidia-ml-py (in requirements.lock) for temperature, power and throttle samples.",
        )
    gpu_hint = "" if cvd is None else f" ({vis}: an empty or wrong value hides the GPU)"
    # the 'gpu' check of check_torch fails when require_gpu is set; this line says what training will use instead
    return Check(
        "training device",
        "warn" if require_gpu else "pass",
        f"cpu ({d['name']}, {os.cpu_count()} cores){gpu_hint}; {nvml}",
    )


def check_ram(min_gb: float) -> Check:
    import psutil

    vm = psutil.virtual_memory()
    gb = vm.total / 2**30
    st = "pass" if gb >= min_gb else "warn"
    return Check(
        "ram",
        st,
        f"{gb:.1f} GiB total, {vm.available / 2**30:.1f} GiB available, {os.cpu_count()} CPUs",
        "" if st == "pass" else f"Less than {min_gb} GiB RAM: loading bigger models may swap or fail.",
    )


def check_disk(min_gb: float) -> Check:
    out = outputs_dir()
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free / 2**30
    st = "pass" if free >= min_gb else ("warn" if free >= min_gb / 4 else "fail")
    return Check(
        "disk",
        st,
        f"{free:.1f} GiB free at {out}",
        ""
        if st == "pass"
        else f"Free space below {min_gb} GiB: checkpoints and merged models need room; "
        "point FTLAB_OUTPUTS at a bigger disk or delete old runs in outputs/.",
    )


def check_torch(require_gpu: bool) -> list[Check]:
    import torch

    checks = [Check("torch", "pass", f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}")]
    if not torch.cuda.is_available():
        st = "fail" if require_gpu else "warn"
        checks.append(
            Check(
                "gpu",
                st,
                "no CUDA GPU visible; training will run on the CPU "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                "Fine for the embedded 135M model. For 7B+ models use a CUDA GPU; check `nvidia-smi` "
                "and that torch is a CUDA build (pip install torch==<lock version> on the GPU box).",
            )
        )
        return checks
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        bf16 = p.major >= 8
        checks.append(
            Check(
                f"gpu{i}",
                "pass" if bf16 else "warn",
                f"{p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}, bf16 {'yes' if bf16 else 'no'}",
                ""
                if bf16
                else "No bf16 on this GPU (V100-class): train with fp16 compute; the presets for 16 GB cards do.",
            )
        )
    return checks


def check_bnb_4bit() -> Check:
    """Quantize a real layer to NF4 with bitsandbytes, run forward and backward, check gradients arrive."""
    try:
        import bitsandbytes as bnb
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means 4-bit training cannot work
        return Check(
            "bitsandbytes 4-bit",
            "fail",
            f"bitsandbytes does not import: {e}",
            "Install the pinned bitsandbytes from requirements.lock.",
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    try:
        torch.manual_seed(0)
        dense = torch.nn.Linear(128, 64, bias=False)
        q = bnb.nn.Linear4bit(128, 64, bias=False, compute_dtype=dtype, quant_type="nf4", compress_statistics=True)
        q.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
        q = q.to(device)
        q.support_avx512bf16_for_cpu = False
        x = torch.randn(4, 128, device=device, dtype=dtype, requires_grad=True)
        y = q(x)
        y.float().pow(2).mean().backward()
        err = (y.float().cpu() - dense(x.detach().float().cpu())).abs().mean().item()
        scale = dense(x.detach().float().cpu()).abs().mean().item()
        ok = x.grad is not None and torch.isfinite(x.grad).all().item() and x.grad.abs().sum().item() > 0
        rel = err / max(scale, 1e-8)
    except Exception as e:  # noqa: BLE001
        return Check(
            "bitsandbytes 4-bit",
            "fail",
            f"4-bit forward/backward on {device} failed: {e!r}",
            "QLoRA cannot work here; use quantization='none' or fix the bitsandbytes install.",
        )
    st = "pass" if ok and rel < 0.2 else "fail"
    return Check(
        "bitsandbytes 4-bit",
        st,
        f"NF4 layer on {device}: forward rel. error {rel:.3f} vs fp32, gradients {'present' if ok else 'MISSING'} "
        f"(bitsandbytes {bnb.__version__})",
        "" if st == "pass" else "4-bit training would be wrong here.",
    )


def check_attention() -> Check:
    import torch

    kernels = ["sdpa (torch)"]
    if torch.cuda.is_available():
        b = torch.backends.cuda
        kernels += [
            n for n, on in (("flash", b.flash_sdp_enabled()), ("mem_efficient", b.mem_efficient_sdp_enabled())) if on
        ]
    for pkg in ("flash_attn", "liger_kernel", "kernels"):
        try:
            kernels.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    return Check("attention kernels", "pass", ", ".join(kernels))


def check_versions() -> Check:
    try:
        pins = read_lock()
    except FileNotFoundError:
        return Check("versions vs lock", "warn", "requirements.lock not found", "Run from a checkout of the project.")
    installed = {normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    missing = sorted(n for n in pins if n not in installed)
    differ = sorted(
        f"{n} {installed[n]} (lock {v})"
        for n, v in pins.items()
        if n in installed and installed[n].split("+")[0] != v.split("+")[0]
    )
    if not missing and not differ:
        return Check("versions vs lock", "pass", f"all {len(pins)} pinned packages match requirements.lock")
    parts = ([f"differ: {', '.join(differ)}"] if differ else []) + (
        [f"missing: {', '.join(missing)}"] if missing else []
    )
    return Check(
        "versions vs lock",
        "warn",
        "; ".join(parts),
        "Recreate the environment from the lock: rm -rf .venv && make setup.",
    )


def check_alloc_conf() -> Check:
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF", "")
    if "expandable_segments:True" in conf:
        return Check("allocator", "pass", f"PYTORCH_CUDA_ALLOC_CONF={conf}")
    return Check(
        "allocator",
        "warn" if devices.has_cuda() else "pass",
        f"PYTORCH_CUDA_ALLOC_CONF={conf or 'unset'}",
        "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before starting Jupyter: it cuts fragmentation "
        "and OOMs on varying sequence lengths (the training stages set it when they start the process).",
    )


def check_hub_offline() -> Check:
    off = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    on = [k for k, v in off.items() if v in ("1", "true", "True", "YES")]
    detail = ", ".join(f"{k}={v or 'unset'}" for k, v in off.items())
    return Check("hub offline", "pass", detail + (" (offline)" if on else " (a hub id would download when online)"))


def report(checks: list[Check]) -> dict[str, Any]:
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "warn", "fail")}
    return {"ok": counts["fail"] == 0, "counts": counts, "checks": [asdict(c) for c in checks]}


def table(checks: list[Check]) -> str:
    """A plain-text pass/warn/fail table (works the same in JupyterLab and in a papermill log)."""
    icon = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
    w = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{icon[c.status]}  {c.name:<{w}}  {c.detail}")
        if c.advice and c.status != "pass":
            lines.append(f"{'':6}{'':<{w}}  -> {c.advice}")
    return "\n".join(lines)
