"""Merge an adapter into a 16/32-bit base, convert to GGUF with llama.cpp's own converter, quantize, verify in
llama.cpp, and write an Ollama Modelfile whose template is derived from (and checked against) the chat template.

The GGUF toolchain: `llama-cpp-python` (pinned) gives the quantizer and the runtime; its source distribution
carries llama.cpp's reference converter `convert_hf_to_gguf.py`, which no wheel ships. `toolchain()` fetches that
source once (pip download, the same pinned version) and keeps the converter in the model cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab.params import GGUF_TYPES
from ftlab.paths import cache_dir

CONVERTER_TYPES = ("f32", "f16", "bf16")  # written by the converter itself; the rest by the quantizer


class ExportError(RuntimeError):
    """An export step failed or a verification did not hold; the message says which and what to do."""


# ---- merge -----------------------------------------------------------------------------------------------------


def choose_adapter(run_stage_dir: Any, adapter: str) -> tuple[str, Path]:
    """`auto`: the DPO adapter when stage 03 produced one, else the SFT adapter. Returns (which, folder)."""
    dpo = Path(run_stage_dir("03_train_dpo")) / "adapter"
    sft = Path(run_stage_dir("02_train_sft")) / "adapter"
    have = {"dpo": (dpo / "adapter_config.json").exists(), "sft": (sft / "adapter_config.json").exists()}
    pick = ("dpo" if have["dpo"] else "sft") if adapter == "auto" else adapter
    if not have.get(pick):
        stage = "03_train_dpo" if pick == "dpo" else "02_train_sft"
        raise FileNotFoundError(f"adapter={adapter!r} needs {dpo if pick == 'dpo' else sft}, which is missing; run "
                                f"notebooks/{stage}.ipynb first (found: {[k for k, v in have.items() if v] or 'none'}).")  # fmt: skip
    return pick, dpo if pick == "dpo" else sft


def merge(base_folder: str, adapter: Path, out: Path, dtype: Any) -> Path:
    """Load the base in 16/32-bit (never 4-bit: merging into quantized weights loses the update), merge the LoRA
    weights in, save safetensors + tokenizer (with the adapter's chat template) + generation config; atomically."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftlab.models import safe_kwargs

    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=dtype, **safe_kwargs())
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tok = AutoTokenizer.from_pretrained(str(adapter))  # saved with the adapter: the template training used
    gen = merged.generation_config
    eos = sorted(
        {tok.eos_token_id, *([gen.eos_token_id] if isinstance(gen.eos_token_id, int) else gen.eos_token_id or [])}
    )
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    gen.pad_token_id = tok.pad_token_id
    merged.config.eos_token_id = tok.eos_token_id
    merged.config.pad_token_id = tok.pad_token_id
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    merged.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def greedy_tokens(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int
) -> list[list[int]]:
    """Greedy new-token ids per prompt (one at a time: no padding effects), EOS included when reached."""
    import torch

    from ftlab.scoring import eos_ids

    stop, out = eos_ids(tokenizer, model), []
    for p in prompts:
        ids = tokenizer.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            g = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                               pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        out.append(g[0, ids["input_ids"].shape[1] :].tolist())
    return out


# ---- GGUF ------------------------------------------------------------------------------------------------------


def llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise ExportError("llama-cpp-python is not installed; `make setup` installs it from requirements.lock "
                          "(built from source, ~8 minutes once)") from None  # fmt: skip


def toolchain(download: bool = True) -> Path:
    """llama.cpp's converter (script + its `conversion` and `gguf-py` packages) from the pinned sdist, cached."""
    ver = llama_cpp_version()
    final = cache_dir() / f"llama.cpp-{ver}"
    if (final / "convert_hf_to_gguf.py").exists():
        return final
    if not download:
        raise ExportError(f"the GGUF converter is not in {final}; run `python -m ftlab setup` to fetch it")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={ver}", "-d", tmp], capture_output=True, text=True)  # fmt: skip
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if r.returncode or not sdists:
            raise ExportError(f"could not download the llama-cpp-python {ver} source for its GGUF converter: "
                              f"{r.stderr.strip()[-500:]}")  # fmt: skip
        prefix = f"llama_cpp_python-{ver}/vendor/llama.cpp/"
        keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
        stage = Path(tmp) / "out"
        with tarfile.open(sdists[0]) as tar:
            for m in tar.getmembers():
                rel = m.name[len(prefix) :] if m.name.startswith(prefix) else None
                if rel and rel.startswith(keep) and m.isfile():
                    m.name = rel
                    tar.extract(m, stage, filter="data")
        if not (stage / "convert_hf_to_gguf.py").exists():
            raise ExportError(f"convert_hf_to_gguf.py not found in {sdists[0].name}")
        if not final.exists():
            os.replace(stage, final)
    return final


def convert(merged: Path, out: Path, outtype: str) -> Path:
    """HF folder -> GGUF with llama.cpp's converter, written under a temporary name and renamed when complete."""
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    cmd = [sys.executable, str(toolchain() / "convert_hf_to_gguf.py"), str(merged), "--outfile", str(tmp),
           "--outtype", outtype]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise ExportError(f"GGUF conversion failed ({' '.join(cmd)}):\n{r.stderr.strip()[-2000:]}")
    os.replace(tmp, out)
    return out


@contextlib.contextmanager
def native_output_to(log: Path) -> Any:
    """Send llama.cpp's output to a log file instead of the notebook: what C code prints on the stdout/stderr file
    descriptors, and what llama-cpp-python's log callback prints through Python's sys.stderr."""
    import ctypes

    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a", encoding="utf-8", errors="replace") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield log
        finally:
            f.flush()
            ctypes.CDLL(None).fflush(None)  # C stdio buffers still hold output: into the log, not the notebook
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def quantize(src: Path, out: Path, qtype: str, threads: int | None = None) -> Path:
    """llama.cpp's quantizer (through llama-cpp-python); the result appears under its final name only when done."""
    import llama_cpp

    if qtype not in GGUF_TYPES or qtype in CONVERTER_TYPES:
        raise ExportError(
            f"quantize() takes one of {[t for t in GGUF_TYPES if t not in CONVERTER_TYPES]}, got {qtype!r}"
        )
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or os.cpu_count() or 1
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise ExportError(f"quantizing {src.name} to {qtype} failed (llama_model_quantize returned {rc})")
    os.replace(tmp, out)
    return out


@dataclass
class GgufCheck:
    path: str
    qtype: str
    size_mb: float
    template_matches: bool  # the GGUF's embedded template renders the HF template's prompt text
    tokens_match: bool  # llama.cpp tokenizes that prompt to the same ids as the HF tokenizer
    agreement: float  # share of prompts whose greedy answer equals the HF merged model's
    token_agreement: float  # mean share of the HF answer's tokens reproduced before the first difference
    stopped_share: float  # share of answers that ended with an end-of-generation token within the bound
    max_tokens: int
    samples: list[dict[str, Any]]


def verify_gguf(
    path: Path, qtype: str, tokenizer: Any, prompts: list[list[dict[str, str]]], hf_answers: list[list[int]],
    max_new_tokens: int, n_ctx: int = 1024,
) -> GgufCheck:  # fmt: skip
    """Load the GGUF in llama.cpp and compare with the HF merged model: template, tokens, greedy answers, stopping."""
    import llama_cpp
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=os.cpu_count() or 1, seed=0, verbose=False)
    meta = llm.metadata
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    tmpl = meta.get("tokenizer.chat_template", "")
    eos_tok = llm.detokenize([llm.token_eos()], special=True).decode(errors="replace")
    bos_tok = llm.detokenize([llm.token_bos()], special=True).decode(errors="replace") if llm.token_bos() >= 0 else ""
    fmt = Jinja2ChatFormatter(tmpl, eos_token=eos_tok, bos_token=bos_tok) if tmpl else None
    tmpl_ok, tok_ok, same, frac, stops, samples = True, True, 0, 0.0, 0, []
    for p, ref in zip(prompts, hf_answers, strict=True):
        text = tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        tmpl_ok &= fmt is not None and fmt(messages=p).prompt == text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        tok_ok &= llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        got: list[int] = []
        stopped = False
        llm.reset()
        for t in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            got.append(t)
            if llama_cpp.llama_vocab_is_eog(vocab, t):  # what llama.cpp itself stops on (EOS/EOT of the GGUF)
                stopped = True
                break
            if len(got) >= max_new_tokens:
                break
        same += got == ref
        k = next((i for i, (a, b) in enumerate(zip(got, ref, strict=False)) if a != b), min(len(got), len(ref)))
        frac += k / max(1, len(ref))
        stops += stopped
        if len(samples) < 5:
            samples.append({"prompt": p[-1]["content"], "hf": tokenizer.decode(ref, skip_special_tokens=True),
                            "gguf": tokenizer.decode(got, skip_special_tokens=True), "stopped": stopped})  # fmt: skip
    n = max(1, len(prompts))
    del llm
    return GgufCheck(str(path), qtype, round(path.stat().st_size / 2**20, 1), bool(tmpl_ok), bool(tok_ok),
                     same / n, round(frac / n, 4), stops / n, max_new_tokens, samples)  # fmt: skip


# ---- Ollama ----------------------------------------------------------------------------------------------------


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
    u, a, u2, s = ({"role": "user", "content": U}, {"role": "assistant", "content": A},
                   {"role": "user", "content": U2}, {"role": "system", "content": S})  # fmt: skip
    r1, r2, r3 = _render(tokenizer, [u]), _render(tokenizer, [u, a]), _render(tokenizer, [u, a, u2])
    if not (r2.startswith(r1) and r3.startswith(r2)):
        raise ExportError("the chat template does not render turn by turn (an earlier turn changes when a later one "
                          "is added); write the Modelfile TEMPLATE by hand")  # fmt: skip
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
    probes = [[u], [s, u], [u, a, u2], [s, u, a, u2],
              [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!\nHow can I help?"},
               {"role": "user", "content": "What is `len`?"}]]  # fmt: skip
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
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!\nHow can I help?"},
         {"role": "user", "content": "What is `zip`?"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": "c"}],
    ]  # fmt: skip
    for msgs in convs:
        system = next((m["content"] for m in msgs if m["role"] == "system"), system_prompt)
        hf_msgs = msgs if any(m["role"] == "system" for m in msgs) or not system_prompt else [
            {"role": "system", "content": system_prompt}, *msgs]  # fmt: skip
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
    lines = ["# Ollama Modelfile. Import: see ollama_commands in 04_merge_export/summary.json", f"FROM ./gguf/{gguf_name}",
             f'TEMPLATE """{ollama_template(pieces)}"""']  # fmt: skip
    if system:
        lines.append(f'SYSTEM """{_go(system)}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER num_ctx {num_ctx}", "PARAMETER temperature 0.2", "PARAMETER top_p 0.9",
              "PARAMETER repeat_penalty 1.05"]  # fmt: skip
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


def ollama_commands(name: str, version: str, stage_dir: Path) -> dict[str, str]:
    """Import a version tag; promote it to `latest` only once stage 05 passed. Honours OLLAMA_HOST."""
    host = os.environ.get("OLLAMA_HOST", "")
    env = f"OLLAMA_HOST={host} " if host else ""
    return {"import": f"cd {stage_dir} && {env}ollama create {name}:{version} -f Modelfile",
            "try": f"{env}ollama run {name}:{version} 'What does `len` do?'",
            "promote_after_stage_05": f"{env}ollama cp {name}:{version} {name}:latest"}  # fmt: skip


def timed(fn: Any, *a: Any, **kw: Any) -> tuple[Any, float]:
    t = time.time()
    r = fn(*a, **kw)
    return r, round(time.time() - t, 2)


def folder_mb(p: Path) -> float:
    p = Path(p)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 1)


def merge_dtype(name: str, device: str) -> Any:
    """`auto`: bfloat16 on a GPU (float16 where it lacks bf16), float32 on a CPU."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def stopped_share(answers: list[list[int]], tokenizer: Any, max_new_tokens: int) -> float:
    """Share of answers that ended with an end-of-turn token before the bound."""
    from ftlab.scoring import eos_ids

    stop = set(eos_ids(tokenizer))
    return sum(bool(a) and a[-1] in stop and len(a) <= max_new_tokens for a in answers) / max(1, len(answers))


def build_ggufs(merged: Path, folder: Path, name: str, types: list[str]) -> tuple[dict[str, Path], dict[str, float]]:
    """The first 16/32-bit type (f16 when none is asked) from the converter, every other type from it; timed."""
    folder.mkdir(parents=True, exist_ok=True)
    first = next((t for t in types if t in CONVERTER_TYPES), "f16")
    files, times = {first: folder / f"{name}-{first}.gguf"}, {}
    _, times[f"convert_{first}_s"] = timed(convert, merged, files[first], first)
    for t in types:
        if t == first:
            continue
        files[t] = folder / f"{name}-{t}.gguf"
        if t in CONVERTER_TYPES:
            _, times[f"convert_{t}_s"] = timed(convert, merged, files[t], t)
        else:
            _, times[f"quantize_{t}_s"] = timed(quantize, files[first], files[t], t)
    if first not in types:  # only needed as the quantizer's input
        files.pop(first).unlink()
    return files, times


def judge(
    checks: list[dict[str, Any]], hf_stopped: float, min_agreement: float, max_new_tokens: int
) -> tuple[list[str], list[str]]:
    """Problems (stop the stage) and warnings from the GGUF checks. A wrong template, different tokens, or a 16/32-bit
    file that stops less often than HF or disagrees with it are problems; a quantized file that stops less is a warning."""
    problems, warnings = [], []
    for c in checks:
        q, lossless = c["qtype"], c["qtype"] in CONVERTER_TYPES
        if not c["template_matches"]:
            problems.append(f"{q}: the GGUF's embedded chat template renders a different prompt than the HF template")
        if not c["tokens_match"]:
            problems.append(f"{q}: llama.cpp tokenizes the prompt differently from the HF tokenizer")
        if c["stopped_share"] < hf_stopped:
            msg = f"{q}: {c['stopped_share']:.0%} of answers stopped within {max_new_tokens} tokens (HF: {hf_stopped:.0%})"
            (problems if lossless else warnings).append(
                msg + ("" if lossless else "; prefer a larger type for this model")
            )
        if lossless and c["agreement"] < min_agreement:
            problems.append(f"{q}: greedy agreement with HF {c['agreement']:.0%} < min_agreement {min_agreement:.0%}")
    return problems, warnings


def compute_record(run_name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Device (GPU name and driver when there is one) and the training stages' energy and cost, for the card."""
    from ftlab.report import compute_rows

    return {"device": manifest.get("device"), "economics": {r["stage"]: r for r in compute_rows(run_name)}}


# ---- merge verification ------------------------------------------------------------------------------------------


def verify_merge(
    base_folder: str, adapter: Path, merged: Path, tokenizer: Any, prompts: list[list[dict[str, str]]],
    max_new_tokens: int, dtype: Any,
) -> dict[str, Any]:  # fmt: skip
    """Greedy answers and logits of base+adapter (unmerged) against the merged model reloaded from disk. The two
    are loaded one after the other, so only one copy of the weights is in memory at a time."""
    import gc

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftlab.models import safe_kwargs

    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=dtype, **safe_kwargs())
    ref = PeftModel.from_pretrained(base, str(adapter)).eval()
    ref_tokens = greedy_tokens(ref, tokenizer, prompts, max_new_tokens)
    ref_logits = _logits(ref, tokenizer, prompts)
    del ref, base
    gc.collect()
    m = AutoModelForCausalLM.from_pretrained(str(merged), dtype=dtype, **safe_kwargs()).eval()
    tokens = greedy_tokens(m, tokenizer, prompts, max_new_tokens)
    diff = max(float((a - b).abs().max()) for a, b in zip(ref_logits, _logits(m, tokenizer, prompts), strict=True))
    same = sum(a == b for a, b in zip(ref_tokens, tokens, strict=True))
    return {"prompts": len(prompts), "greedy_equal": same, "agreement": same / max(1, len(prompts)),
            "max_logit_diff": diff, "answers": tokens}  # fmt: skip


def _logits(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]]) -> list[Any]:
    import torch

    out = []
    for p in prompts:
        ids = tokenizer.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out.append(model(**ids).logits.float().cpu())
    return out


# ---- model card ------------------------------------------------------------------------------------------------


def model_card(manifest: dict[str, Any], export_summary: dict[str, Any], metrics: dict[str, Any] | None = None) -> str:
    """MODEL_CARD.md in the Hugging Face format: YAML metadata, then what it is, how it was made, how to run it."""
    import yaml

    st = manifest.get("stages", {})
    p01 = st.get("01_prepare_data", {}).get("params", {})
    inputs = {k: v for s in st.values() for k, v in s.get("inputs", {}).items()}
    meta: dict[str, Any] = {
        "base_model": export_summary["base_model_id"], "license": export_summary["license"],
        "library_name": "transformers", "pipeline_tag": "text-generation",
        "tags": ["ftlab", "lora", "sft"] + (["dpo"] if export_summary["adapter"] == "dpo" else []) + ["gguf"],
        "datasets": [p for p in (p01.get("data_path"), p01.get("prefs_path"), p01.get("eval_path")) if p],
    }  # fmt: skip
    params = {k: st.get(k, {}).get("params", {}) for k in ("01_prepare_data", "02_train_sft", "03_train_dpo")}
    meta["ftlab"] = {"input_sha256": dict(sorted(inputs.items())), "parameters": {k: v for k, v in params.items() if v},
                     "adapter": export_summary["adapter"], "git_commit": manifest.get("git", {}).get("commit")}  # fmt: skip
    if metrics:
        meta["model-index"] = [{"name": export_summary["name"], "results": [{
            "task": {"type": "text-generation"}, "dataset": {"name": "held-out split", "type": "custom"},
            "metrics": [{"type": k, "value": round(v, 4)} for k, v in metrics.items() if isinstance(v, (int, float))],
        }]}]  # fmt: skip
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {export_summary['name']}", "",
             f"A LoRA fine-tune of `{export_summary['base_model_id']}` made with Fine-Tuning Lab: supervised "
             f"fine-tuning{' then DPO' if export_summary['adapter'] == 'dpo' else ''} on the data below, merged into "
             f"the base and exported to safetensors and GGUF ({', '.join(export_summary['gguf_types'])}).", "",
             "## Intended use", "",
             "Answers in the style and domain of the training data (see the datasets). Not evaluated for safety, "
             "factuality outside that domain, or any high-stakes use. Check its answers.", "",
             "## Training data (sensitivity)", "",
             "**Warning:** a fine-tuned model can reproduce its training data verbatim. If the data holds personal, "
             "confidential or licensed text, treat this model and its GGUF files with the same care as the data, "
             "and do not publish them where the data may not go.", "",
             "| input | sha256 |", "|---|---|", *[f"| {k} | `{v}` |" for k, v in sorted(inputs.items())], "",
             "## How it was made", "", "```yaml", yaml.safe_dump(params, sort_keys=True).strip(), "```", "",
             f"Git commit: `{manifest.get('git', {}).get('commit', 'unknown')}`; versions: "
             + ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items() if v) + ".", "",
             "## Evaluation", ""]  # fmt: skip
    if metrics:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v:.4g} |" for k, v in metrics.items()
                                                     if isinstance(v, (int, float))], ""]  # fmt: skip
        lines += [f"Verdict: {metrics.get('verdict', '')}", ""] if "verdict" in metrics else []
    else:
        lines += ["Not evaluated yet: run `notebooks/05_evaluate.ipynb` (it rewrites this card with its metrics).", ""]
    lines += ["## Export checks (llama.cpp)", "", "| file | MB | template | greedy agreement with HF | stops |",
              "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {Path(c['path']).name} | {c['size_mb']} | {'same' if c['template_matches'] else 'DIFFERENT'} | "
              f"{c['agreement']:.0%} | {c['stopped_share']:.0%} |" for c in export_summary["gguf"]]  # fmt: skip
    comp = export_summary.get("compute") or {}
    if comp:
        lines += ["", "## Compute", "", f"Device: {comp.get('device')}.", ""]
        lines += [f"- {k}: {v['energy_wh']:.1f} Wh ({v['energy_source']}), energy cost {v['cost_energy']:.3f} at "
                  f"{v['price_per_kwh']}/kWh" for k, v in comp.get("economics", {}).items()]  # fmt: skip
    lines += ["", "## Run it", "", "```bash", *export_summary["ollama_commands"].values(), "```", ""]
    return "\n".join(lines)
