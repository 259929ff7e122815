"""Merge the adapter into a 16/32-bit copy of the base (never 4-bit: merging into quantized weights loses the
update) and prove the merge: greedy answers and logits of base+adapter against the merged model reloaded from disk.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ftlab.export.errors import ExportError
from ftlab.hardware import devices
from ftlab.models import generate
from ftlab.models.loading import safe_kwargs

Prompts = list[list[dict[str, str]]]


# bytes per weight of each GGUF type: the block formats' own, and for the K-quant mixes the published sizes of 8B
# Llama files (a few tensors stay at more bits; a tiny model's odd shapes fall back to larger types)
GGUF_BYTES_PER_WEIGHT = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q6_k": 210 / 256, "q5_k_m": 0.72, "q4_k_m": 0.61,
}  # fmt: skip


def parameter_count(folder: Path) -> int:
    """Weights in a safetensors checkpoint, from the files' headers (nothing is loaded)."""
    from safetensors import safe_open

    n = 0
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                n += math.prod(st.get_slice(k).get_shape())
    return n


def disk_room(base_folder: str | Path, dtype: Any, gguf_types: list[str]) -> dict[str, float]:
    """Bytes stage 04 writes, per file: the merged weights, every GGUF type asked for, and the converter's f16 while
    the quantizer reads it (when no 16/32-bit type is asked for); empty when the base has no safetensors."""
    import torch

    n = parameter_count(Path(base_folder))
    if not n:
        return {}
    tok = Path(base_folder) / "tokenizer.json"
    meta = tok.stat().st_size / 2 if tok.exists() else 0  # each GGUF also holds the vocabulary and merges
    parts = {f"merged {str(dtype).removeprefix('torch.')}": n * torch.empty((), dtype=dtype).element_size()}
    parts |= {f"{t} GGUF": n * GGUF_BYTES_PER_WEIGHT[t] + meta for t in gguf_types}
    if not any(t in ("f32", "f16", "bf16") for t in gguf_types):
        parts["f16 GGUF (the quantizer's input, deleted after)"] = n * 2.0 + meta
    return parts


def _size(b: float) -> str:
    return f"{b / 2**30:.1f} GiB" if b >= 2**30 / 10 else f"{b / 2**20:.0f} MB"


def check_disk_room(
    base_folder: str | Path, dtype: Any, gguf_types: list[str], out: Path, free_bytes: int | None = None
) -> str:
    """Before the merge: `disk_room` (plus 5%) against the free space in `out`. Not enough: ExportError with the
    figures and what to do, before anything is written; else the plan, as a line to print."""
    parts = disk_room(base_folder, dtype, gguf_types)
    if not parts:
        return f"disk: no safetensors in {base_folder}, room not estimated"
    need = sum(parts.values()) * 1.05
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free if free_bytes is None else free_bytes
    what = ", ".join(f"{k} {_size(v)}" for k, v in parts.items())
    line = f"disk: stage 04 needs about {_size(need)} in {out} ({what}); {_size(free)} free"
    if free < need:
        raise ExportError(
            f"{line}. Free some space, point FTLAB_OUTPUTS at a bigger disk, or ask for fewer gguf_types (each "
            f"type's file is listed above); nothing has been written yet."
        )
    return line


def merge(base_folder: str, adapter: Path, out: Path, dtype: Any) -> Path:
    """Load the base in 16/32-bit (never 4-bit: merging into quantized weights loses the update), merge the LoRA
    weights in, save safetensors + tokenizer (with the adapter's chat template) + generation config; atomically."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    model: Any, tokenizer: Any, prompts: Prompts, max_new_tokens: int, batch_size: int = 1
) -> list[list[int]]:
    """Greedy new-token ids per prompt, EOS included when reached; one prompt at a time by default (no padding
    effects: llama.cpp's checks compare against these unpadded)."""
    return [a.ids for a in generate.greedy(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size)]


def check_batch(device: str) -> int:
    """Prompts per generate call in the merge check: one on the CPU (unpadded: the exact checks the embedded model is
    tested with), 8 on a GPU, where one at a time took 230 s for 16 x 128 tokens at 8B (2026-12-02; the batched
    check is not yet measured there). Left padding leaves greedy answers unchanged in fp32 (a test)."""
    return 8 if device == "cuda" else 1


def verify_merge(
    base_folder: str,
    adapter: Path,
    merged: Path,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    max_new_tokens: int,
    dtype: Any,
) -> dict[str, Any]:
    """Greedy answers and logits of base+adapter (unmerged) against the merged model reloaded from disk. The two
    are loaded one after the other, so only one copy of the weights is in memory at a time, on `check_device`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    device = check_device(merged)
    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=dtype, **safe_kwargs()).to(device)
    ref = PeftModel.from_pretrained(base, str(adapter)).eval()
    ref_tokens = greedy_tokens(ref, tokenizer, prompts, max_new_tokens, check_batch(device))
    ref_logits = _logits(ref, tokenizer, prompts)
    del ref, base
    devices.release_memory()
    m = AutoModelForCausalLM.from_pretrained(str(merged), dtype=dtype, **safe_kwargs()).eval().to(device)
    tokens = greedy_tokens(m, tokenizer, prompts, max_new_tokens, check_batch(device))
    diff = max(float((a - b).abs().max()) for a, b in zip(ref_logits, _logits(m, tokenizer, prompts), strict=True))
    same = sum(a == b for a, b in zip(ref_tokens, tokens, strict=True))
    del m
    devices.release_memory()
    return {
        "device": device,
        "prompts": len(prompts),
        "greedy_equal": same,
        "agreement": same / max(1, len(prompts)),
        "max_logit_diff": diff,
        "answers": tokens,
    }


def check_device(merged: Path, margin: float = 1.25) -> str:
    """Where the merge check runs: the GPU when one has room for the 16-bit weights (x `margin`), else the CPU.
    The merge itself always runs on the CPU (it never needs more GPU memory than training did); its check generates
    greedy answers with two 16-bit models: on CPU cores ~2 minutes a prompt at 8B (extrapolated from 2 prompts x 16
    tokens in benchmarks/results/series_8b_h200.json), seconds on a GPU."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    need = sum(f.stat().st_size for f in Path(merged).glob("*.safetensors")) * margin
    return "cuda" if need < torch.cuda.mem_get_info()[0] else "cpu"


def _logits(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]]) -> list[Any]:
    import torch

    out = []
    for p in prompts:
        ids = tokenizer.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = {k: v.to(next(model.parameters()).device) for k, v in ids.items()}
        with torch.no_grad():
            out.append(model(**ids).logits.float().cpu())
    return out


def stopped_share(answers: list[list[int]], tokenizer: Any, max_new_tokens: int) -> float:
    """Share of answers that ended with an end-of-turn token before the bound."""
    stop = set(generate.eos_ids(tokenizer))
    return sum(bool(a) and a[-1] in stop and len(a) <= max_new_tokens for a in answers) / max(1, len(answers))


def check_merge(result: dict[str, Any], min_agreement: float) -> None:
    """Stop when the merged model answers differently from base+adapter on too many prompts."""
    if result["agreement"] < min_agreement:
        raise ExportError(
            f"the merged model agrees with base+adapter on {result['agreement']:.0%} of prompts (< min_agreement "
            f"{min_agreement}); max logit diff {result['max_logit_diff']:.3g}. Merge in float32 (merged_dtype)."
        )
