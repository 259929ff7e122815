"""Task metrics as `evaluate` modules: the built-in ROUGE-L and exact match give the numbers rouge-score and the
normalization gave before, a metric a user has drops in by name, and nothing is fetched or written outside the cache.

Run: .venv/bin/python -m pytest tests/test_metrics.py
"""

import pytest

from ftlab import metrics, models
from ftlab.core.paths import cache_dir
from ftlab.evaluation import scoring

PREDS = ["Return the absolute value.", "the cat sat", "Compute x.", "", "A dog ran home quickly"]
REFS = ["Return the absolute value of a number.", "the cat sat on the mat", "compute X!", "nothing", "A dog ran"]


def test_rouge_l_is_the_same_number_as_rouge_score():
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = [sc.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDS, REFS, strict=True)]
    got = metrics.compute("rouge_l", PREDS, REFS)
    assert got["per_example"] == pytest.approx(want, abs=1e-12) and got["rouge_l"] == pytest.approx(sum(want) / 5)
    assert scoring.rouge_l(PREDS, REFS) == pytest.approx(want, abs=1e-12)
    assert (cache_dir() / "hf_modules").is_dir()  # evaluate's module copy lives in the project's cache


def test_exact_match_ignores_case_punctuation_and_spacing_only():
    got = metrics.compute("exact_match", PREDS, REFS)
    assert got["per_example"] == [False, False, True, False, False] and got["exact_match"] == pytest.approx(0.2)
    assert scoring.exact_match("  Hello,   World! ", "hello world") and not scoring.exact_match("hello", "hell o")


def test_a_users_evaluate_metric_drops_in_by_name(tmp_path):
    folder = tmp_path / "answer_words"
    folder.mkdir()
    (folder / "answer_words.py").write_text(
        "import datasets\nimport evaluate\n\n\n"
        "class AnswerWords(evaluate.Metric):\n"
        "    def _info(self):\n"
        "        return evaluate.MetricInfo(description='words per answer', citation='', inputs_description='',\n"
        "            features=datasets.Features({'predictions': datasets.Value('string'),\n"
        "                                        'references': datasets.Value('string')}))\n\n"
        "    def _compute(self, predictions, references):\n"
        "        return {'words': sum(len(p.split()) for p in predictions) / len(predictions), 'note': 'text'}\n"
    )
    tok = models.load_tokenizer("tiny-random")
    model = models.load_model("tiny-random")
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in zip(REFS, PREDS)
    ]
    s = scoring.score(model, tok, rows, max_length=128, n_generate=3, max_new_tokens=6, extra_metrics=[str(folder)])
    words = s["extra_metrics"][str(folder)]
    assert set(words) == {"words"} and words["words"] == pytest.approx(
        sum(len(a.split()) for a in s["per_example"]["answers"]) / 3
    )
    assert s["rouge_l"] == pytest.approx(sum(scoring.rouge_l(s["per_example"]["answers"], REFS[:3])) / 3)


def test_an_unknown_metric_says_what_was_expected():
    with pytest.raises(ValueError, match="metric 'no_such_metric': not a built-in \\(rouge_l, exact_match\\)"):
        metrics.load("no_such_metric")
