"""Attention kernels for training: which one `attention="auto"` picks, and torch's own varlen kernel as a
transformers attention function.

Packed rows (several conversations laid end to end, `position_ids` restarting at each) need a kernel that runs each
conversation as its own sequence (cumulative sequence lengths, "cu_seqlens"): under sdpa they get a dense
block-diagonal mask whose cost grows with the square of the packed length. flash-attn is such a kernel but needs a
wheel built for the exact torch and CUDA; `torch.nn.attention.varlen.varlen_attn` (torch >= 2.10, CUDA) is the same
flash kernel inside torch itself, with a backward. `VARLEN` registers it with transformers under one name, on first
use (nothing happens at import).
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

VARLEN = "varlen"  # torch's varlen flash attention, registered with transformers under this name
FLASH = ("flash_attention_2", "flash_attention_3")
# kernels that run packed rows as separate sequences: packing and padding-free cost nothing extra under them
PACKED_KERNELS = (VARLEN, *FLASH)


def torch_varlen() -> Any:
    """`torch.nn.attention.varlen.varlen_attn`, or None where this torch lacks it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def resolve(setting: str, device: str) -> str:
    """The kernel for `setting`: 'auto' is flash_attention_2 where flash-attn is installed on CUDA, else torch's varlen
    kernel on CUDA, else sdpa (a CPU, or a torch without varlen_attn); any other name (params.ATTENTION, or one
    transformers knows such as flex_attention) is taken as given."""
    if setting == VARLEN and torch_varlen() is None:
        raise ValueError(
            "attention='varlen' needs torch >= 2.10 (torch.nn.attention.varlen); this torch lacks it: "
            "upgrade torch, or use attention='sdpa'."
        )
    if setting != "auto":
        return setting
    if device != "cuda":
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return VARLEN if torch_varlen() is not None else "sdpa"


def register() -> str:
    """Register torch's varlen kernel with transformers as `VARLEN` (idempotent); returns the name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import flash_attention_mask

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, flash_attention_mask)  # a 2D padding mask or None, as flash-attn gets
    return VARLEN


def cu_seqlens(position_ids: Any) -> Any:
    """Cumulative sequence lengths [0, l1, l1+l2, ...] (int32) of one packed row, from its restarting positions."""
    import torch

    pos = position_ids.reshape(-1)
    starts = torch.nonzero(pos == 0).reshape(-1)
    total = torch.tensor([pos.numel()], device=pos.device)
    return torch.cat([starts, total]).to(torch.int32)


def _gqa_kwargs(kernel: Any) -> dict[str, Any]:
    return {"enable_gqa": True} if "enable_gqa" in inspect.signature(kernel).parameters else {}


def varlen_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention-function contract (query [B, H, S, D] in, [B, S, H, D] out) over `varlen_attn`.
    Sequences come from the collator's `cu_seq_lens_q` (TRL's padding-free collator computes them on the CPU), else
    from restarting `position_ids` (one packed row), else from a 2D padding mask (rows gathered without their
    padding), else one sequence per row. Causal, no dropout (training LoRA uses none in attention)."""
    import torch

    kernel = torch_varlen()
    b, h, s, d = query.shape
    if key.shape[2] != s:
        raise RuntimeError(
            f"attention='{VARLEN}' trains and evaluates on whole sequences; it got {s} queries for {key.shape[2]} "
            "keys (generation with a KV cache): load the model with attention='sdpa' to generate."
        )
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, S, H, D]
    gqa = _gqa_kwargs(kernel)
    if not gqa and k.shape[2] != h:  # torch 2.11's varlen_attn has no enable_gqa: repeat the K/V heads
        k, v = (t.repeat_interleave(h // t.shape[2], dim=2) for t in (k, v))
    keep = None
    cu = kwargs.get("cu_seq_lens_q")
    pos = kwargs.get("position_ids")
    if cu is not None:
        cu, longest = cu.to(q.device, torch.int32), int(kwargs.get("max_length_q") or int(cu.diff().max()))
    elif b == 1 and pos is not None and attention_mask is None and int((pos == 0).sum()) > 1:
        cu = cu_seqlens(pos.to(q.device))
        longest = int(cu.diff().max())
    elif attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        keep = attention_mask.reshape(-1).nonzero().reshape(-1)
        lens = attention_mask.sum(dim=1, dtype=torch.int32)
        cu = torch.nn.functional.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))
        longest = int(lens.max())
    else:
        cu = torch.arange(0, (b + 1) * s, s, device=q.device, dtype=torch.int32)
        longest = s
    flat = [t.reshape(b * s, *t.shape[2:]) for t in (q, k, v)]
    if keep is not None:
        flat = [t.index_select(0, keep) for t in flat]
    out = kernel(*flat, cu, cu, longest, longest, scale=scaling, window_size=(-1, 0), **gqa)
    if keep is not None:
        full = out.new_zeros(b * s, *out.shape[1:])
        out = full.index_copy(0, keep, out)
    return out.reshape(b, s, h, d), None
