"""The chat playground's streaming: every contender answers, tokens arrive piece by piece, and the streamed text is
the greedy answer. (The widgets themselves are exercised in a real browser by tests/test_browser.py.)

Run: .venv/bin/python -m pytest tests/test_widgets.py
"""

from ftlab import models
from ftlab.evaluation import scoring
from ftlab.views import widgets


def test_playground_streams_each_contender_and_ends_with_its_greedy_answer(tiny_run):
    run = tiny_run("play")
    tok = models.load_tokenizer("tiny-random")
    c = scoring.Contenders(models.load_model("tiny-random"), {"sft": str(run / "02_train_sft" / "adapter")})
    seen: dict[str, list[str]] = {}
    out = dict(
        widgets.answers(
            c, tok, "What does os.path.join do?", 12, c.names, lambda name, text: seen.setdefault(name, []).append(text)
        )
    )
    assert list(out) == ["base", "sft"]
    for name in out:
        assert len(seen[name]) >= 2 and seen[name][-1].strip() == out[name]  # streamed in pieces, growing
        with c.use(name):
            assert models.chat(c.model, tok, "What does os.path.join do?", max_new_tokens=12) == out[name]
    assert widgets.chat_playground(c, tok, "hi") is None  # headless under pytest: a note, no widgets


def test_every_plot_has_a_title_and_labelled_axes():
    """Accessibility basics: a chart is read through its title and axis labels (screen readers, printouts)."""
    import matplotlib

    matplotlib.use("Agg")
    from ftlab.evaluation import compare
    from ftlab.views import plots

    metrics = [
        {
            "step": s,
            "loss": 2.0 - s / 10,
            "learning_rate": 1e-4,
            "tokens_per_s": 500.0,
            "grad_norm": 1.0,
            "rewards/margins": s / 10,
            "rewards/accuracies": 0.5 + s / 20,
            "eval_loss": 2.1 - s / 10,
        }
        for s in range(1, 6)
    ]
    scores = {
        m: {"nll": n, "rouge_l": r, "per_example": {"nll": [n - 0.1, n, n + 0.1]}}
        for m, n, r in (("base", 3.8, 0.15), ("sft", 2.6, 0.3))
    }
    figs = [
        plots.length_histogram([10, 20, 30], 64),
        plots.training_curves(metrics),
        plots.dpo_curves(metrics),
        plots.eval_bars(scores),
        compare.loss_curves([{"run": "a", "_metrics": metrics}]),
    ]
    for fig in figs:
        for ax in [a for a in fig.axes if a.has_data()]:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), (fig, ax.get_title(), ax.get_xlabel())


def test_widget_controls_have_descriptions(monkeypatch):
    """Every control a learner operates says what it is (the label a screen reader reads out)."""
    import ipywidgets as w

    made = []
    for cls in (w.IntSlider, w.Textarea, w.Button):
        orig = cls.__init__

        def init(self, *a, _orig=orig, **kw):
            _orig(self, *a, **kw)
            made.append(self)

        monkeypatch.setattr(cls, "__init__", init)
    monkeypatch.setattr(widgets, "is_headless", lambda: False)
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    tok = models.load_tokenizer("tiny-random")
    rows = [
        {"_line": 1, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ] * 2
    widgets.dataset_browser(rows, tok, 64)
    c = scoring.Contenders(models.load_model("tiny-random"), {})
    widgets.chat_playground(c, tok, "hi", max_new_tokens=2)
    assert {type(x).__name__ for x in made} == {"IntSlider", "Textarea", "Button"}
    for x in made:
        assert x.description or x.tooltip, type(x).__name__


def test_a_failing_model_ends_the_stream_with_a_clear_error_instead_of_hanging():
    import pytest

    tok = models.load_tokenizer("tiny-random")
    c = scoring.Contenders(models.load_model("tiny-random"), {})
    with pytest.raises(RuntimeError, match="base could not answer"):
        list(widgets.answers(c, tok, "hi", 0, ["base"], None))  # max_new_tokens=0 is refused by generate()
