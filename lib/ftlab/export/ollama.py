"""An Ollama Modelfile whose TEMPLATE is derived from the chat template and proved equal to it: the template is
split into per-turn blocks, written as a Go template, and rendered (by a small interpreter of the Go-template subset
it uses) for several conversations against the HF chat template. Stops are every end-of-turn token.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab.export.errors import ExportError

# the file the Modelfile points at: the smallest quantized GGUF that was written
MODELFILE_PREFERENCE = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16", "f32")


@dataclass
class TemplatePieces:
    """The chat template as per-turn text blocks: what surrounds each role's content, the default system text the
    template inserts when there is no system turn, and the generation prompt."""

    default_system: str
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str

    def render(self, messages: list[dict[str, str]]) -> str:
        """What the derived Ollama template produces for these messages (its exact semantics, in Python)."""
        system = [m["content"] for m in messages if m["role"] == "system"]
        out = self.system[0] + system[0] + self.system[1] if system else self.default_system
        for m in messages:
            if m["role"] != "system":
                pre, suf = getattr(self, m["role"])
                out += pre + m["content"] + suf
        return out + self.generation


def _render(tok: Any, msgs: list[dict[str, str]], gen: bool = False) -> str:
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def template_pieces(tokenizer: Any) -> TemplatePieces:
    """Derive per-turn blocks by rendering marker conversations, then prove them on several conversations."""
    S, U, A, U2 = "\x1fSYS\x1f", "\x1fUSR\x1f", "\x1fASST\x1f", "\x1fUSR2\x1f"
    u, a, u2, s = (
        {"role": "user", "content": U},
        {"role": "assistant", "content": A},
        {"role": "user", "content": U2},
        {"role": "system", "content": S},
    )
    r1, r2, r3 = _render(tokenizer, [u]), _render(tokenizer, [u, a]), _render(tokenizer, [u, a, u2])
    if not (r2.startswith(r1) and r3.startswith(r2)):
        raise ExportError(
            "the chat template does not render turn by turn (an earlier turn changes when a later one "
            "is added); write the Modelfile TEMPLATE by hand"
        )
    user = tuple(r3[len(r2) :].split(U2))
    asst = tuple(r2[len(r1) :].split(A))
    user_block = user[0] + U + user[1]
    default_system = r1[: -len(user_block)] if r1.endswith(user_block) else None
    rs = _render(tokenizer, [s, u])
    sys_block = rs[: -len(user_block)] if rs.endswith(user_block) else ""
    system = tuple(sys_block.split(S))
    generation = _render(tokenizer, [u], gen=True)[len(r1) :]
    if default_system is None or len(user) != 2 or len(asst) != 2 or len(system) != 2:
        raise ExportError(
            "could not split the chat template into per-turn blocks; write the Modelfile TEMPLATE by hand"
        )
    pieces = TemplatePieces(default_system, system, user, asst, generation)  # type: ignore[arg-type]
    probes = [
        [u],
        [s, u],
        [u, a, u2],
        [s, u, a, u2],
        [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!\nHow can I help?"},
            {"role": "user", "content": "What is `len`?"},
        ],
    ]
    for msgs in probes:
        if pieces.render(msgs) != _render(tokenizer, msgs, gen=True):
            raise ExportError(f"the derived template differs from the chat template on {msgs}; write TEMPLATE by hand")
    return pieces


def _go(text: str) -> str:
    if '"""' in text or "{{" in text:
        raise ExportError(f"template text {text!r} cannot be embedded in a Modelfile TEMPLATE")
    return text


def ollama_template(p: TemplatePieces) -> str:
    """A Go template for Ollama equivalent to `TemplatePieces.render`. Ollama passes the system prompt (the
    Modelfile's SYSTEM or the request's system message) as `.System` and the other turns as `.Messages`. No
    whitespace-trimming markers: the pieces' newlines are part of the format."""
    return (
        f"{{{{ if .System }}}}{_go(p.system[0])}{{{{ .System }}}}{_go(p.system[1])}"
        f"{{{{ else }}}}{_go(p.default_system)}{{{{ end }}}}"
        "{{ range .Messages }}"
        f'{{{{ if eq .Role "user" }}}}{_go(p.user[0])}{{{{ .Content }}}}{_go(p.user[1])}'
        f'{{{{ else if eq .Role "assistant" }}}}{_go(p.assistant[0])}{{{{ .Content }}}}{_go(p.assistant[1])}'
        "{{ end }}{{ end }}"
        f"{_go(p.generation)}"
    )


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_go_template(template: str, system: str, messages: list[dict[str, str]]) -> str:
    """Render the subset of Go's text/template that Ollama chat templates use (if/else if/else/end, range
    .Messages, eq, .System/.Role/.Content, {{- -}} trimming) the way Go does; anything else is an error."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if parts and parts[-1][0] == "trim_next":
            parts.pop()
            text = text.lstrip(" \t\r\n")
        parts.append(("text", text))
        parts.append(("act", m.group(2)))
        if m.group(3):
            parts.append(("trim_next", ""))
        pos = m.end()
    tail = template[pos:]
    if parts and parts[-1][0] == "trim_next":
        parts.pop()
        tail = tail.lstrip(" \t\r\n")
    parts.append(("text", tail))

    def cond(expr: str, dot: dict[str, str]) -> bool:
        if expr == ".System":
            return bool(system)
        m = re.fullmatch(r'eq \.Role "(\w+)"', expr)
        if m:
            return dot.get("role") == m.group(1)
        raise ExportError(f"unsupported template condition {expr!r}")

    def run(i: int, dot: dict[str, str], out: list[str], emit: bool) -> tuple[int, str]:
        """Execute from part i until an else/end at this level; returns (index, the stopping action)."""
        while i < len(parts):
            kind, val = parts[i]
            i += 1
            if kind == "text":
                if emit:
                    out.append(val)
            elif val in ("end", "else") or val.startswith("else if "):
                return i - 1, val
            elif val.startswith("if "):
                taken, expr = False, val[3:]
                while True:
                    hit = emit and not taken and cond(expr, dot)
                    i, stop = run(i, dot, out, hit)
                    taken |= hit
                    i += 1
                    if stop == "end":
                        break
                    expr = stop[8:] if stop.startswith("else if ") else ".__else__"
                    if expr == ".__else__":
                        i, stop = run(i, dot, out, emit and not taken)
                        i += 1
                        break
            elif val == "range .Messages":
                start = i
                items = messages if emit else [{}]
                for msg in items:
                    i, stop = run(start, msg, out, emit)
                if stop != "end":
                    raise ExportError("range without end")
                i += 1
            elif val in (".System", ".Content", ".Role"):
                if emit:
                    out.append(system if val == ".System" else dot.get(val[1:].lower(), ""))
            else:
                raise ExportError(f"unsupported template action {{{{ {val} }}}}")
        return i, "eof"

    out: list[str] = []
    run(0, {}, out, True)
    return "".join(out)


def check_ollama_template(template: str, tokenizer: Any, system_prompt: str = "") -> int:
    """Render the Modelfile TEMPLATE as Ollama would for several conversations and compare with the HF chat template.
    Returns the number of conversations checked; raises ExportError on the first difference."""
    convs = [
        [{"role": "user", "content": "What does `len` do?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!\nHow can I help?"},
            {"role": "user", "content": "What is `zip`?"},
        ],
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    ]
    for msgs in convs:
        system = next((m["content"] for m in msgs if m["role"] == "system"), system_prompt)
        hf_msgs = (
            msgs
            if any(m["role"] == "system" for m in msgs) or not system_prompt
            else [{"role": "system", "content": system_prompt}, *msgs]
        )
        want = _render(tokenizer, hf_msgs, gen=True)
        got = render_go_template(template, system, [m for m in msgs if m["role"] != "system"])
        if got != want:
            raise ExportError(f"the Modelfile TEMPLATE renders {got!r} but the chat template renders {want!r}")
    return len(convs)


def stop_strings(tokenizer: Any, model_folder: Path) -> list[str]:
    """Every end-of-turn token as text: the tokenizer's EOS and the generation config's EOS ids."""
    gen = json.loads((Path(model_folder) / "generation_config.json").read_text())
    ids = gen.get("eos_token_id")
    ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
    out = [tokenizer.eos_token] + [tokenizer.convert_ids_to_tokens(i) for i in ids]
    return sorted({s for s in out if s})


def modelfile(gguf_name: str, pieces: TemplatePieces, stops: list[str], num_ctx: int, system: str = "") -> str:
    lines = [
        "# Ollama Modelfile. Import: see ollama_commands in the export stage's summary.json",
        f"FROM ./gguf/{gguf_name}",
        f'TEMPLATE """{ollama_template(pieces)}"""',
    ]
    if system:
        lines.append(f'SYSTEM """{_go(system)}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [
        f"PARAMETER num_ctx {num_ctx}",
        "PARAMETER temperature 0.2",
        "PARAMETER top_p 0.9",
        "PARAMETER repeat_penalty 1.05",
    ]
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict[str, Any]:
    """FROM, TEMPLATE and PARAMETER lines of a Modelfile (for checks)."""
    out: dict[str, Any] = {"parameters": {}}
    t0 = text.index('TEMPLATE """') + len('TEMPLATE """')
    out["template"] = text[t0 : text.index('"""', t0)]
    for line in text.splitlines():
        if line.startswith("FROM "):
            out["from"] = line[5:].strip()
        elif line.startswith("PARAMETER "):
            _, k, v = line.split(" ", 2)
            out["parameters"].setdefault(k, []).append(v.strip('"'))
    return out


def promote_command(export_dir: Path) -> str:
    """The command that tags the exported version `latest` (stage 05 prints it once the tuned model passed)."""
    return json.loads((Path(export_dir) / "summary.json").read_text())["ollama_commands"]["promote_after_stage_05"]


def ollama_commands(name: str, version: str, stage_dir: Path) -> dict[str, str]:
    """Import a version tag; promote it to `latest` only once stage 05 passed. Honours OLLAMA_HOST."""
    host = os.environ.get("OLLAMA_HOST", "")
    env = f"OLLAMA_HOST={host} " if host else ""
    return {
        "import": f"cd {stage_dir} && {env}ollama create {name}:{version} -f Modelfile",
        "try": f"{env}ollama run {name}:{version} 'What does `len` do?'",
        "promote_after_stage_05": f"{env}ollama cp {name}:{version} {name}:latest",
    }


def preferred_gguf(files: dict[str, Path]) -> Path:
    """The GGUF the Modelfile points at: the smallest quantized type that was written."""
    return files[next(t for t in MODELFILE_PREFERENCE if t in files)]


def write_modelfile(
    folder: Path, files: dict[str, Path], tokenizer: Any, merged: Path, num_ctx: int, system_prompt: str = ""
) -> tuple[Path, list[str], int]:
    """Modelfile in `folder` for the preferred GGUF; its TEMPLATE rendered as Ollama would on several conversations
    must equal the chat template and its stops every end-of-turn token. Returns (path, stops, conversations checked)."""
    pieces, stops = template_pieces(tokenizer), stop_strings(tokenizer, merged)
    path = Path(folder) / "Modelfile"
    path.write_text(modelfile(preferred_gguf(files).name, pieces, stops, num_ctx, system_prompt))
    mf = parse_modelfile(path.read_text())
    n_conv = check_ollama_template(mf["template"], tokenizer, system_prompt)
    if set(mf["parameters"]["stop"]) != set(stops) or not (Path(folder) / mf["from"]).exists():
        raise ExportError(f"the Modelfile's stops {mf['parameters']['stop']} or FROM {mf['from']} came out wrong")
    return path, stops, n_conv
