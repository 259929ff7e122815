"""GRPO's rewards on the bundled task: plain functions a learner can read, change, or replace with their own.

TRL calls each one with the batch's `completions` (chat completions: a list of messages per completion), the
token ids (`completion_ids`) and every other dataset column by name (here `reference`, the row's reference answer),
and wants one float per completion. The rewards are summed (TRL's `reward_weights` would weight them); GRPO then
compares each completion with the others of its group (same prompt), so only differences inside a group teach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ftlab import metrics


def text(completion: Any) -> str:
    """A completion's answer text: the assistant message of a chat completion, or the string itself."""
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


def rouge_l(completions: list[Any], reference: list[str], **_: Any) -> list[float]:
    """ROUGE-L F1 against the row's reference answer, 0..1: rewards saying what the reference says."""
    return metrics.rouge_l([text(c) for c in completions], list(reference))


def repeats(tokens: list[int], n: int = 4) -> float:
    """Share of the answer's n-grams that occurred earlier in it: 0 for fresh text, near 1 for a loop."""
    grams = [tuple(tokens[i : i + n]) for i in range(max(0, len(tokens) - n + 1))]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def ends_cleanly(
    completions: list[Any], completion_ids: list[list[int]], stop_ids: tuple[int, ...] = (), **_: Any
) -> list[float]:
    """+0.5 when the answer ended with an end-of-turn token (it stops on its own, as the exported GGUF must), -0.5
    when it ran to max_completion_length; minus the share of repeated 4-grams (loops); -0.5 for an empty answer.
    Without it, ROUGE-L alone can be raised by long answers that cover the reference and never stop."""
    out = []
    for c, ids in zip(completions, completion_ids, strict=True):
        stopped = bool(ids) and (ids[-1] in stop_ids if stop_ids else True)
        out.append((0.5 if stopped else -0.5) - repeats(list(ids)) - (0.5 if not text(c).strip() else 0.0))
    return out


def stop_aware(tokenizer: Any, fn: Callable[..., list[float]] = ends_cleanly) -> Callable[..., list[float]]:
    """`ends_cleanly` with the tokenizer's end-of-turn ids filled in (TRL keeps the stop token in completion_ids
    when the model stopped, and cuts at max_completion_length otherwise)."""
    from ftlab.models import generate

    stops = tuple(generate.eos_ids(tokenizer))

    def ends_cleanly(completions: list[Any], completion_ids: list[list[int]], **kw: Any) -> list[float]:
        return fn(completions, completion_ids, stop_ids=stops, **kw)

    return ends_cleanly


def judge(url: str, model: str = "", timeout: float = 60.0) -> Callable[..., list[float]]:
    """A local OpenAI-compatible judge (Ollama, llama.cpp's server: the endpoint stage 05 uses) scores each answer
    0-10 against the reference; the reward is that score / 10 (0 when the reply holds no number). Slow: one request
    per completion. A judge can be gamed like any reward: read the completions it scores highest."""
    import re

    from ftlab.models.llama_server import chat

    def judge_score(prompts: list[Any], completions: list[Any], reference: list[str], **_: Any) -> list[float]:
        out = []
        for p, c, ref in zip(prompts, completions, reference, strict=True):
            q = text(p) if isinstance(p, list) else str(p)
            ask = JUDGE_PROMPT.format(question=q, reference=ref, answer=text(c))
            m = re.search(r"\d+", chat(url, [{"role": "user", "content": ask}], 4, model, timeout).text)
            out.append(min(10, int(m.group())) / 10 if m else 0.0)
        return out

    return judge_score


JUDGE_PROMPT = (
    "Rate the answer to the question from 0 (wrong or off-topic) to 10 (as correct and complete as the reference). "
    "Reply with the number only.\n\nQuestion: {question}\n\nReference answer: {reference}\n\nAnswer: {answer}\n\n"
    "Rating:"
)


def _good_answer(row: dict[str, Any]) -> str:
    """The row's reference answer: GRPO's `reference`, a pair's chosen answer or a labelled row's completion."""
    if "reference" in row:
        return row["reference"]
    answer = row["chosen"] if "chosen" in row else row["completion"]
    return answer if isinstance(answer, str) else answer[-1]["content"]


def try_on(funcs: list[Callable[..., list[float]]], rows: list[dict[str, Any]], tokenizer: Any) -> list[dict]:
    """Each reward on each row's reference answer (ended with the end-of-turn token) and on its first half cut off
    mid-answer (as a run into max_completion_length looks), printed as a table: what the functions pay for. Rows
    of any stage-03 method: GRPO's prompts with their reference, pairs (the chosen answer), labelled rows."""
    from ftlab.models import generate

    stop = generate.eos_ids(tokenizer)[:1]
    table = []
    for r in rows:
        reference = _good_answer(r)
        ids = tokenizer(reference, add_special_tokens=False)["input_ids"]
        half = tokenizer.decode(ids[: len(ids) // 2])
        cases = {
            "reference answer": (reference, ids + stop),
            "its first half, cut off": (half, ids[: len(ids) // 2]),
        }
        for what, (answer, answer_ids) in cases.items():
            kw = {"prompts": [r["prompt"]], "completions": [[{"role": "assistant", "content": answer}]]}
            kw |= {"completion_ids": [answer_ids], "reference": [reference]}
            table.append({"answer": what, **{f.__name__: round(f(**kw)[0], 3) for f in funcs}})
    print("\n".join(" | ".join(f"{k}: {v}" for k, v in row.items()) for row in table))
    return table
