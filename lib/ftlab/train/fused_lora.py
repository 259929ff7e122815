"""Fused QLoRA linear layers: one autograd function per 4-bit LoRA layer instead of PEFT's chain of modules.

PEFT computes `base(x).clone() + lora_B(lora_A(dropout(x))) * scaling`: besides the base matmul that is a clone, a
scale and an add over the full (tokens x out_features) output, and in backward a scale and an add over the input
gradient. Here the LoRA update goes into the base matmul's output in place (`addmm_`: the GEMM accumulates into it),
and without dropout the backward computes the input gradient of the base and of the adapter into one buffer. The same
math as PEFT, in the compute dtype of the 4-bit layer (bf16 on a GPU), so losses agree to bf16 rounding
(tests/test_fused_lora.py). Measured on an H200 at 8B (benchmarks/results/speed_h200_fused_lora.json, lora_dropout
0): +8% tokens/s with every layer recomputed, +4% without recomputation, the same or lower peak memory.

Plain LoRA on bitsandbytes 4-bit layers with one active adapter, with or without dropout, and no DoRA or other variant
and no LoRA bias takes the fused path; everything else (adapters disabled, e.g. DPO's reference pass, merged weights,
single-token decoding) runs PEFT's own forward unchanged. `apply(model)` patches the layers of a PEFT model and says
how many it fused; `remove(model)` undoes it.
"""

from __future__ import annotations

import types

import torch

from ftlab.hardware import parallel

MIN_TOKENS = 16  # below this (token-by-token decoding) bitsandbytes' own 4-bit kernels are the faster path


def _dequantize(weight) -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(weight.data.view(-1, 1), weight.quant_state)


class LoRA4bitLinear(torch.autograd.Function):
    """y = x W^T + s (d(x) A^T) B^T with W in 4 bits (dequantized when used, never stored), A and B trainable and
    d(x) the adapter's dropout of x (x itself without dropout, then the two input gradients go into one buffer)."""

    @staticmethod
    def forward(ctx, x, x_lora, weight, bias, lora_a, lora_b, scale: float):
        dt = x.dtype
        x2, xl2 = x.reshape(-1, x.shape[-1]), x_lora.reshape(-1, x.shape[-1])
        a, b = lora_a.to(dt), lora_b.to(dt)
        xa = xl2 @ a.t()
        out = x2 @ _dequantize(weight).to(dt).t()
        out.addmm_(xa, b.t(), alpha=scale)
        if bias is not None:
            out += bias.to(dt)
        ctx.save_for_backward(xl2, xa, lora_a, lora_b)
        ctx.weight, ctx.scale, ctx.in_shape, ctx.has_bias = weight, scale, x.shape, bias is not None
        ctx.same = x_lora is x
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        xl2, xa, lora_a, lora_b = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(xl2.dtype)
        a, b = lora_a.to(g.dtype), lora_b.to(g.dtype)
        gxa = (g @ b).mul_(ctx.scale)  # d loss / d (d(x) A^T), tokens x r
        grad_b = (g.t() @ xa).mul_(ctx.scale).to(lora_b.dtype) if ctx.needs_input_grad[5] else None
        grad_a = (gxa.t() @ xl2).to(lora_a.dtype) if ctx.needs_input_grad[4] else None
        grad_x = grad_xl = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ _dequantize(ctx.weight).to(g.dtype)
            if ctx.same:  # no dropout: the adapter's input gradient lands in the same buffer
                grad_x.addmm_(gxa, a)
            grad_x = grad_x.view(ctx.in_shape)
        if ctx.needs_input_grad[1] and not ctx.same:
            grad_xl = (gxa @ a).view(ctx.in_shape)
        grad_bias = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_x, grad_xl, None, grad_bias, grad_a, grad_b, None


def _fusable(layer, x: torch.Tensor, kwargs: dict) -> str | None:
    """The one active adapter's name when this call can take the fused path, else None."""
    if layer.disable_adapters or layer.merged or kwargs or x.numel() < MIN_TOKENS * x.shape[-1]:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(name):
        return None
    state = getattr(layer.base_layer.weight, "quant_state", None)
    if state is None or getattr(state, "packing_format_for_cpu", False):  # CPU inference repacking: bnb's path
        return None
    return name


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = None if args else _fusable(self, x, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer
    xc = x.to(getattr(base, "compute_dtype", None) or x.dtype)
    xl = self.lora_dropout[name](xc)  # the same dropout module, in the same order, as PEFT's forward
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    return LoRA4bitLinear.apply(xc, xl, base.weight, base.bias, a, b, float(self.scaling[name])).to(x.dtype)


def _layers(model):
    from peft.tuners.lora.bnb import Linear4bit

    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def wanted(setting: str, quantization: str, device: str) -> bool:
    """The `fused_lora` parameter: "auto" fuses 4-bit LoRA layers on CUDA (one process or DDP; not under FSDP, where
    it has not been measured), "on" wherever there are any (CPU too), "off" keeps PEFT's forward."""
    if setting != "auto":
        return setting == "on"
    return quantization == "4bit" and device == "cuda" and not parallel.under_fsdp()[0]


def setup(model, setting: str, quantization: str, device: str) -> int:
    """Stage 02/03: fuse the model's 4-bit LoRA layers when `wanted`; prints and returns how many were fused."""
    if not wanted(setting, quantization, device):
        return 0
    n = apply(model)
    print(f"fused QLoRA: {n} 4-bit LoRA layers run as one function each (fused_lora={setting!r})")
    return n


def apply(model) -> int:
    """Route every bitsandbytes 4-bit LoRA layer of `model` through the fused function; returns how many."""
    layers = _layers(model)
    for m in layers:
        m.forward = types.MethodType(_forward, m)
    return len(layers)


def remove(model) -> int:
    layers = [m for m in _layers(model) if "forward" in vars(m)]
    for m in layers:
        del m.forward
    return len(layers)
