"""Stage 03's methods side by side on the embedded default (CPU): DPO, KTO and ORPO from the same SFT adapter, the
same pairs and seed (compared by stage 06), and GRPO with its held-out ROUGE-L against SFT's in stage 05.

    python3 benchmarks/methods_sweep.py OUTPUTS_ROOT [OUTPUTS_ROOT ...] > benchmarks/results/methods_sweep.json

reads every run under the roots that has a finished stage 03 (and 05 / 06 where they ran).
"""

from __future__ import annotations

import csv
import json
import platform
import sys
from pathlib import Path

KEEP_03 = (
    "method",
    "steps",
    "train_seconds",
    "first_loss",
    "last_loss",
    "first_margin",
    "last_margin",
    "first_reward",
    "last_reward",
    "last_reward_std",
    "last_completion_length",
    "last_kl",
    "train_pairs",
    "train_prompts",
)


def run_record(run: Path) -> dict:
    m = json.loads((run / "manifest.json").read_text())
    s = json.loads((run / "03_train_dpo" / "summary.json").read_text())
    rec = {k: s[k] for k in KEEP_03 if k in s}
    rec["stage_seconds"] = m["stages"]["03_train_dpo"].get("seconds")
    rec["params"] = {k: v for k, v in m["stages"]["03_train_dpo"]["params"].items() if k not in ("run_name",)}
    rec["eval"] = s.get("eval", {})
    g = s["guard"]
    rec["guard"] = {
        "verdict": g["verdict"],
        "nll_diff": g["nll_diff"],
        "rouge_l_diff": g["rouge_l_diff"],
        "before": g["before"],
        "after": g["after"],
    }
    ev = run / "05_evaluate" / "summary.json"
    if ev.exists():
        e = json.loads(ev.read_text())
        rec["stage05"] = {k: e.get(k) for k in ("final", "passed", "nll", "rouge_l", "stopped_share")}
    metrics = run / "03_train_dpo" / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    if any("reward" in r for r in rows):
        rec["reward_per_step"] = [round(r["reward"], 4) for r in rows if "reward" in r]
    return rec


def main(roots: list[str]) -> dict:
    runs, compare = {}, None
    for root in map(Path, roots):
        for run in sorted(p for p in root.iterdir() if (p / "03_train_dpo" / "summary.json").exists()):
            runs[run.name] = run_record(run)
        for c in root.glob("*/06_compare_runs/summary.json"):
            compare = json.loads(c.read_text())
            with (c.parent / "comparison.csv").open() as f:  # stage 06's leaderboard, ranked, empty cells dropped
                compare["leaderboard"] = [
                    {k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)
                ]
    return {
        "what": __doc__.split("\n\n")[0],
        "host": platform.node(),
        "cpu_threads": __import__("os").cpu_count(),
        "runs": runs,
        "stage06": compare,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1, default=str))
