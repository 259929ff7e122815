"""The chat playground's streaming: every contender answers, tokens arrive piece by piece, and the streamed text is
the greedy answer. (The widgets themselves are exercised in a real browser by tests/test_browser.py.)

Run: .venv/bin/python -m pytest tests/test_widgets.py
"""

from ftlab import models, scoring, widgets


def test_playground_streams_each_contender_and_ends_with_its_greedy_answer(tiny_run):
    run = tiny_run("play")
    tok = models.load_tokenizer("tiny-random")
    c = scoring.Contenders(models.load_model("tiny-random"), {"sft": str(run / "02_train_sft" / "adapter")})
    seen: dict[str, list[str]] = {}
    out = dict(widgets.answers(c, tok, "What does os.path.join do?", 12, c.names,
                               lambda name, text: seen.setdefault(name, []).append(text)))  # fmt: skip
    assert list(out) == ["base", "sft"]
    for name in out:
        assert len(seen[name]) >= 2 and seen[name][-1].strip() == out[name]  # streamed in pieces, growing
        with c.use(name):
            assert models.chat(c.model, tok, "What does os.path.join do?", max_new_tokens=12) == out[name]
    assert widgets.chat_playground(c, tok, "hi") is None  # headless under pytest: a note, no widgets
