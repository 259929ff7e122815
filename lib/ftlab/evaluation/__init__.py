"""Judging a model: the scores (`scoring`: held-out NLL, greedy answers, the probe, the forgetting gate), lm-eval tasks
(`lm_eval_tasks`), the deployed GGUF (`deployed_gguf`), scores reused across stages (`reuse`), stage 03's regression
guard (`regression_guard`), run comparison (`compare`), the HTML report (`report`) and stage 05's steps (`stage`, re-exported
here: `evaluation.score_all(...)`).

May import every package except `ftlab.runner`, the one above it.
"""

from ftlab.evaluation.stage import *  # noqa: F403  (evaluation.score_all, evaluation.verdicts, ...)
