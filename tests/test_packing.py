"""Token-budget batches (stage 02's `packing`): conversations packed whole into rows of up to max_length tokens
give the same loss as the same conversations in a padded batch, and no trained token is lost or added.

Run: .venv/bin/python -m pytest tests/test_packing.py
"""

import pytest

from ftlab import data, models, train
from ftlab.core import stages
from ftlab.core.paths import repo_root

P = {
    "report_to": "none",
    "seed": 0,
    "epochs": 1.0,
    "max_steps": 4,
    "batch_size": 2,
    "grad_accum": 1,
    "learning_rate": 1e-3,
    "warmup_steps": 0,
    "optim": "adamw_torch",
    "gradient_checkpointing": False,
    "eval_steps": 0,
    "save_steps": 1000,
    "logging_steps": 1,
    "max_length": 512,
    "liger": False,
}


@pytest.fixture(scope="module")
def rows():
    got, _, _ = data.load(repo_root() / "data" / "pydoc_qa" / "sft.jsonl")
    return [r.data for r in got[:30]]


def _trainer(tmp_path, rows, packing: str):
    import torch
    from trl import SFTTrainer

    tok = models.load_tokenizer("tiny-random")
    torch.manual_seed(0)
    args = train.method_args(stages.method("sft"), tmp_path / packing, {**P, "packing": packing}, "cpu")
    return SFTTrainer(
        model=models.load_model("tiny-random"),
        args=args,
        train_dataset=train.encode_dataset(tok, rows, P["max_length"]),
        processing_class=tok,
        peft_config=train.lora_config(8, 16, 0.0, "all-linear"),
    )


def _loss(trainer, batch) -> float:
    import torch

    trainer.model.eval()
    n = int((batch["labels"][:, 1:] != -100).sum())  # the tokens the shifted loss trains on
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch, num_items_in_batch=n))


def test_a_packed_row_has_the_loss_of_its_conversations_padded(tmp_path, rows):
    packed, padded = _trainer(tmp_path, rows, "on"), _trainer(tmp_path, rows, "off")
    assert packed.args.packing and packed.data_collator.padding_free and not padded.args.packing
    ds = packed.train_dataset
    assert max(len(x) for x in ds["input_ids"]) <= P["max_length"] and len(ds) < len(rows)  # bins hold several
    first = ds[0]
    assert len(first["seq_lengths"]) >= 2, first["seq_lengths"]  # a row of several whole conversations
    # the same conversations, cut back out of the packed row, as one padded batch
    convs, start = [], 0
    for n in first["seq_lengths"]:
        convs.append({k: first[k][start : start + n] for k in ("input_ids", "labels")})
        start += n
    lp = _loss(packed, packed.data_collator([first]))
    lq = _loss(padded, padded.data_collator(convs))
    assert lp == pytest.approx(lq, rel=1e-5), (lp, lq)  # one mean over every trained token, packed or padded


def test_packing_loses_and_adds_no_trained_token(tmp_path, rows):
    packed, padded = _trainer(tmp_path, rows, "on"), _trainer(tmp_path, rows, "off")
    trained = lambda ds: sorted(t for x in ds["labels"] for t in x if t != -100)  # noqa: E731
    assert trained(packed.train_dataset) == trained(padded.train_dataset)
    assert sum(sum(x) for x in packed.train_dataset["seq_lengths"]) == sum(
        len(x) for x in padded.train_dataset["input_ids"]
    )


def test_packed_training_steps_the_loss_down(tmp_path, rows):
    trainer = _trainer(tmp_path, rows, "on")
    train.quiet(trainer).train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0], losses


def test_auto_packs_only_under_a_kernel_that_keeps_conversations_apart():
    from ftlab.train import sft

    assert sft.packing("auto", "cuda", "varlen") and sft.packing("auto", "cuda", "flash_attention_2")
    assert not sft.packing("auto", "cuda", "sdpa") and not sft.packing("auto", "cpu", "sdpa")
    assert sft.packing("on", "cpu", "sdpa") and not sft.packing("off", "cuda", "varlen")
    p = {**P, "packing": "on", "attention": "auto"}
    assert sft.planned_length(p, "cpu", 100) == P["max_length"]  # full bins, whatever the longest conversation
    assert sft.planned_length({**p, "packing": "auto"}, "cpu", 100) == 100
