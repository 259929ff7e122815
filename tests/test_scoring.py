"""Per-example NLL of reference answers, and the perplexity filter of stage 01.

Run: .venv/bin/python -m pytest tests/test_scoring.py
"""

import math

import torch

from ftlab import audit, data, models, scoring

CONV = [
    {"role": "user", "content": "What does `len` do?"},
    {"role": "assistant", "content": "Return the number of items."},
]


def test_answer_nll_equals_the_models_own_loss_on_assistant_tokens():
    tok, model = models.load_tokenizer("tiny-random"), models.load_model("tiny-random")
    e = audit.encode(tok, CONV)
    ids = torch.tensor([e.input_ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(e.input_ids, e.assistant_masks)]])
    with torch.no_grad():
        ref = model(input_ids=ids, labels=labels).loss.item()
    # batched with a longer row: padding must not change the number
    other = audit.encode(tok, CONV[:1] + [{"role": "assistant", "content": "A much longer answer " * 5}])
    got = scoring.answer_nll(model, [e, other], tok.pad_token_id, batch_size=2)
    assert math.isclose(got[0], ref, rel_tol=1e-4)


def test_perplexity_filter_rejects_low_perplexity_rows_with_reason():
    rows = [data.Row(i + 1, {"messages": CONV}) for i in range(3)]
    keep, rej = data.perplexity_filter(rows, [0.5, 2.0, float("nan")], min_perplexity=3.0)
    # exp(0.5)=1.65 < 3 rejected; exp(2.0)=7.4 kept; NaN (nothing scored) kept
    assert [r.line for r in keep] == [2, 3] and [(r.line, r.reason) for r in rej] == [(1, "low_perplexity")]
