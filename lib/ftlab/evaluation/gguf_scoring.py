"""Stage 05 on the artifact users deploy: the chosen GGUF from stage 04 served by llama.cpp's OpenAI-compatible
server (`llama_cpp.server` on 127.0.0.1, a free port, started and stopped here), asked the same held-out prompts as
the HF models. Its ROUGE-L, stop share, agreement with the HF model it was exported from, and tokens/s; and the
"deployed" condition of the promotion gate: within tolerance of that HF model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ftlab.core import runs, stages
from ftlab.core.paths import stage_dir
from ftlab.evaluation import scoring
from ftlab.models import llama_server


def find_gguf(run_name: str, qtype: str) -> tuple[Path | None, str, str]:
    """The `qtype` GGUF stage 04 wrote and verified, the method whose adapter it holds, or None and why not."""
    summary = stage_dir(run_name, stages.EXPORT) / "summary.json"
    if not summary.exists():
        return None, "", f"stage 04 has not run in {run_name!r}, so there is no GGUF to serve"
    s = runs.read_json(summary)
    path = next((Path(c["path"]) for c in s.get("gguf", []) if c["qtype"] == qtype), None)
    if path is None or not path.exists():
        return None, s.get("adapter", ""), f"stage 04 wrote no {qtype} GGUF (gguf_types {s.get('gguf_types')})"
    return path, s.get("adapter", ""), ""


def score(stage: runs.Stage, rows: list[dict[str, Any]], scores: dict[str, Any], v: Any, notes: list[str]) -> dict:
    """Serve the `deployed_gguf` file, score it on the first `generate_rows` held-out prompts, and set the gate's
    "deployed" condition on `v` (not checked, with the reason, when there is no such file or it is switched off)."""
    p = stage.params
    if not p["deployed_gguf"]:
        v.gates["deployed"] = {"ok": None, "why": "not scored (deployed_gguf is empty)"}
        return {}
    path, adapter, why = find_gguf(stage.run_name, p["deployed_gguf"])
    hf_name = stages.MERGED if stages.MERGED in scores else adapter
    if path is None or hf_name not in scores:
        why = why or f"the HF model it was exported from ({hf_name or '?'}) was not scored here"
        notes.append(f"deployed GGUF: not scored: {why}")
        v.gates["deployed"] = {"ok": None, "why": why}
        print(notes[-1])
        return {}
    pairs = [scoring.split_eval_row(r) for r in rows[: p["generate_rows"]]]
    replies = answer(path, pairs, stage, p["deployed_seconds"])
    hf = scores[hf_name]["per_example"]
    answers = [r.text for r in replies]
    rl = scoring.rouge_l(answers, [ref for _, ref in pairs[: len(replies)]])
    n = max(1, len(replies))
    out = {
        "gguf": path.name,
        "qtype": p["deployed_gguf"],
        "compared_with": hf_name,
        "prompts": len(replies),
        "prompts_asked_of_hf": len(pairs),
        "rouge_l": sum(rl) / n,
        "hf_rouge_l": sum(hf["rouge_l"][:n]) / n,  # the HF model on the same prompts
        "stopped_share": sum(r.stopped for r in replies) / n,
        "hf_stopped_share": sum(hf["stopped"][:n]) / n,
        "agreement": sum(a == b for a, b in zip(answers, hf["answers"], strict=False)) / n,
        "tokens_per_s": sum(r.tokens for r in replies) / max(1e-9, sum(r.seconds for r in replies)),
        "answers": answers,
    }
    v.gates["deployed"] = gate(out, p["deployed_rouge_tolerance"], p["deployed_stop_tolerance"])
    v.lines.append(
        f"deployed {path.name} through llama.cpp's server: ROUGE-L {out['rouge_l']:.3f} (HF {hf_name.upper()} "
        f"{out['hf_rouge_l']:.3f}), stopped {out['stopped_share']:.0%} (HF {out['hf_stopped_share']:.0%}), same answer "
        f"as HF on {out['agreement']:.0%}, {out['tokens_per_s']:.1f} tokens/s"
    )
    print(v.lines[-1])
    return out


def answer(path: Path, pairs: list, stage: runs.Stage, budget_s: float, at_least: int = 8) -> list[llama_server.Reply]:
    """The GGUF's greedy answers to the prompts of `pairs`, in order, until `budget_s` is spent (at least
    `at_least`; 0 answers all): a CPU build on an 8B model answers a few tokens a second."""
    p, replies, t = stage.params, [], time.time()
    with llama_server.llama_server(path, stage.path("llama_server.log"), p["max_length"] + p["max_new_tokens"]) as url:
        for prompt, _ in pairs:
            if budget_s and len(replies) >= at_least and time.time() - t > budget_s:
                print(
                    f"deployed GGUF: time budget of {budget_s:.0f} s spent after {len(replies)} of {len(pairs)} prompts"
                )
                break
            replies.append(llama_server.chat(url, prompt, p["max_new_tokens"]))
    return replies


def gate(d: dict[str, Any], rouge_tol: float, stop_tol: float) -> dict[str, Any]:
    """The deployed GGUF may trail the HF model it came from by at most `rouge_tol` ROUGE-L and `stop_tol` stop share."""
    rouge_gap, stop_gap = d["hf_rouge_l"] - d["rouge_l"], d["hf_stopped_share"] - d["stopped_share"]
    return {
        "ok": rouge_gap <= rouge_tol and stop_gap <= stop_tol,
        "why": f"{d['gguf']}: ROUGE-L {d['rouge_l']:.3f} vs HF {d['hf_rouge_l']:.3f} (allowed -{rouge_tol}), stopped "
        f"{d['stopped_share']:.0%} vs HF {d['hf_stopped_share']:.0%} (allowed -{stop_tol:.0%})",
        "try": "a larger quantization (q8_0, f16) via deployed_gguf and stage 04's gguf_types, or check the GGUF's "
        "chat template and stop tokens in stage 04's verification",
    }
