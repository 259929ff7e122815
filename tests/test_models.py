"""Model names, the local cache, loading and chat.  Run: .venv/bin/python -m pytest tests/test_models.py"""

import shutil

import pytest
import torch

from ftlab import models
from ftlab.hardware import devices


def test_tiny_model_is_small_and_shares_the_tokenizer():
    path = models.resolve_model("tiny-random")
    m = models.load_model("tiny-random")
    assert sum(p.numel() for p in m.parameters()) < 5_000_000  # a few MB, for tests only
    tok = models.load_tokenizer("tiny-random")
    assert tok.eos_token == "<|im_end|>" and m.config.vocab_size == len(tok)
    assert "SOURCE.txt" in {p.name for p in __import__("pathlib").Path(path).iterdir()}


def test_default_model_folder_is_complete_safetensors():
    path = models.install_default()
    names = {p.name for p in path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    } <= names
    assert not any(n.endswith((".bin", ".pt", ".gguf")) for n in names)


def test_default_tokenizer_chat_template_and_distinct_pad():
    tok = models.load_tokenizer("smollm2-135m")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nhi<|im_end|>" in text
    # pad must differ from eos, or a collator that masks padding would never train the end-of-turn token
    assert tok.pad_token_id != tok.eos_token_id


def test_embedded_model_answers_coherently_and_stops():
    tok = models.load_tokenizer("smollm2-135m")
    m = models.load_model("smollm2-135m")
    answer = models.chat(m, tok, "What is the capital of France?", max_new_tokens=48)
    assert "Paris" in answer
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "Say hello."}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = m.generate(**enc, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out[0, -1].item() == tok.eos_token_id  # it ends its turn by itself, well before the bound


def test_local_folder_loads_through_from_pretrained(tmp_path):
    copy = tmp_path / "my-model"
    shutil.copytree(models.resolve_model("tiny-random"), copy)
    assert models.resolve_model(str(copy)) == str(copy.resolve())
    m = models.load_model(str(copy))
    assert m.config.num_hidden_layers == 2


def test_bad_names_give_clear_errors(tmp_path):
    with pytest.raises(models.ModelNotFound, match="no config.json"):
        models.resolve_model(str(tmp_path))
    with pytest.raises(models.ModelNotFound, match="looks like a path"):
        models.resolve_model("./no/such/folder")


def test_hub_id_goes_to_from_pretrained_and_fails_offline():
    assert models.resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    with pytest.raises(OSError):  # the real hub code path; HF_HUB_OFFLINE=1 keeps it from downloading
        models.load_tokenizer("no-such-org/no-such-model-ftlab")


def test_quantization_auto_and_4bit_on_cpu_trains_every_lora_layer():
    from peft import LoraConfig, get_peft_model

    assert devices.resolve_quantization("auto", "cpu") == "none"
    assert devices.resolve_quantization("auto", "cuda") == "4bit"
    m = models.load_model("tiny-random", quantization="4bit", device="cpu")
    tok = models.load_tokenizer("tiny-random")
    models.chat(m, tok, "hi", max_new_tokens=2)  # generate() is what used to break the 4-bit backward on CPU
    m = get_peft_model(m, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    models.fix_cpu_4bit(m)
    ids = tok("hello world, this is a test", return_tensors="pt")["input_ids"]
    m(input_ids=ids, labels=ids).loss.backward()
    # lora_B starts at zero, so it is the half that must get a gradient on the first step (lora_A's is zero
    # until B moves). Without fix_cpu_4bit, on AVX512-BF16 CPUs only 4 of these 14 layers got one.
    lora_b = [(n, p) for n, p in m.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    no_grad = [n for n, p in lora_b if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for _, p in lora_b)
