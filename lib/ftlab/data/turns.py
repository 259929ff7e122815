"""Keys inside a record's turns beyond role and content: reported as extras (kept beside the row, never dropped
silently), or, for a key that says whether a turn is trained, failing the row or honoured on the row's messages
(stage 01's `turn_flags`); and renamed keys and roles read as the layout they rename (`data_fields`, `data_roles`).
Used by `data.load`; imports only `formats`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftlab.core.params import TURN_FLAGS  # noqa: F401 - the choices, named here too (turns.TURN_FLAGS)
from ftlab.data import formats
from ftlab.data.formats import RowError

TURN_KEYS = ("role", "content", "from", "value")  # what the readers take from a turn
# per-turn keys that other tools read as "train this turn or not" (OpenAI's weight, axolotl's train/training...)
TRAINING_KEYS = ("weight", "train", "training", "trainable", "mask", "masked", "loss", "label")
HONOURED_KEYS = ("weight", "train", "training", "trainable")  # one meaning everywhere: 1/true is trained


def turn_extras(rec: dict[str, Any], fields: set[str], honour: bool = False) -> dict[str, list[Any]]:
    """Keys inside a row's turns that the reader does not use, as `field[].key` extras (reported, kept beside the
    row); a key that says whether a turn is trained fails the row unless `honour` (then `honour_turn_flags` reads
    it): every assistant turn is trained otherwise, so a turn marked as not-for-training would be trained silently."""
    extras: dict[str, list[Any]] = {}
    for name in fields:
        turns = rec.get(name)
        for i, t in enumerate(turns if isinstance(turns, list) else ()):
            for k, v in t.items() if isinstance(t, dict) else ():
                if k in TURN_KEYS or (honour and k.lower() in HONOURED_KEYS):
                    continue
                if k.lower() in TRAINING_KEYS:
                    how = (
                        "its meaning differs between tools: rename it to 'train' (true/false) or 'weight' (1/0)"
                        if honour
                        else "every assistant turn is trained unless turn_flags='honour' (stage 01's parameter): set "
                        "it, or remove the turns it marks as not trained, then the key"
                    )
                    raise RowError(
                        "training_key",
                        f"{name}[{i}] has {k!r} = {v!r}: a per-turn key that says whether the turn is trained; {how}",
                    )
                extras.setdefault(f"{name}[].{k}", []).append(v)
    return extras


def _trained(where: str, key: str, value: Any) -> bool:
    if key == "weight" and not isinstance(value, bool) and value in (0, 1):
        return value == 1
    if key != "weight" and isinstance(value, bool):
        return value
    want = "0 or 1" if key == "weight" else "true or false"
    raise RowError("training_key", f"{where} has {key!r} = {value!r}: expected {want}")


def honour_turn_flags(rec: dict[str, Any], data: dict[str, Any], fmt: formats.Format) -> None:
    """Per-turn training flags (`weight` 0/1, `train`/`training`/`trainable` true/false) onto the row's messages as
    `"train": False` on the assistant turns that are not trained: they stay as context and get no loss (stage 02's
    mask, `audit.encode`). Fails the row where a flag asks to train a user or system turn (only answers are trained),
    on a layout whose turns are not messages, or where the last answer (what the row is scored on) is not trained."""
    msgs = data.get("messages")
    for name in fmt.fields:
        turns = rec.get(name)
        if not isinstance(turns, list):
            continue
        for i, t in enumerate(turns):
            flags = {k.lower(): v for k, v in t.items() if k.lower() in HONOURED_KEYS} if isinstance(t, dict) else {}
            if not flags:
                continue
            if msgs is None or fmt.preference:
                raise RowError("training_key", f"{name}[{i}]: per-turn training flags are read in conversations only")
            verdicts = {_trained(f"{name}[{i}]", k, v) for k, v in flags.items()}
            if len(verdicts) > 1:
                raise RowError("training_key", f"{name}[{i}] has flags that disagree: {flags}")
            m = msgs[len(msgs) - len(turns) + i]  # a top-level system field comes first in the messages
            if m["role"] != "assistant" and verdicts == {True}:
                raise RowError("training_key", f"{name}[{i}] is a {m['role']} turn marked trained: only answers are")
            if m["role"] == "assistant" and verdicts == {False}:
                m["train"] = False
    if msgs and msgs[-1].get("train") is False:
        raise RowError(
            "training_key",
            "the last answer is marked not trained, and it is the answer the row is trained toward and scored on: "
            "end the conversation at the last trained answer",
        )


@dataclass
class Renames:
    """Stage 01's `data_fields` and `data_roles`: a file whose keys or role names are renamed, read as the known
    layout they rename (LLaMA-Factory's columns/tags, axolotl's field mappings). `fields` renames keys at the top of
    a record and inside its turns ({"conversation": "messages", "speaker": "role", "text": "content"}); `roles`
    renames the values of a turn's role ({"customer": "user", "agent": "assistant"}). A name mapped onto one the
    record already has fails the row; a name no record has fails the file (a typo would otherwise map nothing)."""

    fields: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    require_all: bool = True  # every name must occur in the file (off for a second file, e.g. eval_path)
    seen: set[str] = field(default_factory=set)

    def apply(self, rec: Any) -> Any:
        if not (self.fields or self.roles) or not isinstance(rec, dict):
            return rec
        return self._keys(rec, "the row")

    def _keys(self, obj: dict[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            new = self.fields.get(k, k)
            if new in out or (new != k and new in obj):
                raise RowError("unknown_schema", f"data_fields renames {k!r} to {new!r}, and {where} has {new!r} too")
            self.seen |= {f"field {k!r}"} if new != k else set()
            if isinstance(v, list):
                v = [self._turn(t, f"{new}[{i}]") if isinstance(t, dict) else t for i, t in enumerate(v)]
            elif isinstance(v, dict):
                v = self._turn(v, new)
            out[new] = v
        return out

    def _turn(self, t: dict[str, Any], where: str) -> dict[str, Any]:
        t = self._keys(t, where)
        for key in ("role", "from"):
            if isinstance(t.get(key), str) and t[key] in self.roles:
                self.seen.add(f"role {t[key]!r}")
                t[key] = self.roles[t[key]]
        return t

    def unused(self) -> list[str]:
        """The mapped names no record had."""
        named = [f"field {k!r}" for k in self.fields] + [f"role {r!r}" for r in self.roles]
        return [n for n in named if n not in self.seen]
