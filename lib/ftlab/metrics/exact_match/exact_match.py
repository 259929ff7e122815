"""Exact match after normalization: lower-cased, punctuation turned into spaces, whitespace collapsed; per prediction
and the share that match."""

import re

import datasets
import evaluate


def normalize(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="exact match of normalized text (case, punctuation and extra whitespace ignored)",
            citation="",
            inputs_description="predictions: list of str; references: list of str (one reference each)",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        per = [normalize(p) == normalize(r) for p, r in zip(predictions, references)]
        return {"exact_match": sum(per) / len(per), "per_example": per}
