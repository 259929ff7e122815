"""One greedy generator for everyone: stage 03's self pairs and guard, stage 04's export checks, stage 05's scores,
`models.chat` and the chat playground (streaming).

Greedy (do_sample=False) and deterministic; batched with left padding, or one prompt at a time (`batch_size=1`)
where exact token ids are compared across runtimes and padding must not enter. Every answer stops at any of the
model's end-of-turn ids (the generation config's and the tokenizer's EOS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Prompt = list[dict[str, str]]


@dataclass
class Answer:
    text: str  # decoded answer without special tokens
    new_tokens: int  # tokens generated, the end-of-turn token included
    stopped: bool  # ended with an end-of-turn token before the max_new_tokens bound
    ids: list[int] = field(default_factory=list)  # the generated ids, up to and including the end-of-turn token


def eos_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Every token id that ends an answer: the generation config's EOS ids and the tokenizer's EOS."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    e = getattr(gen, "eos_token_id", None)
    ids |= set(e if isinstance(e, list) else [e] if e is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def as_prompt(prompt: Prompt | str) -> Prompt:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def greedy(
    model: Any, tokenizer: Any, prompts: list[Prompt | str], max_new_tokens: int = 64, batch_size: int = 8
) -> list[Answer]:
    """Greedy answers to chat prompts (a string is one user turn), `batch_size` at a time with left padding."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    stop = eos_ids(tokenizer, model)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[Answer] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = [as_prompt(p) for p in prompts[i : i + batch_size]]
            texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=stop,
                    pad_token_id=tokenizer.pad_token_id,
                )
            out += [_answer(row, stop, tokenizer) for row in gen[:, enc["input_ids"].shape[1] :].tolist()]
    finally:
        tokenizer.padding_side = side
    return out


def _answer(row: list[int], stop: list[int], tokenizer: Any) -> Answer:
    n = next((k + 1 for k, t in enumerate(row) if t in stop), None)
    # after its end-of-turn a finished row holds only padding; an unfinished one is all answer
    toks = row[:n] if n else [t for t in row if t != tokenizer.pad_token_id]
    text = tokenizer.decode(toks, skip_special_tokens=True).strip()
    return Answer(text, len(toks), n is not None, row[:n] if n else row)


def stream(
    model: Any, tokenizer: Any, prompt: Prompt | str, max_new_tokens: int, on_text: Callable[[str], None] | None = None
) -> Iterator[str]:
    """One greedy answer, yielded as it grows (the text so far); `on_text` is called with each new text too.
    Generation runs in a thread (transformers' TextIteratorStreamer); its error is raised here, not lost."""
    import threading

    import torch
    from transformers import TextIteratorStreamer

    enc = tokenizer.apply_chat_template(
        as_prompt(prompt), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    inputs = {k: v.to(model.device) for k, v in enc.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with torch.no_grad():
                model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    streamer=streamer,
                    eos_token_id=eos_ids(tokenizer, model),
                    pad_token_id=tokenizer.pad_token_id,
                )
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread below
            failed.append(e)
            streamer.end()  # unblock the reader

    t = threading.Thread(target=run, daemon=True)
    t.start()
    text = ""
    for piece in streamer:
        text += piece
        if on_text:
            on_text(text)
        yield text
    t.join()
    if failed:
        raise RuntimeError(f"generation failed: {failed[0]}") from failed[0]
