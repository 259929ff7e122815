"""The fused QLoRA linear (`ftlab.train.fused_lora`) on the tiny model in 4 bits on CPU: the same losses and
gradients as PEFT's forward (with the adapter's dropout too: the same masks), training with it moves the loss the same
way, and what it does not handle (adapters off, decoding) goes through PEFT unchanged. GPU speed: benchmarks/results/speed_h200_fused_lora.json."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from ftlab import models
from ftlab.train import fused_lora


def _model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    m = models.load_model("tiny-random", quantization="4bit", device="cpu", dtype=torch.float32)
    models.fix_cpu_4bit(m)
    m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear"))
    for n, p in m.named_parameters():
        if "lora_B" in n:  # B starts at zero; a non-zero B makes every gradient path carry something
            torch.nn.init.normal_(p, std=0.05)
    return m


@pytest.fixture(scope="module")
def ids():
    tok = models.load_tokenizer("tiny-random")
    return tok(["the fused path must give the same numbers as the plain one"] * 3, return_tensors="pt")["input_ids"]


@pytest.fixture
def calls(monkeypatch):
    """One entry per call of the fused function."""
    seen = []
    real = fused_lora.LoRA4bitLinear.apply
    monkeypatch.setattr(fused_lora.LoRA4bitLinear, "apply", lambda *a: seen.append(1) or real(*a))
    return seen


def _loss_and_grads(m, ids):
    m.zero_grad()
    out = m(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}


def test_fused_layers_give_the_same_loss_and_gradients_as_peft(ids, calls):
    m = _model()
    loss, grads = _loss_and_grads(m, ids)
    assert fused_lora.apply(m) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    loss_f, grads_f = _loss_and_grads(m, ids)
    assert len(calls) == 14  # every layer took the fused function, none fell back
    assert loss_f == pytest.approx(loss, rel=1e-6)
    for n, g in grads.items():
        assert g.abs().max() > 0, n
        assert (grads_f[n] - g).abs().max() <= 1e-5 * g.abs().max(), n
    assert fused_lora.remove(m) == 14 and _loss_and_grads(m, ids)[0] == loss


def test_training_with_fused_layers_follows_the_same_losses(ids):
    losses = {}
    for fused in (False, True):
        m = _model(seed=1)
        if fused:
            fused_lora.apply(m)
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        losses[fused] = []
        for _ in range(5):
            opt.zero_grad()
            loss = m(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            losses[fused].append(loss.item())
    assert losses[True][-1] < losses[True][0] - 0.05  # it trains
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_with_adapter_dropout_the_fused_path_draws_the_same_masks_and_gradients(ids, calls):
    # stage 02's default lora_dropout is 0.05: the dropout module runs in the same order as in PEFT's forward
    m = _model(dropout=0.3)
    m.train()
    torch.manual_seed(7)
    loss, grads = _loss_and_grads(m, ids)
    fused_lora.apply(m)
    torch.manual_seed(7)
    loss_f, grads_f = _loss_and_grads(m, ids)
    assert len(calls) == 14 and loss_f == pytest.approx(loss, rel=1e-6)
    for n, g in grads.items():
        assert (grads_f[n] - g).abs().max() <= 1e-5 * g.abs().max(), n
    torch.manual_seed(8)  # other masks: another loss, so the masks above really were drawn
    assert _loss_and_grads(m, ids)[0] != loss


def test_what_the_fused_path_does_not_handle_goes_through_peft(ids, calls):
    m = _model()
    fused_lora.apply(m)
    with torch.no_grad():
        with m.disable_adapter():  # DPO's reference pass: the base alone
            off = m(input_ids=ids).logits
        base = m.get_base_model()
        fused_lora.remove(m)
        with m.disable_adapter():
            assert torch.equal(base(input_ids=ids).logits, off)
        fused_lora.apply(m)
        assert calls == []
        m(input_ids=ids[:, :1])  # one token (decoding): bitsandbytes' own kernel
        assert calls == []
        m(input_ids=ids)
        assert len(calls) == 14


def test_the_parameter_fuses_4bit_layers_on_cuda_by_default_and_can_be_turned_off(monkeypatch):
    assert fused_lora.wanted("auto", "4bit", "cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert not fused_lora.wanted("auto", "4bit", "cuda") and fused_lora.wanted("on", "4bit", "cuda")  # unmeasured
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert not fused_lora.wanted("auto", "4bit", "cpu") and not fused_lora.wanted("auto", "none", "cuda")
    assert fused_lora.wanted("on", "4bit", "cpu") and not fused_lora.wanted("off", "4bit", "cuda")
    m = _model()
    assert fused_lora.setup(m, "auto", "4bit", "cpu") == 0 and fused_lora.remove(m) == 0
    assert fused_lora.setup(m, "on", "4bit", "cpu") == 14
