"""Stage 02 on a CPU with glibc's default allocator settings against the two the Makefile sets for CPU runs
(MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=64 GiB: freed memory stays in the process instead of going back to the
OS and being faulted in again at the next step). Same run, same rows, same steps, one after the other in fresh
`ftlab run` processes; each arm is run `--repeats` times, alternating.

    FTLAB_OUTPUTS=/tmp/mallocbench .venv/bin/python benchmarks/cpu_malloc.py \
        --out benchmarks/results/cpu_malloc.json [--steps 20] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def ftlab(*args: str, env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "ftlab", "run", *args, "-f", "params/default.yaml", "-p", "run_name", "mallocbench"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    out_root = Path(os.environ.get("FTLAB_OUTPUTS", ROOT / "outputs"))
    base = {k: v for k, v in os.environ.items() if k not in TUNED} | {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    ftlab("--from", "00", "--to", "01", env=base)
    stage = out_root / "mallocbench" / "02_train_sft"
    results: dict[str, list[dict]] = {"glibc_default": [], "keep_freed_memory": []}
    for _ in range(a.repeats):
        for arm, env in (("glibc_default", base), ("keep_freed_memory", base | TUNED)):
            shutil.rmtree(stage, ignore_errors=True)
            t = time.time()
            ftlab("02", "-p", "max_steps", str(a.steps), "-p", "eval_steps", "0", "-p", "save_steps", "1000", env=env)
            s = json.loads((stage / "summary.json").read_text())
            results[arm].append(
                {"stage_s": round(time.time() - t, 1), "train_s": s["train_seconds"], "tokens": s["train_tokens"]}
            )
            print(arm, results[arm][-1], flush=True)
    best = {arm: min(r["train_s"] for r in rs) for arm, rs in results.items()}
    doc = {
        "what": "stage 02 of params/default.yaml on the embedded model, CPU, training seconds per arm",
        "command": "FTLAB_OUTPUTS=/tmp/mallocbench .venv/bin/python benchmarks/cpu_malloc.py --out "
        f"benchmarks/results/cpu_malloc.json --steps {a.steps} --repeats {a.repeats}",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "steps": a.steps,
        "tuned_env": TUNED,
        "runs": results,
        "speedup_train": round(best["glibc_default"] / best["keep_freed_memory"], 2),
    }
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("speedup_train",)}))


if __name__ == "__main__":
    main()
