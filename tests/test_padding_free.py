"""Padding-free batching trains the same model as padded batching: the same per-step losses on rows of mixed
lengths, including when the batch shape changes from step to step (the fast path must never be wrong on the loss).

Run: .venv/bin/python -m pytest tests/test_padding_free.py
"""

import pytest

from ftlab import data, models, train
from ftlab.core import stages
from ftlab.core.paths import repo_root


def _losses(tmp_path, padding_free: bool, rows) -> list[float]:
    from trl import SFTTrainer

    tok = models.load_tokenizer("tiny-random")
    p = {
        "report_to": "none",
        "seed": 0,
        "epochs": 1.0,
        "max_steps": 6,
        "batch_size": 4,
        "grad_accum": 1,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "optim": "adamw_torch",
        "gradient_checkpointing": True,
        "eval_steps": 0,
        "save_steps": 1000,
        "logging_steps": 1,
        "max_length": 256,
        "liger": False,
        "padding_free": "on" if padding_free else "off",
    }
    model = models.load_model("tiny-random")
    trainer = SFTTrainer(
        model=model,
        args=train.method_args(stages.method("sft"), tmp_path / str(padding_free), p, "cpu"),
        train_dataset=train.encode_dataset(tok, rows, 256),
        processing_class=tok,
        peft_config=train.lora_config(8, 16, 0.0, "all-linear"),
    )
    train.quiet(trainer)
    assert trainer.data_collator.padding_free is padding_free  # one flattened row per batch, position_ids restart
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_padding_free_losses_match_padded_batches(tmp_path):
    rows, _, _ = data.load(repo_root() / "data" / "pydoc_qa" / "sft.jsonl")
    # lengths from a few dozen to a few hundred tokens: most of a padded batch would be padding
    mixed = [r.data for r in rows[:24]]
    padded, free = _losses(tmp_path, False, mixed), _losses(tmp_path, True, mixed)
    assert len(padded) == len(free) == 6
    assert free == pytest.approx(padded, rel=0.01), (padded, free)
    assert padded[-1] < padded[0]  # it trains


def test_our_path_matches_the_tutorial_recipe_losses_for_10_steps(tmp_path):
    """Recipe B (4-bit, `prepare_model_for_kbit_training`, LoRA all-linear, padded batches) against stage 02's path
    (`load_model` + `sft_args` + `lora_config`, padding-free), same seed and rows, on CPU: the per-step losses agree
    within 1% for 10 steps while the batch shape changes every step. On a GPU: benchmarks/results/speed_h100.json."""
    import peft
    import torch
    from trl import SFTTrainer

    rows, _, _ = data.load(repo_root() / "data" / "pydoc_qa" / "sft.jsonl")
    tok = models.load_tokenizer("tiny-random")
    ds = train.encode_dataset(tok, [r.data for r in rows[:40]], 256)
    p = {
        "report_to": "none",
        "seed": 0,
        "epochs": 1.0,
        "max_steps": 10,
        "batch_size": 4,
        "grad_accum": 1,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "optim": "adamw_torch",
        "gradient_checkpointing": True,
        "eval_steps": 0,
        "save_steps": 1000,
        "logging_steps": 1,
        "max_length": 256,
        "liger": True,
    }
    lora = train.lora_config(8, 16, 0.0, "all-linear")
    losses = {}
    for recipe in ("recipe_b", "ours"):
        model = models.load_model("tiny-random", quantization="4bit", device="cpu")
        if recipe == "recipe_b":
            model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
            torch.manual_seed(0)
            model = peft.get_peft_model(model, lora)
            args = train.method_args(stages.method("sft"), tmp_path / recipe, {**p, "padding_free": "off"}, "cpu")
            trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        else:
            torch.manual_seed(0)
            args = train.method_args(stages.method("sft"), tmp_path / recipe, {**p, "padding_free": "on"}, "cpu")
            trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
        train.quiet(trainer).train()
        losses[recipe] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses["ours"]) == len(losses["recipe_b"]) == 10
    # the issue asks for 1%; a random-weight model's loss moves little in 10 steps, so hold it to 1e-4, where a 3x
    # learning rate or a changed mask would already show (measured agreement: ~1e-6)
    assert losses["ours"] == pytest.approx(losses["recipe_b"], rel=1e-4), losses
    assert losses["ours"][-1] < losses["ours"][0]
