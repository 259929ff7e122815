"""Per-example NLL of reference answers, and the perplexity filter of stage 01.

Run: .venv/bin/python -m pytest tests/test_scoring.py
"""

import math

import torch

from ftlab import data, models
from ftlab.data import template_audit
from ftlab.evaluation import scoring
from ftlab.models import generate

CONV = [
    {"role": "user", "content": "What does `len` do?"},
    {"role": "assistant", "content": "Return the number of items."},
]


def test_answer_nll_equals_the_models_own_loss_on_assistant_tokens():
    tok, model = models.load_tokenizer("tiny-random"), models.load_model("tiny-random")
    e = template_audit.encode(tok, CONV)
    ids = torch.tensor([e.input_ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(e.input_ids, e.assistant_masks)]])
    with torch.no_grad():
        ref = model(input_ids=ids, labels=labels).loss.item()
    # batched with a longer row: padding must not change the number
    other = template_audit.encode(tok, CONV[:1] + [{"role": "assistant", "content": "A much longer answer " * 5}])
    got = scoring.answer_nll(model, [e, other], tok.pad_token_id, batch_size=2)
    assert math.isclose(got[0], ref, rel_tol=1e-4)


def test_perplexity_filter_rejects_low_perplexity_rows_with_reason():
    rows = [data.Row(i + 1, {"messages": CONV}) for i in range(3)]
    keep, rej = data.perplexity_filter(rows, [0.5, 2.0, float("nan")], min_perplexity=3.0)
    # exp(0.5)=1.65 < 3 rejected; exp(2.0)=7.4 kept; NaN (nothing scored) kept
    assert [r.line for r in keep] == [2, 3] and [(r.line, r.reason) for r in rej] == [(1, "low_perplexity")]


def test_generation_metrics_on_known_strings():
    assert scoring.exact_match("Return the  number of items.", "return the number of items")
    assert not scoring.exact_match("Return items.", "Return the number of items.")
    rl = scoring.rouge_l(["return the number of items", "something else"], ["Return the number of items.", "x y"])
    assert rl[0] == 1.0 and rl[1] == 0.0


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_more_data():
    import random

    rng = random.Random(0)
    small = [rng.gauss(1.0, 1.0) for _ in range(20)]
    big = [rng.gauss(1.0, 1.0) for _ in range(2000)]
    m, lo, hi = scoring.bootstrap_ci(small)
    M, LO, HI = scoring.bootstrap_ci(big)
    assert lo < m < hi and LO < 1.0 < HI and (HI - LO) < (hi - lo) / 5


def _score(nll, rl):
    return {"per_example": {"nll": nll, "rouge_l": rl}}


def test_compare_verdicts_improved_regressed_and_negligible():
    base = _score([3.0 + 0.01 * i for i in range(40)], [0.1] * 40)
    better = _score([2.0 + 0.01 * i for i in range(40)], [0.3 + 0.001 * i for i in range(40)])
    c = scoring.compare(base, better, ("base", "SFT"))
    assert c["verdict"].startswith("SFT improved on base") and c["nll_diff"] == -1.0 and not c["regressed"]
    worse = scoring.compare(better, base, ("SFT", "DPO"))
    assert worse["verdict"].startswith("DPO regressed vs SFT") and len(worse["regressed"]) == 2
    tiny = _score([3.0 + 0.01 * i + 0.005 for i in range(40)], [0.1] * 40)  # significant but below the tolerance
    assert scoring.compare(base, tiny)["verdict"].startswith("no material difference")


def test_generate_is_greedy_batched_and_reports_stopping():
    tok, model = models.load_tokenizer("tiny-random"), models.load_model("tiny-random")
    prompts = [[{"role": "user", "content": "What does `len` do?"}], [{"role": "user", "content": "Hi " * 20}]]
    one = generate.greedy(model, tok, prompts[:1], max_new_tokens=6)
    two = generate.greedy(model, tok, prompts, max_new_tokens=6, batch_size=2)
    assert one[0].text == two[0].text  # left padding does not change a greedy answer
    assert all(a.new_tokens <= 6 for a in two) and tok.padding_side == "right"  # restored
    assert all((a.stopped and a.new_tokens <= 6) or (not a.stopped and a.new_tokens == 6) for a in two)


def test_a_short_right_answer_counts_and_a_wrong_one_does_not():
    """The probe's answer match: whole words after case, accents and punctuation; number words read as digits."""
    m = scoring.answer_match
    assert m("Paris", "Paris.") and m("Paris", "The capital of France is Paris, on the Seine.")
    assert m("seven", "7") and m("7", "There are seven.") and m("12", "twelve") and m("Bogota", "Bogotá!")
    assert m("gray", "It is grey.", ["grey"]) and not m("gray", "It is grey.")
    assert not m("Rome", "Romeo") and not m("Paris", "Lyon.") and not m("4", "14") and not m("", "anything")
    assert m("carbon dioxide", "Plants take in Carbon-Dioxide.") and not m("carbon dioxide", "carbon monoxide")
    drop, lo, hi = scoring.paired_drop([True] * 8 + [False] * 2, [True] * 5 + [False] * 5)
    assert abs(drop - 0.3) < 1e-9 and lo <= 0.3 <= hi and lo >= 0
