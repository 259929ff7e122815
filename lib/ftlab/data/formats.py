"""The input layouts people bring, one record each: the fields that identify it, and how a row becomes chat messages.

A new layout is one `Format` entry in `FORMATS`: `detect_format` tries the entries in order, `normalize` converts
with the entry's function, `params` offers the names as `data_format` choices. Rows that cannot be used raise
`RowError` with a reason from `REASONS` (stage 01 writes them, with their line numbers, to rejected.jsonl).
This module imports only `reasons` of ftlab, so `params` can take its vocabulary from here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ftlab.data.reasons import REASONS

ROLE_MAP = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}
TOOL_ROLES = ("tool", "function", "function_call", "observation", "ipython")
_CONTROL = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")
Messages = list[dict[str, str]]


class RowError(ValueError):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# ---- field checks ------------------------------------------------------------------------------------------------


def text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{what} must be text, found {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError("invalid_utf8", f"{what} holds a lone surrogate") from None
    if "\x00" in value:
        raise RowError("nul_byte", f"{what} at character {value.index(chr(0))}")
    m = _CONTROL.search(value)
    if m:
        raise RowError("control_chars", f"{what}: {m.group()!r} at character {m.start()}")
    if not value.strip():
        raise RowError("empty_field", f"{what} is empty")
    return value


def content(value: Any, what: str) -> str:
    """A turn's text: a string, or OpenAI's content parts with their text parts joined by newlines; any other part
    (image_url, input_audio, file, ...) is rejected by its type."""
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict):
                raise RowError("wrong_type", f"{what}[{j}] must be a content part object, found {type(part).__name__}")
            kind = part.get("type")
            if kind != "text":
                raise RowError("media_part", f"{what}[{j}] is a {kind!r} part; only text parts can be trained")
            parts.append(text(part.get("text"), f"{what}[{j}].text"))
        if not parts:
            raise RowError("empty_field", f"{what} is an empty list of parts")
        return "\n".join(parts)
    return text(value, what)


def messages(turns: Any, what: str, role_key: str = "role", content_key: str = "content") -> Messages:
    if not isinstance(turns, list) or not turns:
        kind = "wrong_type" if not isinstance(turns, list) else "empty_field"
        raise RowError(kind, f"{what} must be a non-empty list")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise RowError("wrong_type", f"{what}[{i}] must be an object, found {type(t).__name__}")
        role = t.get(role_key)
        if t.get("tool_calls") or t.get("function_call"):
            calls = [c.get("function", c).get("name", "?") for c in t.get("tool_calls") or [] if isinstance(c, dict)]
            raise RowError(
                "tool_turn",
                f"{what}[{i}] is a tool call ({', '.join(calls) or 'function_call'}) with no text answer; "
                "tool use is not trained here: drop such rows or turn the call into the assistant's text",
            )
        if isinstance(role, str) and role.lower() in TOOL_ROLES:
            raise RowError("tool_turn", f"{what}[{i}] has role {role!r} (a tool result); tool use is not trained here")
        if not isinstance(role, str) or role.lower() not in ROLE_MAP:
            raise RowError("unknown_role", f"{what}[{i}] role {role!r}; expected system, user or assistant")
        out.append({"role": ROLE_MAP[role.lower()], "content": content(t.get(content_key), f"{what}[{i}].content")})
    return out


def check_order(msgs: Messages, need_final_assistant: bool = True) -> None:
    body = msgs[1:] if msgs[0]["role"] == "system" else msgs
    if not body:
        raise RowError("no_final_assistant", "only a system message")
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise RowError("turn_order", f"turn {i + (len(msgs) - len(body))} is {m['role']!r}, expected {want!r}")
    if need_final_assistant and body[-1]["role"] != "assistant":
        raise RowError("no_final_assistant", f"last turn is {body[-1]['role']!r}")


def answer(value: Any, what: str, role_key: str = "role", content_key: str = "content") -> Messages:
    """The final assistant turn of an answer: text, one message object, or a list of messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": text(value, what)}]
    msgs = messages([value] if isinstance(value, dict) else value, what, role_key, content_key)
    if msgs[-1]["role"] != "assistant":
        raise RowError("no_final_assistant", f"{what} does not end with an assistant message")
    return msgs[-1:]


def prompt(value: Any, what: str = "prompt") -> Messages:
    return [{"role": "user", "content": text(value, what)}] if isinstance(value, str) else messages(value, what)


# ---- the layouts -------------------------------------------------------------------------------------------------


def _messages(rec: dict[str, Any]) -> dict[str, Any]:
    return {"messages": messages(rec["messages"], "messages")}


def _sharegpt_keys(turns: Any) -> tuple[str, str]:
    first = turns[0] if isinstance(turns, list) and turns else None
    return ("from", "value") if isinstance(first, dict) and "from" in first else ("role", "content")


def _system(rec: dict[str, Any]) -> Messages:
    """A top-level `system` field (LLaMA-Factory's ShareGPT and Alpaca layouts) as the first message."""
    return [{"role": "system", "content": text(rec["system"], "system")}] if rec.get("system") else []


def _sharegpt(rec: dict[str, Any]) -> dict[str, Any]:
    turns = rec["conversations"]
    msgs = messages(turns, "conversations", *_sharegpt_keys(turns))
    if msgs[0]["role"] == "system" and rec.get("system"):
        raise RowError("turn_order", "a top-level system field and a system turn: keep one")
    return {"messages": _system(rec) + msgs}


def _sharegpt_preference(rec: dict[str, Any], field: str = "conversations") -> dict[str, Any]:
    """LLaMA-Factory / Axolotl ShareGPT preference rows: the conversation so far, then `chosen` and `rejected`
    answers (message objects, lists of them, or text)."""
    turns = rec[field]
    keys = _sharegpt_keys(turns)
    return _pair(_system(rec) + messages(turns, field, *keys), rec, keys)


def _messages_preference(rec: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory's OpenAI-style preference rows: `messages` up to the last user turn, `chosen` and `rejected`."""
    return _sharegpt_preference(rec, "messages")


def _instruction(rec: dict[str, Any]) -> str:
    """Alpaca's user turn: the instruction, then the input (if any) after a blank line."""
    extra = "\n\n" + text(rec["input"], "input") if rec.get("input") not in (None, "") else ""
    return text(rec["instruction"], "instruction") + extra


def _alpaca(rec: dict[str, Any]) -> dict[str, Any]:
    user = _instruction(rec)
    msgs = _system(rec)
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise RowError(
            "wrong_type", f"history must be a list of [instruction, answer] pairs, found {type(history).__name__}"
        )
    for i, pair in enumerate(history):  # earlier turns, oldest first
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RowError("wrong_type", f"history[{i}] must be an [instruction, answer] pair")
        msgs += [
            {"role": "user", "content": text(pair[0], f"history[{i}][0]")},
            {"role": "assistant", "content": text(pair[1], f"history[{i}][1]")},
        ]
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": text(rec["output"], "output")}]
    return {"messages": msgs}


def _alpaca_preference(rec: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory's Alpaca preference rows: instruction (+ input), chosen and rejected answers."""
    return _pair(_system(rec) + [{"role": "user", "content": _instruction(rec)}], rec)


def _kto(rec: dict[str, Any]) -> dict[str, Any]:
    """A KTO row (TRL's unpaired layout): a prompt, one answer and a true (desirable) / false (undesirable) label;
    `messages` rows are the conversation with its last assistant turn as the judged answer."""
    label = rec["label"]
    if not isinstance(label, bool):
        raise RowError("wrong_type", f"label must be true (desirable) or false (undesirable), found {label!r}")
    if "messages" in rec:
        msgs = messages(rec["messages"], "messages")
        if msgs[-1]["role"] != "assistant":
            raise RowError("no_final_assistant", "a labelled conversation must end with the assistant turn it judges")
        pmsgs, done = msgs[:-1], msgs[-1:]
    else:
        pmsgs, done = prompt(rec["prompt"]), answer(rec["completion"], "completion")
    check_order(pmsgs + done)
    return {"prompt": pmsgs, "completion": done, "label": label}


def _prompt_completion(rec: dict[str, Any]) -> dict[str, Any]:
    return {"messages": prompt(rec["prompt"]) + answer(rec["completion"], "completion")}


def _text(rec: dict[str, Any]) -> dict[str, Any]:
    # plain text: the whole text is one assistant turn, so every token is trained
    return {"messages": [{"role": "assistant", "content": text(rec["text"], "text")}]}


def _preference(rec: dict[str, Any]) -> dict[str, Any]:
    return _pair(prompt(rec["prompt"]), rec)


def _differs_at(a: Messages, b: Messages) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _after(pmsgs: Messages, value: Any, what: str, keys: tuple[str, str]) -> Messages:
    """The answer of a pair; where it repeats the conversation before it (UltraFeedback's [user, assistant]), that
    conversation must be the prompt, or turns would be lost silently."""
    before = messages(value, what, *keys)[:-1] if isinstance(value, list) and len(value) > 1 else pmsgs
    if before != pmsgs:
        why = f"{what} repeats the conversation before its answer: turn {_differs_at(before, pmsgs)} differs"
        raise RowError("transcripts_differ", why)
    return answer(value, what, *keys)


def _pair(pmsgs: Messages, rec: dict[str, Any], keys: tuple[str, str] = ("role", "content")) -> dict[str, Any]:
    check_order(pmsgs + [{"role": "assistant", "content": "x"}])
    chosen, rejected = _after(pmsgs, rec["chosen"], "chosen", keys), _after(pmsgs, rec["rejected"], "rejected", keys)
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        raise RowError("chosen_equals_rejected", "identical answers teach nothing")
    return {"prompt": pmsgs, "chosen": chosen, "rejected": rejected}


def _transcripts(rec: dict[str, Any]) -> dict[str, Any]:
    """TRL's implicit-prompt pairs (Anthropic HH's shape): `chosen` and `rejected` are two whole conversations, the
    same up to their last answers; that shared start is the prompt."""
    keys = _sharegpt_keys(rec["chosen"])
    chosen, rejected = messages(rec["chosen"], "chosen", *keys), messages(rec["rejected"], "rejected", *keys)
    if chosen[:-1] != rejected[:-1] or len(chosen) != len(rejected):
        at = _differs_at(chosen, rejected)
        raise RowError("transcripts_differ", f"chosen and rejected differ at turn {at}, before their last answers")
    if len(chosen) < 2:
        raise RowError("no_final_assistant", "chosen and rejected hold no conversation before their answers")
    return _pair(chosen[:-1], {"chosen": chosen[-1:], "rejected": rejected[-1:]})


@dataclass(frozen=True)
class Format:
    name: str
    required: tuple[str, ...]  # fields that identify the layout (all must be present)
    optional: tuple[str, ...]  # further fields it reads; every other field is kept as an extra
    convert: Callable[[dict[str, Any]], dict[str, Any]]
    preference: bool = False  # a judged answer (a chosen/rejected pair, or a labelled one for KTO): stage 03's data
    ordered: bool = True  # check the turn order of the converted conversation (data/README.md has an example each)

    @property
    def fields(self) -> set[str]:
        return set(self.required) | set(self.optional)


# detection tries these in order: the first whose required fields are all present wins
FORMATS: tuple[Format, ...] = (
    Format("preference", ("prompt", "chosen", "rejected"), (), _preference, preference=True, ordered=False),
    Format(
        "sharegpt_preference",
        ("conversations", "chosen", "rejected"),
        ("system",),
        _sharegpt_preference,
        preference=True,
        ordered=False,
    ),
    Format(
        "messages_preference",
        ("messages", "chosen", "rejected"),
        ("system",),
        _messages_preference,
        preference=True,
        ordered=False,
    ),
    Format(
        "alpaca_preference",
        ("instruction", "chosen", "rejected"),
        ("input", "system"),
        _alpaca_preference,
        preference=True,
        ordered=False,
    ),
    Format("transcript_preference", ("chosen", "rejected"), (), _transcripts, preference=True, ordered=False),
    Format("kto_messages", ("messages", "label"), (), _kto, preference=True, ordered=False),
    Format("kto_prompt_completion", ("prompt", "completion", "label"), (), _kto, preference=True, ordered=False),
    Format("messages", ("messages",), (), _messages),
    Format("sharegpt", ("conversations",), ("system",), _sharegpt),
    Format("alpaca", ("instruction", "output"), ("input", "system", "history"), _alpaca),
    Format("prompt_completion", ("prompt", "completion"), (), _prompt_completion),
    Format("text", ("text",), (), _text, ordered=False),
)


def names(preference: bool | None = None) -> tuple[str, ...]:
    """Format names; `preference=False` only conversation layouts, `True` only preference layouts."""
    return tuple(f.name for f in FORMATS if preference is None or f.preference == preference)


def get(name: str) -> Format:
    for f in FORMATS:
        if f.name == name:
            return f
    raise ValueError(f"unknown data format {name!r}; expected one of {['auto', *names()]}")


def detect_format(rec: dict[str, Any]) -> str:
    keys = set(rec)
    for f in FORMATS:
        if set(f.required) <= keys:
            return f.name
    raise RowError("unknown_schema", f"fields {sorted(keys)[:12]}, which match no known layout")


def layouts() -> str:
    """Every layout the reader knows with the fields it needs, whole (the rejection summary prints it once)."""
    return "; ".join(f"{f.name} {list(f.required)}" for f in FORMATS)


def normalize(rec: Any, fmt: str = "auto") -> tuple[dict[str, Any], dict[str, Any]]:
    """One record -> ({"messages": [...]} or a preference dict, extra fields kept as they were). Raises RowError."""
    if not isinstance(rec, dict):
        raise RowError("wrong_type", f"a row must be an object, found {type(rec).__name__}")
    f = get(detect_format(rec) if fmt == "auto" else fmt)
    if any(k not in rec for k in f.required):
        raise RowError(
            "unknown_schema", f"data_format={f.name!r} needs fields {list(f.required)}, found {sorted(rec)[:12]}"
        )
    out = f.convert(rec)
    if f.ordered:
        check_order(out["messages"])
    return out, {k: v for k, v in rec.items() if k not in f.fields}
