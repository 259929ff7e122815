"""Scores of a model on reference answers: per-example NLL (nats/token) over the assistant tokens only.

Stage 01's optional perplexity filter, stage 03's regression guard and stage 05's evaluation all use these.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ftlab import metrics
from ftlab.core import stages
from ftlab.metrics import (  # noqa: F401 - the measures, named here too (scoring.rouge_l, ...)
    answer_match,
    answer_nll,
    bootstrap_ci,
    exact_match,
    paired_drop,
    rouge_l,
)
from ftlab.models import generate

# ---- generation metrics -------------------------------------------------------------------------------------------


def split_eval_row(row: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    """An eval row's prompt (every turn before the last) and its reference answer (the last assistant turn)."""
    msgs = row["messages"]
    if not msgs or msgs[-1]["role"] != "assistant":
        raise ValueError(f"an eval row must end with an assistant turn (the reference answer); got {msgs[-1:]}")
    return msgs[:-1], msgs[-1]["content"]


def score(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    *,
    max_length: int,
    n_generate: int,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    generate_batch_size: int | None = None,
    extra_metrics: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """Held-out NLL on every row, `batch_size` rows per forward pass; greedy answers on the first `n_generate` rows,
    `generate_batch_size` prompts at a time (default: `batch_size`), with ROUGE-L, exact match, length and the share
    that stopped by themselves, and each of `extra_metrics` (evaluate modules by name or path) on the same answers.
    Per-example values are kept for paired comparisons."""
    from ftlab.data.template_audit import encode

    enc = [encode(tokenizer, r["messages"], max_length) for r in rows]
    nll = answer_nll(model, enc, tokenizer.pad_token_id, batch_size)
    prompts, refs = zip(*(split_eval_row(r) for r in rows[:n_generate]), strict=True) if n_generate else ((), ())
    t = time.perf_counter()
    gen_batch = generate_batch_size or batch_size
    answers = generate.greedy(model, tokenizer, list(prompts), max_new_tokens, gen_batch) if prompts else []
    gen_s = time.perf_counter() - t  # greedy() returns host lists: the GPU has finished when it returns
    texts = [a.text for a in answers]
    rl = rouge_l(texts, list(refs))
    em = [bool(x) for x in metrics.compute("exact_match", texts, list(refs)).get("per_example", [])]
    extra = {m: metrics.numbers(metrics.compute(m, texts, list(refs))) for m in extra_metrics}
    valid = [x for x in nll if x == x]
    return {
        "nll": sum(valid) / len(valid) if valid else math.nan,
        "perplexity": math.exp(sum(valid) / len(valid)) if valid else math.nan,
        "rouge_l": sum(rl) / len(rl) if rl else math.nan,
        "exact_match": sum(em) / len(em) if em else math.nan,
        "answer_tokens": sum(a.new_tokens for a in answers) / len(answers) if answers else math.nan,
        "stopped_share": sum(a.stopped for a in answers) / len(answers) if answers else math.nan,
        "generated_tokens_per_s": sum(a.new_tokens for a in answers) / gen_s if answers and gen_s > 0 else math.nan,
        "n_nll": len(valid),
        "n_generate": len(answers),
        "extra_metrics": extra,
        "per_example": {
            "nll": nll,
            "rouge_l": rl,
            "exact_match": em,
            "answers": [a.text for a in answers],
            "stopped": [a.stopped for a in answers],
        },
    }


def summary(s: dict[str, Any]) -> dict[str, Any]:
    """The score without its per-example lists, rounded for printing and JSON."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items() if k != "per_example"}


def compare(
    before: dict[str, Any],
    after: dict[str, Any],
    names: tuple[str, str] = ("before", "after"),
    nll_tol: float = 0.02,
    rouge_tol: float = 0.01,
) -> dict[str, Any]:
    """Paired comparison of two scores on the same rows: NLL difference with a bootstrap CI, ROUGE-L difference,
    and a plain-language verdict. Lower NLL is better; higher ROUGE-L is better. A change counts only when its 95%
    interval excludes zero *and* it is larger than the tolerance (smaller changes are reported as negligible)."""
    a, b = before["per_example"], after["per_example"]
    d_nll = [y - x for x, y in zip(a["nll"], b["nll"], strict=True) if x == x and y == y]
    d_rl = [y - x for x, y in zip(a["rouge_l"], b["rouge_l"], strict=True)]
    nll_mean, nll_lo, nll_hi = bootstrap_ci(d_nll)
    rl_mean, rl_lo, rl_hi = bootstrap_ci(d_rl)
    better, worse = [], []
    if nll_hi < 0 and -nll_mean > nll_tol:
        better.append(f"held-out NLL by {-nll_mean:.3f} nats/token [95% CI {-nll_hi:.3f}, {-nll_lo:.3f}]")
    elif nll_lo > 0 and nll_mean > nll_tol:
        worse.append(f"held-out NLL by {nll_mean:.3f} nats/token [95% CI {nll_lo:.3f}, {nll_hi:.3f}]")
    if d_rl and rl_lo > 0 and rl_mean > rouge_tol:
        better.append(f"ROUGE-L by {rl_mean:+.3f} [{rl_lo:+.3f}, {rl_hi:+.3f}]")
    elif d_rl and rl_hi < 0 and -rl_mean > rouge_tol:
        worse.append(f"ROUGE-L by {rl_mean:+.3f} [{rl_lo:+.3f}, {rl_hi:+.3f}]")
    n1, n2 = names
    if worse:
        verdict = (
            f"{n2} regressed vs {n1}: " + "; ".join(worse) + (f" (improved {'; '.join(better)})" if better else "")
        )
    elif better:
        verdict = f"{n2} improved on {n1}: " + "; ".join(better)
    else:
        verdict = (
            f"no material difference between {n2} and {n1}: NLL {nll_mean:+.3f} nats/token "
            f"[{nll_lo:+.3f}, {nll_hi:+.3f}], ROUGE-L {rl_mean:+.3f} [{rl_lo:+.3f}, {rl_hi:+.3f}] "
            f"(tolerances {nll_tol} nats, {rouge_tol} ROUGE-L)"
        )
    return {
        "nll_diff": nll_mean,
        "nll_diff_ci": [nll_lo, nll_hi],
        "rouge_l_diff": rl_mean,
        "rouge_l_diff_ci": [rl_lo, rl_hi],
        "improved": better,
        "regressed": worse,
        "verdict": verdict,
    }


# ---- forgetting probe and pairwise judge ----------------------------------------------------------------------


PROBE_BATCH = 32  # probe questions answered at once


def probe_score(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int = 32) -> dict[str, Any]:
    """General-knowledge probe: NLL of the reference sentence and whether the greedy answer says the key word (a
    short right answer counts, see `answer_match`). The questions are one short line each and the answers at most
    `max_new_tokens`, so they are generated `PROBE_BATCH` at a time: on 2 CPU cores the 260 answers took 83 s at 8
    a batch and 53 s at 32, the same answers (benchmarks/results/generation_cpu_probe.json). Held-out prompts are
    not: their lengths vary and one answer that never stops holds its whole batch to `max_new_tokens` (stage 05's
    32 held-out answers ran at 53 tokens/s at 8 a batch and 36 at 32 on the embedded model)."""
    s = score(
        model,
        tokenizer,
        rows,
        max_length=256,
        n_generate=len(rows),
        max_new_tokens=max_new_tokens,
        generate_batch_size=PROBE_BATCH,
    )
    hits = [
        answer_match(r["answer"], a, r.get("aliases", ()))
        for r, a in zip(rows, s["per_example"]["answers"], strict=True)
    ]
    s["per_example"]["correct"] = hits
    s["correct"] = sum(hits) / max(1, len(hits))
    return s


def kept_gain_gate(comparisons: dict[str, dict[str, Any]], final: str | None, share: float = 0.5) -> dict | None:
    """The condition that the final model keeps what the method it built on gained: it fails when the final model's
    held-out NLL is surely (95% interval) worse than its parent's by more than `share` of the parent's gain over
    the base (DPO at SFT's learning rate can undo SFT). None where the final model builds on nothing scored."""
    parent = stages.method(final).builds_on if final else None
    lost, gained = comparisons.get(f"{final}_vs_{parent}"), comparisons.get(f"{parent}_vs_{stages.BASE}")
    if not (lost and gained):
        return None
    gain, back, lo = -gained["nll_diff"], lost["nll_diff"], lost["nll_diff_ci"][0]
    ok = not (gain > 0 and lo > share * gain)
    f, pa = final.upper(), parent.upper()
    return {
        "ok": ok,
        "why": f"{f} vs {pa}: held-out NLL {back:+.3f} nats/token (95% CI from {lo:+.3f}) of the {gain:.3f} {pa} "
        f"gained over the base; fails when surely more than {share:.0%} of that gain is lost",
        "try": f"a lower learning rate or fewer steps for {f} (its stage's own value: -p {stages.method(final).stage}"
        f".learning_rate ...), or export and promote {pa}'s adapter (stage 04 adapter={parent})",
        "lost_nll": round(back, 4),
        "lost_nll_ci": [round(x, 4) for x in lost["nll_diff_ci"]],
        "parent_gain": round(gain, 4),
    }


def forgetting_gate(
    base: dict[str, Any], tuned: dict[str, Any], nll_tol: float, correct_tol: float, rows: list | None = None
) -> dict[str, Any]:
    """The forgetting condition of the promotion gate, decided on 95% paired bootstrap intervals over the probe's
    questions: it fails when the rise of the reference NLL is surely above `nll_tol` nats/token (its interval lies
    wholly above it) or the fall of the share of right answers is surely above `correct_tol`. A few questions lost
    by chance do not fail it; a real loss does. With the probe `rows`, `lost` lists the questions the base answered
    right and the tuned model now misses, with its answer."""
    pb, pt = base["per_example"], tuned["per_example"]
    up = bootstrap_ci([t - b for b, t in zip(pb["nll"], pt["nll"], strict=True)])
    drop = paired_drop(pb["correct"], pt["correct"])
    bad = [what for what, (_, lo, _hi), tol in (("NLL", up, nll_tol), ("correct", drop, correct_tol)) if lo > tol]
    n = len(pb["correct"])
    per = zip(rows, pb["correct"], pt["correct"], pt["answers"], strict=True) if rows else ()
    lost = [
        {"question": r["messages"][0]["content"], "answer": r["answer"], "now": a}
        for r, was, now, a in per
        if was and not now
    ]
    return {
        "ok": not bad,
        "why": f"general-knowledge probe ({n} questions): NLL {base['nll']:.3f} -> {tuned['nll']:.3f} (rise "
        f"{up[0]:+.3f}, 95% CI {up[1]:+.3f} to {up[2]:+.3f}; fails above +{nll_tol}), correct {base['correct']:.0%} "
        f"-> {tuned['correct']:.0%} (drop {drop[0]:+.1%}, 95% CI {drop[1]:+.1%} to {drop[2]:+.1%}; fails above "
        f"{correct_tol:.0%})",
        "try": "a lower learning rate, fewer steps or a smaller rank; or general rows mixed into the training set",
        "failed_on": bad,
        "nll_rise": round(up[0], 4),
        "nll_rise_ci": [round(up[1], 4), round(up[2], 4)],
        "correct_drop": round(drop[0], 4),
        "correct_drop_ci": [round(drop[1], 4), round(drop[2], 4)],
        "n": n,
        **({"lost": lost} if rows else {}),
    }


JUDGE_PROMPT = (
    "You are comparing two answers to the same question against a reference answer.\n"
    "Question:\n{question}\n\nReference answer:\n{reference}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "Which answer is more correct and helpful, judged against the reference? Reply with exactly one letter: "
    "A, B, or T for a tie."
)


def pairwise_judge(
    url: str,
    model: str,
    questions: list[str],
    refs: list[str],
    answers_a: list[str],
    answers_b: list[str],
    timeout: float = 60.0,
) -> dict[str, Any]:
    """A local OpenAI-compatible judge (Ollama, llama.cpp server) compares A and B on each question twice, with the
    positions swapped; a win counts only when both orders agree (position-bias mitigation), else it is a tie."""
    from ftlab.models.llama_server import chat

    def ask(prompt: str) -> str:
        text = chat(url, [{"role": "user", "content": prompt}], 2, model, timeout).text.upper()
        return text[:1] if text[:1] in ("A", "B", "T") else "T"

    wins = {"a": 0, "b": 0, "tie": 0}
    rows = []
    for q, ref, a, b in zip(questions, refs, answers_a, answers_b, strict=True):
        first = ask(JUDGE_PROMPT.format(question=q, reference=ref, a=a, b=b))
        second = ask(JUDGE_PROMPT.format(question=q, reference=ref, a=b, b=a))  # swapped
        second = {"A": "B", "B": "A"}.get(second, "T")
        outcome = {"A": "a", "B": "b"}.get(first, "tie") if first == second else "tie"
        wins[outcome] += 1
        rows.append({"question": q, "first_order": first, "swapped_order": second, "outcome": outcome})
    n = max(1, len(rows))
    return {"wins_a": wins["a"], "wins_b": wins["b"], "ties": wins["tie"], "win_rate_b": wins["b"] / n, "rows": rows}


class Contenders:
    """One base model in memory with the SFT and DPO adapters attached by name; `use(name)` switches between
    base (adapters off), `sft` and `dpo` without loading the base again."""

    def __init__(self, base: Any, adapters: dict[str, str]):
        self.names = ["base", *adapters]
        self.model = base
        if adapters:
            from peft import PeftModel

            first, *rest = adapters.items()
            self.model = PeftModel.from_pretrained(base, first[1], adapter_name=first[0])
            for name, path in rest:
                self.model.load_adapter(path, adapter_name=name)
        self.model.eval()

    def use(self, name: str) -> Any:
        """A context manager under which `self.model` is the named contender."""
        import contextlib

        if name == "base":
            return self.model.disable_adapter() if self.names[1:] else contextlib.nullcontext()
        self.model.set_adapter(name)
        return contextlib.nullcontext()
