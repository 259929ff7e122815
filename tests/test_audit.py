"""The loss mask derived from the chat template, and the audit that catches broken templates.

Run: .venv/bin/python -m pytest tests/test_audit.py
"""

import copy

import pytest

from ftlab import models
from ftlab.data import template_audit

CONV = [
    {"role": "user", "content": "What does `len` do?"},
    {"role": "assistant", "content": "Return the number of items."},
    {"role": "user", "content": "And `abs`?"},
    {"role": "assistant", "content": "Return the absolute value."},
]


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer("tiny-random")


def test_exactly_the_assistant_turns_and_their_eos_are_trained(tok):
    e = template_audit.encode(tok, CONV)
    trained = tok.decode([t for t, m in zip(e.input_ids, e.assistant_masks) if m])
    assert trained == "Return the number of items.<|im_end|>Return the absolute value.<|im_end|>"
    assert template_audit.marked(tok, e).count("«") == 2


def test_truncation_is_reported(tok):
    e = template_audit.encode(tok, CONV, max_length=10)
    assert e.truncated and len(e.input_ids) == 10 and e.length > 10


def test_good_template_passes_the_audit(tok):
    rep = template_audit.audit(tok, [template_audit.encode(tok, CONV)], vocab_size=len(tok))
    assert rep["ok"] and rep["eos_trained_pct"] == 100.0 and 0 < rep["trained_pct"] < 50


def test_audit_catches_a_template_that_masks_everything(tok):
    bad = copy.deepcopy(tok)
    # renders only the user turns (a broken copy-paste): the assistant's words never appear, nothing is trained
    bad.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>user\n{{ m['content'] }}"
        "<|im_end|>\n{% endif %}{% endfor %}"
    )
    rep = template_audit.audit(bad, [template_audit.encode(bad, CONV)])
    assert not rep["ok"] and any("masks every token" in p for p in rep["problems"])


def test_audit_catches_a_template_that_never_trains_eos(tok):
    bad = copy.deepcopy(tok)
    # assistant turns end with a newline only: no <|im_end|>, so the model would never learn to stop
    bad.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{{ m['content'] }}\n{% else %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    rep = template_audit.audit(bad, [template_audit.encode(bad, CONV)])
    assert not rep["ok"] and any("never trained" in p for p in rep["problems"])


def test_audit_flags_pad_equal_eos_and_small_embedding(tok):
    bad = copy.deepcopy(tok)
    bad.pad_token = bad.eos_token
    rep = template_audit.audit(bad, [template_audit.encode(bad, CONV)], vocab_size=len(tok) - 5)
    assert any("pad token == EOS" in w for w in rep["warnings"])
    assert any("resize the embeddings" in p for p in rep["problems"])


def test_template_that_does_not_render_incrementally_is_refused(tok):
    bad = copy.deepcopy(tok)
    bad.chat_template = "{{ messages | length }} turns{% for m in messages %} {{ m['content'] }}{% endfor %}"
    with pytest.raises(template_audit.TemplateError, match="turn by turn"):
        template_audit.encode(bad, CONV)


def test_length_stats_suggest_a_multiple_of_64():
    s = template_audit.length_stats(list(range(1, 101)), max_length=64)
    assert s["over_max_length"] == 36 and s["suggested_max_length"] == 128 and s["p50"] == 50


def test_stage01s_compact_encodings_read_like_the_lists_in_a_fifth_of_the_memory(tok):
    """Stage 01 keeps every row's encoding (data.tokenize_rows): compact arrays, the same figures everywhere."""
    import sys

    from ftlab import data

    rows = [data.Row(i + 1, {"messages": CONV}) for i in range(3)]
    _, encoded, _ = data.tokenize_rows(rows, tok, 512)
    lists = [template_audit.encode(tok, CONV) for _ in rows]
    assert template_audit.audit(tok, encoded, len(tok)) == template_audit.audit(tok, lists, len(tok))
    assert template_audit.marked(tok, encoded[0]) == template_audit.marked(tok, lists[0])
    assert (
        list(encoded[0].input_ids) == lists[0].input_ids
        and list(encoded[0].assistant_masks) == lists[0].assistant_masks
    )

    def size(e):  # the containers and the int objects a list points to
        held = sys.getsizeof(e.input_ids) + sys.getsizeof(e.assistant_masks)
        return held + (sum(sys.getsizeof(t) for t in e.input_ids) if isinstance(e.input_ids, list) else 0)

    assert size(encoded[0]) * 5 < size(lists[0])
