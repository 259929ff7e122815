"""The embedded default series (`make run`: params/default.yaml, stages 00-06) on this machine's CPU, timed per stage.

    .venv/bin/python benchmarks/cpu_series.py --out benchmarks/results/cpu_series.json

Runs the series into a temporary outputs folder (the one-time environment setup and model conversion are not
counted: run `make setup` first) and records each stage's wall time from the run manifest, the whole series' time
against the 15-minute budget, the machine's CPU count and the key versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from ftlab.core import runs
from ftlab.core.paths import repo_root
from ftlab.runner import pipeline

BUDGET_S = 15 * 60


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("-f", default=str(repo_root() / "params" / "default.yaml"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FTLAB_OUTPUTS"] = tmp
        t = time.time()
        run = pipeline.run(params_file=a.f, overrides={"run_name": "timed"})
        total = round(time.time() - t, 1)
        stages = {k: v["seconds"] for k, v in json.loads((run / "manifest.json").read_text())["stages"].items()}
        sft = json.loads((run / "02_train_sft" / "summary.json").read_text())
        ev = json.loads((run / "05_evaluate" / "metrics.json").read_text())
    out = {
        "what": __doc__.split("\n\n")[0],
        "command": ".venv/bin/python benchmarks/cpu_series.py " + " ".join(sys.argv[1:]),
        "date": runs.now(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "versions": runs.package_versions(("torch", "transformers", "peft", "trl", "papermill", "llama_cpp_python")),
        "stage_seconds": stages,
        "series_seconds": total,
        "budget_seconds": BUDGET_S,
        "within_budget": total <= BUDGET_S,
        "quality": {
            "sft_eval_loss": [sft["eval_loss_before"], sft["eval_loss_after"]],
            "nll_base_vs_final": [ev["models"]["base"]["nll"], ev["models"][ev["final"]]["nll"]],
        },
    }
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("stage_seconds", "series_seconds", "within_budget")}, indent=1))


if __name__ == "__main__":
    main()
