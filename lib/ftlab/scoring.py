"""Scores of a model on reference answers: per-example NLL (nats/token) over the assistant tokens only.

Stage 01's optional perplexity filter, stage 03's regression guard and stage 05's evaluation all use these.
"""

from __future__ import annotations

import math
from typing import Any

from ftlab.audit import Encoded


def answer_nll(model: Any, encoded: list[Encoded], pad_id: int, batch_size: int = 8) -> list[float]:
    """Mean negative log-likelihood per trained (assistant) token of each example, in nats."""
    import torch

    out: list[float] = []
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, len(encoded), batch_size):
        batch = encoded[i : i + batch_size]
        n = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        att = torch.zeros((len(batch), n), dtype=torch.long)
        lab = torch.full((len(batch), n), -100, dtype=torch.long)
        for j, e in enumerate(batch):
            k = len(e.input_ids)
            ids[j, :k] = torch.tensor(e.input_ids)
            att[j, :k] = 1
            lab[j, :k] = torch.tensor([t if m else -100 for t, m in zip(e.input_ids, e.assistant_masks, strict=True)])
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = lab[:, 1:].to(device)
        tok_nll = -logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        valid = tgt != -100
        per = (tok_nll * valid).sum(1) / valid.sum(1).clamp(min=1)
        out += [float(x) if v else math.nan for x, v in zip(per.cpu(), valid.any(1).cpu(), strict=True)]
    return out
