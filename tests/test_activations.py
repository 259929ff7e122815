"""Selective gradient checkpointing (`gradient_checkpointing="auto"`): the planner keeps as many layers' activations
as fit, the kept layers are not recomputed in backward, and the losses do not change.

Run: .venv/bin/python -m pytest tests/test_activations.py
"""

import pytest

from ftlab import data, models, train
from ftlab.core import params, stages
from ftlab.core.paths import repo_root
from ftlab.hardware import memory
from ftlab.train import activations
from ftlab.train.preflight import preflight

GIB = 2**30
EIGHT_B = memory.Shape(
    hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128_256, tied=False
)
CFG = dict(quantization="4bit", batch_size=4, seq_len=2048, lora_r=16, optim="adamw_bnb_8bit", liger=True)


def test_auto_keeps_as_many_layers_as_fit_and_falls_back_to_full_checkpointing():
    full = memory.training_plan(EIGHT_B, 141 * GIB, True, "auto", **CFG)
    assert full.keep_layers == 0 and full.checkpointing
    assert not memory.training_plan(EIGHT_B, 141 * GIB, False, "auto", **CFG).checkpointing
    big = memory.training_plan(EIGHT_B, 141 * GIB, "auto", "auto", **CFG)  # an H200: everything fits
    assert big.keep_layers == 32 and not big.checkpointing and not big.offload
    card = memory.training_plan(EIGHT_B, 24 * GIB, "auto", "auto", **CFG)  # a 24 GB card: some layers
    assert 0 < card.keep_layers < 32 and card.checkpointing
    assert card.total <= 24 * GIB * memory.AUTO_SHARE
    one_more = memory.estimate(EIGHT_B, **CFG, keep_layers=card.keep_layers + 1)
    assert one_more.total > 24 * GIB * memory.AUTO_SHARE  # the most that fits, not fewer
    tight = memory.training_plan(EIGHT_B, full.total / 0.9, "auto", "auto", **CFG)
    assert tight.keep_layers == 0 and not tight.offload  # full checkpointing fits: no offloading
    offloaded = memory.estimate(EIGHT_B, **CFG, offload=True)
    small = memory.training_plan(EIGHT_B, offloaded.total / 0.94, "auto", "auto", **CFG)
    assert small.offload and small.keep_layers == 0  # only offloading fits: offloaded full checkpointing


def test_the_parameter_takes_true_false_or_auto():
    nb = repo_root() / "notebooks" / f"{stages.TRAIN_SFT}.ipynb"
    defaults = {d.name: d.default for d in params.notebook_parameters(nb)}
    assert defaults["gradient_checkpointing"] == "auto"  # the notebooks' default
    for v in (True, False, "auto"):
        assert (
            params.validate(stages.TRAIN_SFT, {**defaults, "gradient_checkpointing": v})["gradient_checkpointing"] == v
        )
    with pytest.raises(params.ParamError, match="gradient_checkpointing.*expected true, false or 'auto'"):
        params.validate(stages.TRAIN_SFT, {**defaults, "gradient_checkpointing": "sometimes"})


def _trainer(tmp_path, rows, name, keep):
    import torch
    from trl import SFTTrainer

    p = {
        "report_to": "none",
        "seed": 0,
        "epochs": 1.0,
        "max_steps": 3,
        "batch_size": 2,
        "grad_accum": 1,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "optim": "adamw_torch",
        "gradient_checkpointing": "auto",
        "eval_steps": 0,
        "save_steps": 1000,
        "logging_steps": 1,
        "max_length": 512,
        "liger": False,
        "packing": "off",
    }
    tok = models.load_tokenizer("tiny-random")
    torch.manual_seed(0)
    args = train.method_args(stages.method("sft"), tmp_path / name, p, "cpu")
    model = models.load_model("tiny-random")
    plan = memory.Plan(0, 0, 0, 0, 0, 0, 0, 0, 0, keep_layers=keep, layers=len(activations.decoder_layers(model)))
    cbs = activations.setup(args, plan)
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train.encode_dataset(tok, rows, p["max_length"]),
        processing_class=tok,
        peft_config=train.lora_config(8, 16, 0.0, "all-linear"),
        callbacks=cbs,
    )


def test_kept_layers_are_not_recomputed_and_the_losses_do_not_change(tmp_path):
    got, _, _ = data.load(repo_root() / "data" / "pydoc_qa" / "sft.jsonl")
    rows = [r.data for r in got[:12]]
    runs = {}
    for keep in (0, 1):
        trainer = _trainer(tmp_path, rows, f"keep{keep}", keep)
        layers = activations.decoder_layers(trainer.model)
        calls = [0] * len(layers)
        for i, layer in enumerate(layers):  # its MLP runs again in backward when the layer is recomputed
            layer.mlp.register_forward_pre_hook(lambda m, a, i=i, c=calls: c.__setitem__(i, c[i] + 1))
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        runs[keep] = (calls, losses, [bool(x.gradient_checkpointing) for x in layers])
    (calls0, loss0, flags0), (calls1, loss1, flags1) = runs[0], runs[1]
    pre = _trainer(tmp_path, rows, "pre", 1)  # the preflight's worst-case step uses the plan's split too
    preflight(pre, "advice")
    assert [bool(x.gradient_checkpointing) for x in activations.decoder_layers(pre.model)] == flags1
    assert all(flags0) and flags1 == [True] * (len(flags1) - 1) + [False]
    assert calls0 == [6] * len(calls0)  # 3 steps x (forward + recompute)
    assert calls1 == [6] * (len(calls1) - 1) + [3]  # the kept layer: forward only
    assert loss1 == pytest.approx(loss0, rel=1e-6)


def test_a_plan_that_keeps_every_layer_turns_checkpointing_off():
    args = train.method_args(
        stages.method("sft"),
        repo_root() / "outputs" / "unused",
        {**{k: v for k, v in CFG.items() if k in ("batch_size", "optim")}, **_MIN, "gradient_checkpointing": "auto"},
        "cpu",
    )
    assert args.gradient_checkpointing
    plan = memory.Plan(0, 0, 0, 0, 0, 0, 0, 0, 0, keep_layers=4, layers=4)
    assert activations.setup(args, plan) == [] and not args.gradient_checkpointing
    assert activations.describe(plan) == "gradient checkpointing: off (the activations of all 4 layers fit)"


_MIN = {
    "report_to": "none",
    "seed": 0,
    "epochs": 1.0,
    "max_steps": 1,
    "grad_accum": 1,
    "learning_rate": 1e-3,
    "warmup_steps": 0,
    "eval_steps": 0,
    "save_steps": 1000,
    "logging_steps": 1,
    "max_length": 64,
    "liger": False,
}
