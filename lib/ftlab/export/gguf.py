"""GGUF files with llama.cpp's own converter and quantizer, and their checks in llama.cpp itself: the embedded
template renders the same prompt, the prompt tokenizes to the same ids, greedy answers agree with the HF merged
model, and answers stop.

The toolchain: `llama-cpp-python` (pinned) gives the quantizer and the runtime; its source distribution carries
llama.cpp's reference converter `convert_hf_to_gguf.py`, which no wheel ships. `toolchain()` fetches that source once
(pip download, the same pinned version) and keeps the converter in the model cache.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ftlab.core.params import GGUF_CONVERTER_TYPES as CONVERTER_TYPES
from ftlab.core.params import GGUF_TYPES
from ftlab.core.paths import cache_dir
from ftlab.export.errors import ExportError, timed


def llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise ExportError(
            "llama-cpp-python is not installed; `make setup` installs it from requirements.lock "
            "(built from source, ~8 minutes once)"
        ) from None


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
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={ver}",
                "-d",
                tmp,
            ],
            capture_output=True,
            text=True,
        )
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if r.returncode or not sdists:
            raise ExportError(
                f"could not download the llama-cpp-python {ver} source for its GGUF converter: "
                f"{r.stderr.strip()[-500:]}"
            )
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
    cmd = [
        sys.executable,
        str(toolchain() / "convert_hf_to_gguf.py"),
        str(merged),
        "--outfile",
        str(tmp),
        "--outtype",
        outtype,
    ]
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
        free = f"{shutil.disk_usage(out.parent).free / 2**30:.1f} GiB free in {out.parent}"
        raise ExportError(f"quantizing {src.name} to {qtype} failed (llama_model_quantize returned {rc}; {free})")
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
    prompts_checked: int = 0  # prompts compared before `budget_s` ran out (all of them without a budget)


def verify_gguf(
    path: Path,
    qtype: str,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    hf_answers: list[list[int]],
    max_new_tokens: int,
    n_ctx: int = 1024,
    budget_s: float = 0.0,
) -> GgufCheck:
    """Load the GGUF in llama.cpp and compare with the HF merged model: template, tokens, greedy answers, stopping.
    With `budget_s` > 0 the prompts are checked until that many seconds are spent, also mid-answer (that prompt is
    then not counted; at least 1 prompt is): llama.cpp's CPU build generates an 8B f16 model at a few tokens/s, and
    at 8B, 2 prompts of 128 tokens per file took the three files' checks past 3.5 minutes (2026-12-02)."""
    import time

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
    tmpl_ok, tok_ok, same, frac, stops, samples, n = True, True, 0, 0.0, 0, [], 0
    start = time.time()

    def spent() -> bool:  # past the budget with at least one prompt compared in full
        return bool(budget_s) and n >= 1 and time.time() - start > budget_s

    for p, ref in zip(prompts, hf_answers, strict=True):
        if spent():
            break
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
            if len(got) >= max_new_tokens or spent():
                break
        if spent() and not stopped and len(got) < max_new_tokens:
            break  # the budget ran out mid-answer: this prompt is not counted
        n += 1
        same += got == ref
        k = next((i for i, (a, b) in enumerate(zip(got, ref, strict=False)) if a != b), min(len(got), len(ref)))
        frac += k / max(1, len(ref))
        stops += stopped
        if len(samples) < 5:
            samples.append(
                {
                    "prompt": p[-1]["content"],
                    "hf": tokenizer.decode(ref, skip_special_tokens=True),
                    "gguf": tokenizer.decode(got, skip_special_tokens=True),
                    "stopped": stopped,
                }
            )
    checked, n = n, max(1, n)
    del llm
    return GgufCheck(
        str(path),
        qtype,
        round(path.stat().st_size / 2**20, 1),
        bool(tmpl_ok),
        bool(tok_ok),
        same / n,
        round(frac / n, 4),
        stops / n,
        max_new_tokens,
        samples,
        checked,
    )


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


def record_checks(
    folder: Path,
    merge: dict[str, Any],
    hf_stopped: float,
    checks: list[dict[str, Any]],
    min_agreement: float,
    max_new_tokens: int,
) -> list[str]:
    """checks.json with every check and its verdict; stops on a problem, prints and returns the warnings."""
    from ftlab.core.paths import atomic_write_json

    problems, warnings = judge(checks, hf_stopped, min_agreement, max_new_tokens)
    for w in warnings:
        print("WARNING:", w)
    record = {
        "merge": merge,
        "hf_stopped_share": hf_stopped,
        "gguf": checks,
        "problems": problems,
        "warnings": warnings,
    }
    atomic_write_json(Path(folder) / "checks.json", record)
    if problems:
        raise ExportError("GGUF verification failed: " + "; ".join(problems))
    return warnings


def verify_all(
    files: dict[str, Path],
    tokenizer: Any,
    prompts: list[Any],
    hf_answers: list[list[int]],
    max_new_tokens: int,
    n_ctx: int,
    times: dict[str, float],
    budget_s: float = 0.0,
) -> list[dict[str, Any]]:
    """`verify_gguf` on every file (timed into `times`, each within `budget_s` when > 0), printed one line each."""
    checks = []
    for t, path in files.items():
        args = (path, t, tokenizer, prompts, hf_answers, max_new_tokens, n_ctx, budget_s)
        c, times[f"verify_{t}_s"] = timed(verify_gguf, *args)
        checks.append(asdict(c))
    for c in checks:
        print(
            f"{c['qtype']:>7}: {c['size_mb']:7.1f} MB  template {'same' if c['template_matches'] else 'DIFFERENT'}"
            f"  tokens {'same' if c['tokens_match'] else 'DIFFERENT'}  greedy agreement {c['agreement']:.0%}"
            f" (tokens {c['token_agreement']:.0%})  stopped {c['stopped_share']:.0%}"
            f"  on {c['prompts_checked']}/{len(prompts)} prompts"
        )
    return checks
