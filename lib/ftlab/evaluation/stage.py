"""Stage 05 as a few calls: find what to score, score every model on the same rows, the verdicts, the forgetting
probe, the optional extras, the side-by-side samples, and the results (metrics.json, report.html, the evaluated
model card), all written into stage 05's own folder.

Which models exist comes from the registry (`ftlab.core.stages`): the base, every method's adapter, the merged model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlab import data, models
from ftlab.core import runs, stages
from ftlab.core.paths import repo_root, stage_dir
from ftlab.evaluation import lm_eval_harness, report, reuse, scoring
from ftlab.export import card, ollama
from ftlab.hardware import devices, telemetry
from ftlab.models import llama_server
from ftlab.views import plots, widgets


def find(run_name: str, compare_models: list[str]) -> tuple[dict[str, Path], list[str]]:
    """The requested models whose stage produced them (name -> folder), and a note for each one that is missing.
    `final` stands for the run's final adapter (`stages.final_method`: DPO's, KTO's, ... or SFT's)."""
    paths = stages.contenders(lambda s: stage_dir(run_name, s))
    wanted, notes = stages.expand_final(compare_models, lambda s: stage_dir(run_name, s))
    found = {m: paths[m] for m in wanted if m in paths and paths[m].exists()}
    notes += [
        f"{m}: not evaluated, {paths[m]} does not exist (run its stage first)"
        for m in wanted
        if m != stages.BASE and m not in found
    ]
    return found, notes


def score_all(
    base_model: str,
    tokenizer: Any,
    quantization: str,
    found: dict[str, Path],
    rows: list[dict[str, Any]],
    each: Callable[[str, Any, str], None] | None = None,
    **kw: Any,
) -> tuple[scoring.Contenders, dict[str, dict[str, Any]]]:
    """The merged model (stage 04) first, on its own, and freed; then one base in memory with every adapter attached
    by name, each scored in turn. Never both at once: at 8B the 16-bit merged model and the 4-bit base with its
    adapters would not fit a 24 GB card together. `kw` are `scoring.score`'s (max_length, n_generate,
    max_new_tokens, batch_size). `each(name, model, model_args)` runs on every model while it is loaded (the lm-eval
    harness: `lm_eval_harness.Runner`)."""
    base_dir = models.resolve_model(base_model)
    scores = {}
    if stages.MERGED in found:
        merged = models.load_model(str(found[stages.MERGED]), dtype=devices.compute_dtype(devices.kind()))
        scores[stages.MERGED] = scoring.score(merged, tokenizer, rows, **kw)
        print(f"{stages.MERGED:>7}:", scoring.summary(scores[stages.MERGED]))
        if each:
            each(stages.MERGED, merged, f"pretrained={found[stages.MERGED]}")
        del merged
        devices.release_memory()
    adapters = {m: str(found[m]) for m in stages.method_names() if m in found}
    contenders = scoring.Contenders(models.load_model(base_model, quantization=quantization), adapters)
    kept = {Path(a).parent for a in adapters.values()}  # stage 03 keeps the guard's scores of SFT and its own adapter
    for name in contenders.names:
        with contenders.use(name):
            hit = None
            if name in adapters:
                k = reuse.key(adapters[name], rows, tokenizer, **reuse.scoring_settings(base_dir, quantization, kw))
                hit = reuse.find(kept, name, k)
            scores[name] = hit[0] if hit else scoring.score(contenders.model, tokenizer, rows, **kw)
            print(f"{name:>7}:", scoring.summary(scores[name]))
            if hit:
                print(f"         the same adapter, rows and settings as {hit[1]}: its score, not measured again")
            if each:
                peft = f",peft={adapters[name]}" if name in adapters else ""
                each(name, contenders.model, f"pretrained={base_dir}{peft}")
    order = [*contenders.names, stages.MERGED]  # the series order, as every table shows it
    return contenders, {m: scores[m] for m in order if m in scores}


@dataclass
class Verdict:
    final: str | None  # the last method in series order that was scored: the run's tuned model
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # the promotion gate beyond the task: name -> {"ok": True/False, or None when not checked, "why": ..., "try": ...}
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def task_improved(self) -> bool:
        c = self.comparisons.get(f"{self.final}_vs_{stages.BASE}", {})
        return bool(self.final) and bool(c.get("improved")) and not c.get("regressed")

    @property
    def passed(self) -> bool:
        """Promote only when the task improved AND no gate failed (a gate not checked, e.g. the probe switched
        off, does not block but is named in the report)."""
        return self.task_improved and all(g["ok"] is not False for g in self.gates.values())

    def gate_lines(self) -> list[str]:
        """The promotion gate as the report shows it: each condition, its numbers and its tolerance."""
        out = [f"promotion gate, task: {'improved' if self.task_improved else 'FAILED, no improvement over the base'}"]
        for n, g in self.gates.items():
            state = "not checked" if g["ok"] is None else "ok" if g["ok"] else "FAILED"
            out.append(f"promotion gate, {n}: {state}: {g['why']}")
        out.append(f"promotion gate: {'passed' if self.passed else 'not passed'}")
        return out

    def refusal(self) -> str:
        """Why the run is not promoted, condition by condition, with what to try."""
        why = [] if self.task_improved else ["the tuned model did not beat the base on the held-out task data"]
        why += [f"{n}: {g['why']} ({g['try']})" for n, g in self.gates.items() if g["ok"] is False]
        return "; ".join(why)

    def __repr__(self) -> str:
        return "\n".join([*self.lines, *[f"WARNING: {w}" for w in self.warnings]])


def pairs_to_compare(scores: dict[str, Any], final: str | None) -> list[tuple[str, str]]:
    """Each method against what it built on and against the base; the merged model against the final adapter."""
    out = []
    for m in stages.methods():
        out += [(m.builds_on or stages.BASE, m.name)] + ([(stages.BASE, m.name)] if m.builds_on else [])
    out.append((final, stages.MERGED))
    return [(a, b) for a, b in out if a in scores and b in scores and a != b]


def verdicts(scores: dict[str, dict[str, Any]], nll_tolerance: float) -> Verdict:
    """Paired comparisons with bootstrap intervals, the 0.5-nats rule of thumb, and warnings a reader must see."""
    final = next(reversed(stages.method_names(scores)), None)
    v = Verdict(final)
    for a, b in pairs_to_compare(scores, final):
        c = scoring.compare(scores[a], scores[b], (a.upper(), b.upper()), nll_tolerance)
        v.comparisons[f"{b}_vs_{a}"] = c
        v.lines.append(c["verdict"])
    if gate := scoring.kept_gain_gate(v.comparisons, final):  # DPO must not undo most of what SFT gained
        v.gates["kept_gain"] = gate
    if final:
        drop = -v.comparisons[f"{final}_vs_{stages.BASE}"]["nll_diff"]
        v.lines.append(
            f"{final.upper()} vs base: NLL drop {drop:.3f} nats/token; rule of thumb (>= 0.5 means real "
            f"task improvement): {'met' if drop >= 0.5 else 'not met'}"
        )
        if not v.comparisons[f"{final}_vs_{stages.BASE}"]["improved"]:
            v.warnings.append(
                f"{final.upper()} shows no improvement over the base on held-out data: +0% means "
                "something went wrong (data, learning rate, or loss masking that trained nothing; see "
                "stage 01's audit)"
            )
    if v.comparisons.get(f"{stages.MERGED}_vs_{final}", {}).get("regressed"):
        v.warnings.append(
            "the merged model scores worse than its adapter: the merge or export lost something (stage 04)"
        )
    return v


forgetting_gate = scoring.forgetting_gate  # the probe's condition of the promotion gate


def forgetting(
    contenders: scoring.Contenders,
    tokenizer: Any,
    v: Verdict,
    probe_path: str,
    nll_tolerance: float,
    gate_nll: float = 0.1,
    gate_correct: float = 0.03,
) -> dict[str, dict[str, Any]]:
    """The general-knowledge probe with the base and the final tuned model: a warning on `v` when knowledge was lost,
    and the forgetting condition of the promotion gate (`gate_nll`, `gate_correct`, see `forgetting_gate`)."""
    if not v.final:
        print("forgetting probe: no tuned model to compare")
        return {}
    probe_rows = data.read_jsonl(repo_root() / probe_path)
    probe = {}
    for name in (stages.BASE, v.final):
        with contenders.use(name):
            probe[name] = scoring.probe_score(contenders.model, tokenizer, probe_rows)
    base, tuned = probe[stages.BASE], probe[v.final]
    v.gates["forgetting"] = forgetting_gate(base, tuned, gate_nll, gate_correct, probe_rows)
    forgot = scoring.compare(base, tuned, (stages.BASE, v.final.upper()), nll_tolerance)
    print({m: {"nll": round(p["nll"], 3), "correct": round(p["correct"], 3)} for m, p in probe.items()})
    if forgot["regressed"] or v.gates["forgetting"]["correct_drop_ci"][0] > 0:  # surely fewer right answers
        v.warnings.append(
            f"forgetting: on the general-knowledge probe, reference NLL {base['nll']:.3f} -> "
            f"{tuned['nll']:.3f} and correct answers {base['correct']:.0%} -> {tuned['correct']:.0%} "
            f"({v.final.upper()} vs base). Fewer steps, a lower rank or learning rate, or mixing general "
            "data into the training set reduce it."
        )
        print("WARNING:", v.warnings[-1])
    return probe


def extras(
    p: dict, lm: lm_eval_harness.Runner | None, rows: list, scores: dict, v: Verdict, stage: runs.Stage, notes: list
) -> dict[str, Any]:
    """The lm-eval results (run in `score_all`) with their forgetting gate, and the optional pairwise judge: a
    server at `judge_url`, or llama.cpp's server started here on the GGUF file `judge_model` when no URL is set."""
    out: dict[str, Any] = {}
    if lm is not None:
        out["lm_eval"] = lm.summary()
        v.gates["forgetting_lm_eval"] = lm_eval_harness.forgetting_gate(
            lm, stages.BASE, v.final, p["forgetting_correct_tolerance"]
        )
        if v.final and lm_eval_harness.FORGETTING_TASK in lm.tasks:
            lost = out["lm_eval"]["lost_by_final"] = lm_eval_harness.flips(lm, stages.BASE, v.final)
            print(f"lm-eval: {len(lost)} general-knowledge question(s) the base got right and {v.final} misses", lost)
    if not ((p["judge_model"] or p["judge_url"]) and v.final):
        notes.append("pairwise judge: off (set judge_model: a GGUF file, or a model name on the server at judge_url)")
        print(notes[-1])
        return out
    pr = [scoring.split_eval_row(r) for r in rows[: p["generate_rows"]]]
    args = ([x[-1]["content"] for x, _ in pr], [ref for _, ref in pr])
    args += (scores[stages.BASE]["per_example"]["answers"], scores[v.final]["per_example"]["answers"])
    with llama_server.judge_server(p["judge_url"], p["judge_model"], stage.path("judge_server.log")) as (url, name):
        j = out["judge"] = scoring.pairwise_judge(url, name, *args) | {"judge": p["judge_model"], "url": p["judge_url"]}
    who = p["judge_model"] if p["judge_url"] else Path(p["judge_model"]).name
    v.lines.append(
        f"judge ({who}): {v.final.upper()} wins {j['wins_b']}, base wins {j['wins_a']}, ties {j['ties']} "
        "(position-swapped, consistent wins only)"
    )
    print(v.lines[-1])
    return out


def samples(rows: list[dict[str, Any]], scores: dict[str, dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first `n` held-out prompts with the reference and every model's answer, ROUGE-L and whether it stopped."""
    out = []
    for i, r in enumerate(rows[:n]):
        prompt, ref = scoring.split_eval_row(r)
        per = {k: {m: s["per_example"][k][i] for m, s in scores.items()} for k in ("answers", "rouge_l", "stopped")}
        out.append({"line": r.get("_line"), "prompt": prompt[-1]["content"], "reference": ref, **per})
    return out


def show_samples(stage: runs.Stage, found_samples: list[dict[str, Any]], scores: dict[str, Any]) -> Any:
    """samples.jsonl and eval.png; the side-by-side table in JupyterLab, three examples printed headless."""
    data.write_jsonl(stage.path("samples.jsonl"), found_samples)
    fig = plots.eval_bars(scores, stage.path("eval.png"))
    if not widgets.is_headless():
        from IPython.display import HTML, display

        display(HTML(report.side_by_side(found_samples, list(scores), limit=8)))
    else:
        for s in found_samples[:3]:
            print(json.dumps({k: s[k] for k in ("prompt", "reference", "answers")}, indent=1, ensure_ascii=False))
    return fig


def write_results(
    stage: runs.Stage,
    scores: dict[str, Any],
    v: Verdict,
    probe: dict[str, Any],
    found_samples: list,
    notes: list[str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json, report.html and the evaluated model card, all in this stage's folder; the promote command
    when the tuned model beat the base."""
    run = stage.run_name
    v.gates.setdefault("forgetting", {"ok": None, "why": "the general-knowledge probe is off (forgetting_probe)"})
    print("\n".join(v.gate_lines()))
    metrics = {
        "models": {m: scoring.summary(s) for m, s in scores.items()},
        "comparisons": v.comparisons,
        "probe": {m: scoring.summary(p) | {"correct": p["correct"]} for m, p in probe.items()},
        "verdict": v.lines,
        "warnings": v.warnings,
        "notes": notes,
        "passed": v.passed,
        "final": v.final,
        "gates": {"task": {"ok": v.task_improved}, **v.gates},
        "not_promoted_because": None if v.passed else v.refusal(),
        "extras": extra,
        "compute": telemetry.compute_rows(run),
    }
    stage.write_json("metrics.json", metrics)
    html = report.page(
        f"Evaluation of run {run}",
        v.lines + v.gate_lines(),
        v.warnings,
        scores,
        found_samples,
        probe,
        [(stage.path("eval.png"), "held-out NLL and ROUGE-L per model")],
        notes,
        metrics["compute"],
        tables(extra),
        refused=metrics["not_promoted_because"],
    )
    stage.path("report.html").write_text(html, encoding="utf-8")
    if v.final and card.evaluated_card(run, scores, v.lines, stage.path("MODEL_CARD.md"), card_numbers(extra)):
        promote = ollama.promote_command(stage_dir(run, stages.EXPORT))
        print(("evaluation passed; promote with:  " + promote) if v.passed else f"not promoted: {v.refusal()}")
    print(f"report: {stage.path('report.html')}")
    return metrics


def tables(extra: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's tables beyond the held-out metrics: lm-eval per model and task, the deployed GGUF beside its HF
    model."""
    out = []
    if extra.get("lm_eval", {}).get("models"):
        lm_table = lm_eval_harness.table(extra["lm_eval"])
        out.append(("lm-evaluation-harness (log-likelihood, ± standard error)", *lm_table))
    if d := extra.get("deployed"):
        head = ["model", "served by", "prompts", "ROUGE-L", "stopped", "same answer as HF", "tokens/s"]
        hf = [d["compared_with"], "transformers", str(d["prompts"]), f"{d['hf_rouge_l']:.3f}"]
        rows = [hf + [f"{d['hf_stopped_share']:.0%}", "", ""]]
        rows.append(
            [d["gguf"], "llama.cpp server", str(d["prompts"]), f"{d['rouge_l']:.3f}", f"{d['stopped_share']:.0%}"]
        )
        rows[-1] += [f"{d['agreement']:.0%}", f"{d['tokens_per_s']:.1f}"]
        out.append(("The deployed artifact", head, rows))
    return out


def card_numbers(extra: dict[str, Any]) -> dict[str, float]:
    """The model card's numbers beyond NLL and ROUGE-L: lm-eval accuracy per model and task, the deployed GGUF's."""
    out = {
        f"lm_eval_{t}_acc_{m}": r["acc"]
        for m, tasks in extra.get("lm_eval", {}).get("models", {}).items()
        for t, r in tasks.items()
        if "acc" in r
    }
    if d := extra.get("deployed"):
        out |= {f"deployed_{d['qtype']}_rouge_l": d["rouge_l"], f"deployed_{d['qtype']}_stopped": d["stopped_share"]}
    return out


def summary(scores: dict[str, Any], v: Verdict) -> dict[str, Any]:
    """Stage 05's summary.json: the final model, whether it passed, the verdict and each model's headline numbers."""
    nll = {m: round(s["nll"], 4) for m, s in scores.items()}
    rouge = {m: round(s["rouge_l"], 4) for m, s in scores.items()}
    return {
        "final": v.final,
        "passed": v.passed,
        "verdict": v.lines,
        "warnings": v.warnings,
        "nll": nll,
        "rouge_l": rouge,
        "generated_tokens_per_s": {m: round(s.get("generated_tokens_per_s", math.nan), 1) for m, s in scores.items()},
    }
