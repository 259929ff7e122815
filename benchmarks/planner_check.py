"""The memory planner against the committed GPU grid: no GPU needed, it re-reads the measurements.

    .venv/bin/python benchmarks/planner_check.py --out benchmarks/results/planner_check.json

For every run in `benchmarks/results/planner_grid_*_h100.json` (made by benchmarks/speed.py on an H100, commands in
the files) it rebuilds the run's configuration (model shape, batch, the longest row of the seeded length mix, rank,
checkpointing, compute dtype, Liger) and compares `ftlab.hardware.memory.estimate`'s allocated part (without the CUDA context
and the 10% allocator margin) with torch's measured peak allocated. tests/test_train.py checks the same ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sft_memory import SHAPES
from speed import lengths_for
from transformers import LlamaConfig

from ftlab import models
from ftlab.core.paths import repo_root
from ftlab.hardware import memory

GRID = sorted((repo_root() / "benchmarks" / "results").glob("planner_grid_*_h100.json"))


def check() -> list[dict]:
    tok = models.load_tokenizer("tiny-random")  # the tokenizer the grid's random-weight models were built with
    out = []
    for f in GRID:
        d = json.loads(f.read_text())
        shape = memory.Shape.from_config(LlamaConfig(vocab_size=len(tok), **SHAPES[d["shape"]]))
        for r in d["runs"]:
            if "planner" not in r or r["planner"].get("offloading") or r.get("padding_free"):
                continue
            seq = max(lengths_for(r["workload"], tok, d["seq_len"], d["batch_size"] * d["steps"], seed=0))
            plan = memory.estimate(
                shape,
                quantization="4bit",
                batch_size=d["batch_size"],
                seq_len=seq,
                lora_r=d["lora_r"],
                gradient_checkpointing=r["overrides"].get("gradient_checkpointing", True),
                cuda=True,
                liger=r["liger"],
                fp16_compute=r["compute_dtype"] == "float16",
            )
            alloc = (plan.total / 1.10 - plan.context) / memory.GIB
            out.append(
                {
                    "file": f.name,
                    "shape": d["shape"],
                    "workload": r["workload"],
                    "batch": d["batch_size"],
                    "seq": seq,
                    "lora_r": d["lora_r"],
                    "checkpointing": r["overrides"].get("gradient_checkpointing", True),
                    "compute_dtype": r["compute_dtype"],
                    "measured_gib": r["peak_allocated_gib"],
                    "estimate_gib": round(alloc, 3),
                    "ratio": round(alloc / r["peak_allocated_gib"], 3),
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = check()
    within = sum(abs(r["ratio"] - 1) <= 0.10 for r in rows)
    res = {
        "what": __doc__.split("\n\n")[0],
        "command": ".venv/bin/python benchmarks/planner_check.py " + " ".join(sys.argv[1:]),
        "configs": len(rows),
        "within_10pct": within,
        "ratio_range": [min(r["ratio"] for r in rows), max(r["ratio"] for r in rows)],
        "runs": rows,
    }
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    for r in rows:
        print(
            f"{r['shape']:<20}{r['workload']:<6}{r['compute_dtype']:<9} ckpt={r['checkpointing']!s:<5} "
            f"measured {r['measured_gib']:6.3f}  estimate {r['estimate_gib']:6.3f}  x{r['ratio']}"
        )
    print(f"{within} of {len(rows)} within +-10%")


if __name__ == "__main__":
    main()
