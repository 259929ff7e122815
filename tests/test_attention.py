"""The attention kernel choice and torch's varlen kernel as a transformers attention function.

`varlen_attn` runs on CUDA only; here a reference kernel with its signature (per-sequence causal sdpa) stands in, so
what this file checks is our wiring: sequence boundaries from the collator, from restarting position_ids or from a
padding mask, the layout transforms and grouped K/V heads, on the tiny model, against plain sdpa. The real kernel is
checked against sdpa on a GPU by benchmarks/speed.py (`varlen_check` in its results).

Run: .venv/bin/python -m pytest tests/test_attention.py
"""

import pytest
import torch
import torch.nn.functional as F

from ftlab import models
from ftlab.models import attention


def _reference(gqa: bool):
    def ref(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), **kw):
        assert window_size == (-1, 0) and torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
        assert max_q == int(cu_q.diff().max())
        assert ("enable_gqa" in kw) == gqa
        assert gqa or k.shape[1] == q.shape[1]  # without enable_gqa the K/V heads must come repeated
        out = []
        for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
            qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=gqa)
            out.append(o.transpose(0, 1))
        return torch.cat(out)

    if gqa:
        return lambda q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False: ref(
            q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size, enable_gqa=enable_gqa
        )
    return ref


@pytest.fixture(scope="module")
def model():
    m = models.load_model("tiny-random", device="cpu").eval()
    assert m.config.num_key_value_heads < m.config.num_attention_heads, "the check wants grouped K/V heads"
    return m


def _logits(model, impl: str, **batch):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(**batch, use_cache=False).logits


@pytest.mark.parametrize("gqa", [False, True], ids=["torch-2.11-repeat-heads", "enable_gqa"])
def test_varlen_function_matches_sdpa_on_packed_and_padded_rows(model, monkeypatch, gqa):
    monkeypatch.setattr(attention, "torch_varlen", lambda: _reference(gqa))
    attention.register()
    g = torch.Generator().manual_seed(0)
    lens = [7, 19, 4, 12]
    ids = torch.randint(5, 1000, (1, sum(lens)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    try:
        # one packed row: sdpa sees restarting positions and builds a block-diagonal mask; varlen takes the bounds
        want = _logits(model, "sdpa", input_ids=ids, position_ids=pos)
        assert (want[0, 7] - _logits(model, "sdpa", input_ids=ids).squeeze(0)[7]).abs().max() > 1e-3  # bounds matter
        got = _logits(model, attention.VARLEN, input_ids=ids, position_ids=pos)
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        # the padding-free collator's own boundaries (TRL computes them on the CPU)
        cu = attention.cu_seqlens(pos)
        bounds = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lens), max_length_k=max(lens))
        got = _logits(model, attention.VARLEN, input_ids=ids, position_ids=pos, **bounds)
        assert torch.allclose(got, want, atol=1e-5)
        # a right-padded batch: rows are gathered without their padding, the padding positions come back as zeros
        rows = torch.randint(5, 1000, (3, 10), generator=g)
        mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4, [1] * 3 + [0] * 7])
        want = _logits(model, "sdpa", input_ids=rows, attention_mask=mask)
        got = _logits(model, attention.VARLEN, input_ids=rows, attention_mask=mask)
        keep = mask.bool()
        assert torch.allclose(got[keep], want[keep], atol=1e-5), (got[keep] - want[keep]).abs().max()
    finally:
        model.set_attn_implementation("sdpa")


def test_varlen_refuses_cached_generation_with_a_clear_message(model, monkeypatch):
    monkeypatch.setattr(attention, "torch_varlen", lambda: _reference(True))
    attention.register()
    q = torch.zeros(1, 4, 1, 16)
    k = torch.zeros(1, 2, 5, 16)
    with pytest.raises(RuntimeError, match="attention='sdpa' to generate"):
        attention.varlen_attention(model.model.layers[0].self_attn, q, k, k, None)


def test_auto_picks_the_kernel_by_what_is_there(monkeypatch):
    assert attention.resolve("auto", "cpu") == "sdpa"
    assert attention.resolve("sdpa", "cuda") == "sdpa" and attention.resolve("eager", "cpu") == "eager"
    monkeypatch.setattr(attention, "torch_varlen", lambda: _reference(True))
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)
    assert attention.resolve("auto", "cuda") == attention.VARLEN
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    assert attention.resolve("auto", "cuda") == "flash_attention_2"
    monkeypatch.setattr(attention, "torch_varlen", lambda: None)
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)
    assert attention.resolve("auto", "cuda") == "sdpa"
    with pytest.raises(ValueError, match="torch >= 2.10"):
        attention.resolve("varlen", "cuda")


def test_cu_seqlens_from_restarting_positions():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert attention.cu_seqlens(pos).tolist() == [0, 3, 5, 9]
    assert attention.cu_seqlens(pos).dtype == torch.int32
