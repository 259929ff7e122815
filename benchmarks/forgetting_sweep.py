"""Stage 02's recipe against forgetting, on the embedded default (CPU): for each variant, stages 01-02 headless with
params/default.yaml plus the variant's overrides, then the general-knowledge probe (data/probes, every question) on
the base and on the variant's SFT adapter, with stage 05's forgetting gate and the held-out NLL gain stage 02
measured. Chooses stage 02's defaults: the gain must stay >= 0.5 nats while the gate passes.

    FTLAB_OUTPUTS=/tmp/sweep .venv/bin/python benchmarks/forgetting_sweep.py \
        --out benchmarks/results/forgetting_sweep.json [--only NAME ...]

Each variant is one run folder under FTLAB_OUTPUTS (reused when its stage 02 already finished).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

VARIANTS = {  # name -> stage 02 overrides on top of params/default.yaml
    "lr3e-4_40steps": {"learning_rate": 3e-4, "max_steps": 40},
    "lr3e-4_20steps": {"learning_rate": 3e-4, "max_steps": 20},
    "lr1e-4_40steps": {"learning_rate": 1e-4, "max_steps": 40},
    "lr1e-4_20steps": {"learning_rate": 1e-4, "max_steps": 20},
    "lr1e-3_40steps": {"learning_rate": 1e-3, "max_steps": 40},
}


def probe(model, tokenizer, rows) -> dict:
    from ftlab.evaluation import scoring

    t = time.time()
    s = scoring.probe_score(model, tokenizer, rows)
    s["seconds"] = round(time.time() - t, 1)
    return s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--extra", default="{}", help="JSON: more variants, name -> overrides")
    a = ap.parse_args()
    from peft import PeftModel

    from ftlab import data, evaluation, models
    from ftlab.core.paths import repo_root, run_dir
    from ftlab.runner import pipeline

    variants = {**VARIANTS, **json.loads(a.extra)}
    names = a.only or list(variants)
    default = repo_root() / "params" / "default.yaml"
    rows = data.read_jsonl(repo_root() / "data" / "probes" / "general_knowledge.jsonl")
    tok = models.load_tokenizer("smollm2-135m")
    old = json.loads(a.out.read_text()) if a.out.exists() else {}
    result = {
        "what": "Stage 02 variants on the embedded default (SmolLM2-135M, CPU): held-out NLL gain (stage 02's eval "
        "loss before -> after) against the general-knowledge probe's drop (every question, greedy answers matched "
        "by scoring.answer_match; stage 05's forgetting gate: 95% paired bootstrap intervals, fails when the "
        "correct-share drop is surely above 3 points or the NLL rise surely above 0.1)",
        "command": "FTLAB_OUTPUTS=/tmp/sweep .venv/bin/python benchmarks/forgetting_sweep.py --out " + str(a.out),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": __import__("os").cpu_count(),
        "platform": platform.platform(),
        "probe_questions": len(rows),
        "variants": old.get("variants", {}),
    }
    base = models.load_model("smollm2-135m")
    base_score = probe(base, tok, rows)
    result["base_probe"] = {k: round(base_score[k], 4) for k in ("nll", "correct", "answer_tokens", "seconds")}
    for name in names:
        over = variants[name]
        t = time.time()
        run = pipeline.run("01", "02", str(default), {"run_name": f"sweep-{name}", **over}, log=lambda *x: None)
        seconds = round(time.time() - t, 1)
        sft = json.loads((run / "02_train_sft" / "summary.json").read_text())
        tuned = PeftModel.from_pretrained(base, str(run / "02_train_sft" / "adapter"))
        after = probe(tuned, tok, rows)
        base = tuned.unload()  # the plain base again, for the next variant
        gate = evaluation.forgetting_gate(base_score, after, 0.1, 0.03)
        result["variants"][name] = {
            "overrides": over,
            "stage_seconds_01_02": seconds,
            "steps": sft["steps"],
            "heldout_nll": [round(sft["eval_loss_before"], 4), round(sft["eval_loss_after"], 4)],
            "heldout_nll_gain": round(sft["eval_loss_before"] - sft["eval_loss_after"], 4),
            "probe_correct": [round(base_score["correct"], 4), round(after["correct"], 4)],
            "probe_nll": [round(base_score["nll"], 4), round(after["nll"], 4)],
            "probe_answer_tokens": [round(base_score["answer_tokens"], 1), round(after["answer_tokens"], 1)],
            "gate": {k: v for k, v in gate.items() if k != "try"},
            "run": str(run_dir(f"sweep-{name}")),
        }
        print(name, json.dumps(result["variants"][name]["gate"]["why"]), result["variants"][name]["heldout_nll_gain"])
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
