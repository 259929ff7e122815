"""Stage 01 on big files: wall time and peak memory of the real notebook (`python -m ftlab run 01`) on alpaca JSONL
files of 20, 200 and 1,000 MB, made here from the bundled data's words (mixed lengths, every row distinct).

    .venv/bin/python benchmarks/data_memory.py benchmarks/results/data_memory_cpu.json --sizes 20,200,1000

Peak RSS is the largest resident set of the stage's processes (the kernel does the work), read from the
operating system's accounting of finished child processes (getrusage RUSAGE_CHILDREN), one fresh process per file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def words() -> list[str]:
    text = (ROOT / "data" / "pydoc_qa" / "sft.jsonl").read_text()
    return sorted(set(re.findall(r"[A-Za-z][a-z]{2,}", text)))


def make(path: Path, mb: int, seed: int = 0) -> dict:
    """An alpaca file of about `mb` MB: instruction, optional input, output; lengths from 5 to ~400 words."""
    if path.exists() and abs(path.stat().st_size - mb * 1e6) < 2e6:
        return {"path": str(path), "rows": sum(1 for _ in path.open())}
    rng, vocab, n = random.Random(seed), words(), 0
    with path.open("w") as f:
        while f.tell() < mb * 1_000_000:
            say = lambda k: " ".join(rng.choices(vocab, k=k))  # noqa: E731
            row = {"instruction": f"{n}. {say(rng.randint(5, 30))}?", "input": say(rng.choice([0, 0, 20, 80]))}
            row["output"] = say(int(rng.lognormvariate(3.5, 1.0)) + 3)[:2500] + "."
            f.write(json.dumps(row) + "\n")
            n += 1
    return {"path": str(path), "rows": n}


def measure(path: Path, mb: int) -> dict:
    """One fresh process runs stage 01 on the file through `python -m ftlab run`; its children's peak RSS is the
    kernel's."""
    code = (
        "import resource, subprocess, sys, time; t = time.time(); "
        "rc = subprocess.call(sys.argv[1:]); "
        "print(rc, time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    cmd = [sys.executable, "-m", "ftlab", "run", "01", "-p", "run_name", f"data-memory-{mb}mb"]
    cmd += ["-p", "data_path", str(path), "-p", "prefs_path", "", "-p", "max_length", "4096"]
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, cwd=ROOT)
    rc, wall, rss_kib = out.stdout.strip().splitlines()[-1].split()
    stats = {}
    if rc == "0":
        folder = Path(os.environ.get("FTLAB_OUTPUTS", ROOT / "outputs")) / f"data-memory-{mb}mb" / "01_prepare_data"
        s = json.loads((folder / "stats.json").read_text())
        stats = {k: s[k] for k in ("train", "eval", "rejected")}
    got = {"mb": mb, "rc": int(rc), "seconds": round(float(wall), 1), "peak_rss_gib": round(int(rss_kib) / 2**20, 2)}
    return got | stats | ({} if rc == "0" else {"stderr_tail": out.stderr[-2000:]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--sizes", default="20,200,1000")
    ap.add_argument("--folder", default="/tmp/ftlab-data-memory")
    a = ap.parse_args()
    folder = Path(a.folder)
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for mb in [int(s) for s in a.sizes.split(",")]:
        made = make(folder / f"alpaca_{mb}mb.jsonl", mb)
        results.append(measure(Path(made["path"]), mb) | {"rows_in_file": made["rows"]})
        print(json.dumps(results[-1]), flush=True)
    doc = {
        "what": "stage 01 (python -m ftlab run 01) on alpaca JSONL files: wall time and peak RSS of the kernel",
        "command": ".venv/bin/python benchmarks/data_memory.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
