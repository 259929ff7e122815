"""EleutherAI's lm-evaluation-harness on every model stage 05 scores: the base, each method's adapter (on the same
base in memory, switched by name) and the merged model, fully offline.

The default tasks are local (`data/lm_eval/`): `ftlab_general_knowledge`, the forgetting probe as multiple choice,
and `ftlab_heldout`, the run's own held-out rows as multiple choice (the reference answer against three other
held-out answers). Both are scored by log-likelihood, so they measure what each model prefers, not what it happens
to generate. `lm_eval_tasks` takes any task the harness knows (its own, installed with its data, or YAML files in
`lm_eval_include_path`). Each model's equivalent `lm_eval` command line is recorded to reproduce a number outside
the notebook.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftlab.core import stages
from ftlab.core.paths import repo_root

LOCAL_TASKS = "data/lm_eval"
FORGETTING_TASK = "ftlab_general_knowledge"  # the task the promotion gate's lm-eval forgetting condition reads
HELDOUT_TASK = "ftlab_heldout"  # the run's held-out answers as multiple choice (stage 06 shows it per run)
METRICS = ("acc", "acc_norm", "exact_match", "rouge1", "bleu", "f1", "word_perplexity")


def task_list(tasks: str | list[str]) -> list[str]:
    items = tasks.split(",") if isinstance(tasks, str) else tasks
    return [t.strip() for t in items if t.strip()]


def status(tasks: str | list[str]) -> str | None:
    """None when the harness can run; otherwise the plain reason it will not."""
    if not task_list(tasks):
        return "lm-eval: off (lm_eval_tasks is empty)"
    if importlib.util.find_spec("lm_eval") is None:
        return "lm-eval: the lm-eval package is not installed; `make setup` installs it from requirements.lock"
    return None


def _numbers(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value, metric_stderr: value, n: samples}} from the harness's `results` block."""
    out: dict[str, dict[str, float]] = {}
    for task, r in results.items():
        row: dict[str, float] = {}
        for key, value in r.items():
            metric, _, _filter = key.partition(",")
            if isinstance(value, int | float) and (metric in METRICS or metric.removesuffix("_stderr") in METRICS):
                row[metric] = round(float(value), 4)
        if "sample_len" in r:
            row["n"] = r["sample_len"]
        out[task] = row
    return out


class Runner:
    """Called once per model while it is loaded (`evaluation.score_all`), it runs the harness on that model and
    keeps the numbers. `metadata` reaches the tasks' dataset functions (the held-out file for `ftlab_heldout`).
    `gate_models` (the base and the final model) are the only ones asked the forgetting gate's task, whole; the
    others get the other tasks (None: every model gets every task)."""

    def __init__(
        self,
        p: dict[str, Any],
        tokenizer: Any,
        eval_path: Path,
        out_dir: Path,
        gate_models: tuple[str, ...] | None = None,
    ):
        self.tasks = task_list(p["lm_eval_tasks"])
        self.include = str(repo_root() / (p["lm_eval_include_path"] or LOCAL_TASKS))
        self.metadata = {"eval_path": str(eval_path)}
        self.tokenizer, self.batch_size, self.max_length = tokenizer, p["batch_size"], p["max_length"]
        self.limit = p["lm_eval_limit"] or None
        self.out_dir = out_dir
        self.gate_models = gate_models
        self.results: dict[str, dict[str, dict[str, float]]] = {}
        self.seconds: dict[str, float] = {}
        self.commands: dict[str, str] = {}
        self.answers: dict[str, dict[str, list[dict[str, Any]]]] = {}  # model -> task -> one outcome per question
        self._tasks: Any = None  # lm-eval's TaskManager, built once (`task_manager`)

    def __call__(self, name: str, model: Any, model_args: str) -> None:
        from lm_eval.models.huggingface import HFLM

        t = time.time()
        with _quiet("lm_eval.api.task", "lm_eval.models.huggingface"):  # they warn of what is done here on purpose
            lm = HFLM(
                pretrained=model, tokenizer=self.tokenizer, batch_size=self.batch_size, max_length=self.max_length
            )
            r = self._evaluate(lm, name)
        self.results[name] = _numbers(r["results"])
        self.answers[name] = {task: [_outcome(x) for x in xs] for task, xs in r.get("samples", {}).items()}
        self.seconds[name] = round(time.time() - t, 1)
        self.commands[name] = self.command(model_args, name)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        keep = {k: r[k] for k in ("results", "versions", "n-shot", "config", "lm_eval_version") if k in r}
        keep["questions"] = self.answers[name]
        (self.out_dir / f"{name}.json").write_text(json.dumps(keep, indent=1, default=str), encoding="utf-8")
        print(f"{name:>7}: lm-eval {self.seconds[name]} s", self.line(name))

    def _evaluate(self, lm: Any, name: str) -> dict[str, Any]:
        """Every task of `groups(name)`: `limit` questions each, except the forgetting gate's task, always asked
        whole: the gate's interval needs every question (two harness calls when a limit is set)."""
        import lm_eval

        out: dict[str, Any] = {}
        for tasks, limit in self.groups(name):
            r = lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                task_manager=self.task_manager(),
                apply_chat_template=True,  # the chat template the models were trained with, as in every other score
                limit=limit,
                log_samples=True,  # each question's outcome: which ones a tuned model lost (`flips`)
                random_seed=0,
            )
            for key, value in r.items():
                out[key] = {**out[key], **value} if isinstance(value, dict) and key in out else value
        return out

    def task_manager(self) -> Any:
        """lm-eval's index of tasks, built once for every model and call. Indexing the harness's ~13,000 bundled
        task files took 20 s of a 53 s harness call under cProfile on 2 CPU cores (in stage 05 on the embedded
        model each call became 4-8 s shorter), so they are indexed only when a task asked for is not one of the
        local folder's (`lm_eval_tasks = "hellaswag"` still works)."""
        if self._tasks is None:
            from lm_eval.tasks import TaskManager

            local = TaskManager(include_path=self.include, include_defaults=False, metadata=self.metadata)
            whole = set(local.all_tasks).issuperset(self.tasks)
            self._tasks = local if whole else TaskManager(include_path=self.include, metadata=self.metadata)
        return self._tasks

    def groups(self, name: str | None = None) -> list[tuple[list[str], int | None]]:
        """The harness calls for model `name`: (tasks, limit). The forgetting gate's task is asked whole, and only
        of the models the gate compares (`gate_models`): it is the longest task, and nothing else reads it."""
        tasks = [t for t in self.tasks if t != FORGETTING_TASK or self.gate_models is None or name in self.gate_models]
        whole = [t for t in tasks if t == FORGETTING_TASK and self.limit]
        return [(t, n) for t, n in ((whole, None), ([t for t in tasks if t not in whole], self.limit)) if t]

    def command(self, model_args: str, name: str | None = None) -> str:
        """The same evaluation from a shell (the run's tokenizer and chat template come from the folders)."""
        meta = json.dumps(self.metadata)
        return " && ".join(
            f"lm_eval --model hf --model_args {model_args} --tasks {','.join(tasks)} --include_path {self.include} "
            f"--metadata '{meta}' --apply_chat_template --batch_size {self.batch_size}"
            + (f" --limit {limit}" if limit else "")
            for tasks, limit in self.groups(name)
        )

    def line(self, name: str) -> str:
        parts = []
        for task, m in self.results.get(name, {}).items():
            shown = [f"{k} {v:.3f}" for k, v in m.items() if k in METRICS][:2]
            parts.append(f"{task} {', '.join(shown)} (n={m.get('n', '?')})")
        return "; ".join(parts)

    def summary(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "include_path": self.include,
            "models": self.results,
            "seconds": self.seconds,
            "commands": self.commands,
        }


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _outcome(sample: dict[str, Any]) -> dict[str, Any]:
    """One multiple-choice question as the harness scored it: the question, the gold and the picked choice."""
    doc, lls = sample.get("doc", {}), [x[0] if isinstance(x, list | tuple) else x for x in sample["filtered_resps"]]
    pick = max(range(len(lls)), key=lls.__getitem__) if lls else None
    return {"question": doc.get("question", sample.get("doc_id")), "gold": sample["target"], "pick": pick}


def flips(run: Runner, base: str, tuned: str, task: str = FORGETTING_TASK) -> list[str]:
    """The questions of `task` the base answered right and `tuned` now gets wrong: what tuning cost, by name."""
    a, b = (run.answers.get(m, {}).get(task, []) for m in (base, tuned))
    return [x["question"] for x, y in zip(a, b, strict=False) if x["pick"] == x["gold"] and y["pick"] != y["gold"]]


def right(run: Runner, model: str, task: str = FORGETTING_TASK) -> list[bool]:
    """Per question of `task`, whether `model` picked the gold choice."""
    return [x["pick"] == x["gold"] for x in run.answers.get(model, {}).get(task, [])]


def forgetting_gate(run: Runner, base: str, final: str | None, tol: float) -> dict[str, Any]:
    """The lm-eval forgetting condition of the promotion gate: it fails when the final model's fall in accuracy on
    the general-knowledge task is surely above `tol` (the 95% paired bootstrap interval over the questions lies
    wholly above it); not checked when the task did not run on both models."""
    a, b = right(run, base), right(run, final) if final else []
    if not a or len(a) != len(b):
        return {"ok": None, "why": f"{FORGETTING_TASK} was not run on the base and the final model (lm_eval_tasks)"}
    from ftlab.evaluation.scoring import paired_drop

    drop, lo, hi = paired_drop(a, b)
    acc_a, acc_b = sum(a) / len(a), sum(b) / len(b)
    return {
        "ok": lo <= tol,
        "why": f"lm-eval {FORGETTING_TASK} ({len(a)} questions) acc {acc_a:.0%} -> {acc_b:.0%} (drop {drop:+.1%}, "
        f"95% CI {lo:+.1%} to {hi:+.1%}; fails above {tol:.0%})",
        "try": "a lower learning rate, fewer steps or a smaller rank; or general rows mixed into the training set",
        "acc_drop": round(drop, 4),
        "acc_drop_ci": [round(lo, 4), round(hi, 4)],
        "n": len(a),
    }


def table(lm: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows for the report: one row per model, one column per task and metric."""
    models = lm.get("models", {})
    cols = sorted({(t, k) for r in models.values() for t, m in r.items() for k in m if k in METRICS})
    header = ["model", *[f"{t} {k}" for t, k in cols]]
    rows = []
    for name, r in models.items():
        cells = []
        for t, k in cols:
            m = r.get(t, {})
            err = m.get(f"{k}_stderr")
            cells.append("" if k not in m else f"{m[k]:.3f}" + (f" ± {err:.3f}" if err is not None else ""))
        rows.append([name, *cells])
    return header, rows


def runner(stage: Any, tokenizer: Any, notes: list[str], found: dict[str, Any] | None = None) -> Runner | None:
    """The harness for stage 05's models (`found`: the run's models, as `evaluation.find` returns them; the gate's
    task goes to the base and the last method among them), or None with a note saying why it is off."""
    why = status(stage.params["lm_eval_tasks"])
    if why:
        notes.append(why)
        print(why)
        return None
    final = next(reversed(stages.method_names(found or {})), None)
    gate = None if found is None else (stages.BASE, *([final] if final else []))
    return Runner(stage.params, tokenizer, stage.input(stages.DATA, "eval.jsonl"), stage.path("lm_eval"), gate)
