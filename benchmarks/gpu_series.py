"""The whole series at the size users train: a Llama-3.1-8B-shaped checkpoint (its real dimensions and 128,256-token
vocabulary, random weights, the bundled SmolLM2 tokenizer for the data) through `python -m ftlab run` on one GPU.

Random weights make every quality number meaningless (answers never stop, losses start near ln(vocab)); the time,
memory, disk and plumbing are real. Run on the GPU machine (see benchmarks/README or the result's "command"):

    python3 benchmarks/gpu_series.py build /tmp/llama8b --tokenizer .gputok
    FTLAB_OUTPUTS=/tmp/out python3 -m ftlab run -f params/gpu-24gb-8b.yaml -p base_model /tmp/llama8b ...
    FTLAB_OUTPUTS=/tmp/out python3 benchmarks/gpu_series.py report llama8b-24gb result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

VOCAB = 128_256  # Llama-3's real vocabulary: the embedding and lm_head rows users train with


def build(folder: Path, tokenizer_dir: Path) -> dict:
    """The Llama-3.1-8B shape of the memory benchmark (sft_memory.SHAPES), random bf16 weights, Llama-3's vocabulary,
    the bundled tokenizer; once (a folder that holds a config.json is kept)."""
    import time

    from sft_memory import build as build_shape
    from transformers import AutoTokenizer

    if (folder / "config.json").exists():
        return {"built": False, "folder": str(folder)}
    t = time.time()
    build_shape("llama-8b-shape", folder, AutoTokenizer.from_pretrained(str(tokenizer_dir)), VOCAB)
    return {"built": True, "folder": str(folder), "seconds": round(time.time() - t, 1)}


def _du(path: Path) -> float:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()
    return round(int(out[0]) / 2**30, 2) if out else 0.0


def report(run: str, out: Path, note: str) -> dict:
    from ftlab.core import stages
    from ftlab.core.paths import run_dir

    folder = run_dir(run)
    res: dict = {
        "what": "python -m ftlab run 00 -> 06 on a Llama-3.1-8B-shaped checkpoint (random weights, vocab 128,256)",
        "note": note,
        "quality_numbers": "meaningless: random weights; time, memory, disk and plumbing are real",
        "host": platform.node(),
        "stages": {},
    }
    try:
        import torch

        res["gpu"] = torch.cuda.get_device_name(0)
        res["torch"] = torch.__version__
    except Exception:  # noqa: BLE001 - the report is still written without the device line
        pass
    for name in stages.stage_names():
        p = folder / name / "summary.json"
        if not p.exists():
            continue
        s = json.loads(p.read_text())
        key = {k: stages.dig(s, k) for k in stages.stage(name).key}
        res["stages"][name] = {"seconds": s.get("seconds"), "peak": s.get("peak"), "disk_gib": _du(folder / name)}
        res["stages"][name]["key"] = key
        for extra in ("train_peak_gib", "memory", "tokens_per_s", "times_s", "sizes_mb", "generation"):
            if extra in s:
                res["stages"][name][extra] = s[extra]
    out.write_text(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("folder", type=Path)
    b.add_argument("--tokenizer", type=Path, required=True)
    r = sub.add_parser("report")
    r.add_argument("run")
    r.add_argument("out", type=Path)
    r.add_argument("--note", default="")
    a = ap.parse_args()
    if a.cmd == "build":
        print(json.dumps(build(a.folder, a.tokenizer)))
    else:
        print(json.dumps(report(a.run, a.out, a.note), indent=1)[:4000])
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
