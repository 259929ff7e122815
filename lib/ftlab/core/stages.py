"""The registry: which stages the series has, which training methods exist and what each needs.

Every other module asks this table instead of spelling a stage or method name. A new training method is one
`Method` entry (here, or `register_method` from outside) plus its own module under `ftlab.train`; a new export
target is one `ExportTarget` entry plus its module under `ftlab.export`. Nothing here imports the rest of ftlab.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StageInfo:
    name: str  # "02_train_sft": the notebook's file name and the stage folder's name
    title: str
    multi_process: bool = False  # built and tested to run under `accelerate launch` with several processes
    key: tuple[str, ...] = ()  # summary.json keys ("a.b" nests) `ftlab run` shows in its closing table

    @property
    def number(self) -> str:
        return self.name[:2]


@dataclass(frozen=True)
class Method:
    """A training method: the stage that runs it, the TRL pieces it uses and what it leaves behind.

    `module` (under ftlab.train) provides `config_kwargs(out_dir, t, opts, device, attn, offload_needed)`, `trainer_kwargs(opts)` and the
    method's dataset builder; `options` names the dataclass of its own parameters in that module."""

    name: str  # "sft": the adapter's name in params (`adapter`, `compare_models`) and in reports
    stage: str  # the stage that trains it
    title: str  # "SFT": how plots, dashboards and verdicts name it
    description: str  # "supervised fine-tuning": how the model card names it
    config: str  # "trl:SFTConfig": the TRL arguments class
    trainer: str  # "trl:SFTTrainer"
    module: str  # "ftlab.train.sft"
    builds_on: str | None = None  # the method whose adapter this one starts from
    metrics: tuple[str, ...] = ()  # log keys beyond the shared ones that go into metrics.jsonl
    curves: str = "training_curves"  # the ftlab.views.plots function that draws its metrics
    columns: dict[str, str] = field(default_factory=dict)  # comparison column -> summary.json key ("a.b" nests)
    adapter: str = "adapter"  # folder of the stage that holds the adapter it produces
    eval_before: bool = False  # evaluate before training (the number to beat, eval_before.json)

    def adapter_dir(self, stage_dir: Callable[[str], Path]) -> Path:
        return Path(stage_dir(self.stage)) / self.adapter

    def has_adapter(self, stage_dir: Callable[[str], Path]) -> bool:
        return (self.adapter_dir(stage_dir) / "adapter_config.json").exists()


@dataclass(frozen=True)
class ExportTarget:
    """A file format stage 04 writes (merged safetensors, GGUF, an Ollama Modelfile)."""

    name: str
    module: str  # the ftlab.export module that writes it
    path: str  # where it lands in the export stage's folder


_SHARED_KEYS = ("loss", "eval_loss", "grad_norm", "learning_rate")
_GRPO = tuple(
    f"{p}{k}"
    for p in ("", "eval_")
    for k in (
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "kl",
        "entropy",
        "completions/mean_length",
        "completions/clipped_ratio",
        "rewards/rouge_l/mean",
        "rewards/ends_cleanly/mean",
        "rewards/judge_score/mean",
    )
)
# stage 03's before/after guard (held-out NLL and ROUGE-L of the tuned model, NLL change vs SFT): each method's columns
_GUARD = {"guard_nll": "guard.after.nll", "guard_rouge_l": "guard.after.rouge_l", "guard_nll_diff": "guard.nll_diff"}
_REWARDS = tuple(f"{p}rewards/{k}" for p in ("", "eval_") for k in ("chosen", "rejected", "margins", "accuracies"))

_STAGES: list[StageInfo] = [
    StageInfo("00_check_environment", "check the environment", key=("ok", "device.type", "device.name")),
    StageInfo("01_prepare_data", "prepare the data", key=("train", "eval", "prefs", "rejected")),
    StageInfo(
        "02_train_sft",
        "supervised fine-tuning",
        multi_process=True,
        key=("eval_loss_before", "eval_loss_after", "tokens_per_s"),
    ),
    StageInfo("03_train_dpo", "preference tuning", key=("first_margin", "last_margin", "tokens_per_s")),
    StageInfo("04_merge_export", "merge and export", key=("sizes_mb", "times_s.merge_s", "times_s.convert_f16_s")),
    StageInfo("05_evaluate", "evaluate", key=("final", "passed", "nll", "rouge_l", "generated_tokens_per_s")),
    StageInfo("06_compare_runs", "compare runs", key=("best",)),
]
CHECK, DATA, TRAIN_SFT, TRAIN_DPO, EXPORT, EVALUATE, COMPARE = (s.name for s in _STAGES)

_METHODS: list[Method] = [
    Method(
        name="sft",
        stage=TRAIN_SFT,
        title="SFT",
        description="supervised fine-tuning",
        config="trl:SFTConfig",
        trainer="trl:SFTTrainer",
        module="ftlab.train.sft",
        metrics=("mean_token_accuracy", "eval_mean_token_accuracy"),
        eval_before=True,
        columns={"seconds": "train_seconds", "peak_gib": "memory.measured_peak_gib", "tokens_per_s": "tokens_per_s"},
    ),
    Method(
        name="dpo",
        stage=TRAIN_DPO,
        title="DPO",
        description="DPO",
        config="trl:DPOConfig",
        trainer="trl:DPOTrainer",
        module="ftlab.train.dpo",
        builds_on="sft",
        metrics=_REWARDS,
        curves="dpo_curves",
        columns={"seconds": "train_seconds", "last_margin": "last_margin", **_GUARD},
    ),
    Method(
        name="kto",
        stage=TRAIN_DPO,
        title="KTO",
        description="KTO",
        config="trl:KTOConfig",
        trainer="trl:KTOTrainer",
        module="ftlab.train.kto",
        builds_on="sft",
        metrics=(*_REWARDS, "kl", "eval_kl"),
        curves="dpo_curves",
        columns={"seconds": "train_seconds", "last_margin": "last_margin", **_GUARD},
        adapter="adapter_kto",
    ),
    Method(
        name="orpo",
        stage=TRAIN_DPO,
        title="ORPO",
        description="ORPO",
        config="trl.experimental.orpo:ORPOConfig",
        trainer="trl.experimental.orpo:ORPOTrainer",
        module="ftlab.train.orpo",
        builds_on="sft",
        metrics=(
            *_REWARDS,
            *(f"{p}{k}" for p in ("", "eval_") for k in ("nll_loss", "log_odds_ratio", "log_odds_chosen")),
        ),
        curves="dpo_curves",
        columns={"seconds": "train_seconds", "last_margin": "last_margin", **_GUARD},
        adapter="adapter_orpo",
    ),
    Method(
        name="grpo",
        stage=TRAIN_DPO,
        title="GRPO",
        description="GRPO",
        config="trl:GRPOConfig",
        trainer="trl:GRPOTrainer",
        module="ftlab.train.grpo",
        builds_on="sft",
        metrics=_GRPO,
        curves="grpo_curves",
        columns={"seconds": "train_seconds", "last_reward": "last_reward", **_GUARD},
        adapter="adapter_grpo",
    ),
]

EXPORT_TARGETS: tuple[ExportTarget, ...] = (
    ExportTarget("merged", "ftlab.export.merge", "merged"),
    ExportTarget("gguf", "ftlab.export.gguf", "gguf"),
    ExportTarget("ollama", "ftlab.export.ollama", "Modelfile"),
)
BASE = "base"  # the untuned model: the number every method must beat
MERGED = EXPORT_TARGETS[0].name  # the merged model, scored beside the adapters in stage 05
FINAL = "final"  # in stage 05's compare_models: the run's final adapter, whichever method trained it last


# ---- stages ------------------------------------------------------------------------------------------------------


def stage_names() -> tuple[str, ...]:
    return tuple(s.name for s in _STAGES)


def stage(name: str) -> StageInfo:
    for s in _STAGES:
        if s.name == name:
            return s
    raise ValueError(f"unknown stage {name!r}; the stages are: {', '.join(stage_names())}")


def multi_process_stages() -> tuple[str, ...]:
    return tuple(s.name for s in _STAGES if s.multi_process)


# ---- methods -----------------------------------------------------------------------------------------------------


def methods() -> tuple[Method, ...]:
    """Every training method, in the order the series runs them."""
    order = stage_names()
    return tuple(sorted(_METHODS, key=lambda m: order.index(m.stage)))


def method_names(among: Collection[str] | None = None) -> tuple[str, ...]:
    """In series order; with `among` (models scored or found), those in it only: the last is the run's final model."""
    return tuple(m.name for m in methods() if among is None or m.name in among)


def method(name: str) -> Method:
    for m in _METHODS:
        if m.name == name:
            return m
    raise ValueError(f"unknown training method {name!r}; the methods are: {', '.join(method_names())}")


def stage_methods(stage_name: str) -> tuple[str, ...]:
    """The methods a stage can train (stage 03: dpo, kto), its default first: the choices of its `method` parameter."""
    return tuple(m.name for m in methods() if m.stage == stage_name)


def method_of_stage(stage_name: str, params: dict[str, Any] | None = None) -> Method:
    """The method a stage trains: the one `params["method"]` names where several share the stage, else its first."""
    names = stage_methods(stage_name)
    if not names:
        raise ValueError(f"stage {stage_name!r} trains no method; training stages: {[m.stage for m in methods()]}")
    name = (params or {}).get("method") or names[0]
    if name not in names:
        raise ValueError(f"stage {stage_name!r} trains one of {list(names)}, not {name!r}")
    return method(name)


def first_method() -> Method:
    """The method every other one builds on (SFT): the one whose adapter starts from the base."""
    return next(m for m in methods() if m.builds_on is None)


def lineage(name: str) -> list[Method]:
    """The methods an adapter went through, first to last: dpo -> [sft, dpo]."""
    chain = [method(name)]
    while chain[0].builds_on:
        chain.insert(0, method(chain[0].builds_on))
    return chain


def log_keys() -> tuple[str, ...]:
    """Every training log key that goes into metrics.jsonl: the shared ones and each method's own."""
    return tuple(dict.fromkeys(_SHARED_KEYS + tuple(k for m in methods() for k in m.metrics)))


def final_method(stage_dir: Callable[[str], Path], choice: str = "auto") -> Method:
    """The run's final adapter: `auto` takes the last method in series order whose stage produced an adapter (of
    methods sharing a stage, the adapter saved last); a method name takes that one. A clear error when it is missing."""
    order = stage_names()
    have = [m for m in methods() if m.has_adapter(stage_dir)]
    have.sort(key=lambda m: (order.index(m.stage), (m.adapter_dir(stage_dir) / "adapter_config.json").stat().st_mtime))
    pick = (have[-1] if have else None) if choice == "auto" else method(choice)
    if pick is None or pick not in have:
        want = pick or first_method()
        raise FileNotFoundError(
            f"adapter={choice!r} needs {want.adapter_dir(stage_dir)}, which is missing; run notebooks/{want.stage}.ipynb "
            f"first (adapters found: {[m.name for m in have] or 'none'})."
        )
    return pick


def expand_final(names: list[str], stage_dir: Callable[[str], Path]) -> tuple[list[str], list[str]]:
    """Stage 05's compare_models with `final` as the run's final adapter (once each); a note when none exists yet."""
    have = any(m.has_adapter(stage_dir) for m in methods())
    final = [final_method(stage_dir).name] if have else []
    out = list(dict.fromkeys(x for n in names for x in (final if n == FINAL else [n])))
    return out, [] if have or FINAL not in names else [f"{FINAL}: not evaluated, no stage has trained an adapter yet"]


def contenders(stage_dir: Callable[[str], Path]) -> dict[str, Path]:
    """What stage 05 can score besides the base: every method's adapter folder and the merged model's folder."""
    out = {m.name: m.adapter_dir(stage_dir) for m in methods()}
    out[MERGED] = Path(stage_dir(EXPORT)) / EXPORT_TARGETS[0].path
    return out


def compare_choices() -> tuple[str, ...]:
    return (BASE, *method_names(), FINAL, MERGED)


def adapter_choices() -> tuple[str, ...]:
    return ("auto", *method_names())


def load(ref: str) -> Any:
    """`"package.module:attr"` -> the object (imported when first needed, so this table stays import-free)."""
    mod, _, attr = ref.partition(":")
    obj = importlib.import_module(mod)
    return getattr(obj, attr) if attr else obj


def dig(d: dict[str, Any], dotted: str) -> Any:
    """`dig(summary, "memory.measured_peak_gib")`; None where a key is missing."""
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


# ---- extending the registry --------------------------------------------------------------------------------------


def register_stage(info: StageInfo, after: str | None = None) -> None:
    if info.name in stage_names():
        raise ValueError(f"stage {info.name!r} is already registered")
    _STAGES.insert(stage_names().index(after) + 1 if after else len(_STAGES), info)


def register_method(m: Method) -> None:
    if m.name in method_names() or m.name in (BASE, MERGED, "auto"):
        raise ValueError(f"method name {m.name!r} is taken; taken: {[*method_names(), BASE, MERGED, 'auto']}")
    stage(m.stage)  # the stage must exist
    if m.builds_on:
        method(m.builds_on)
    _METHODS.append(m)


def unregister(name: str) -> None:
    """Remove a method (and a stage of that name) again: for tests and experiments."""
    _METHODS[:] = [m for m in _METHODS if m.name != name]
    _STAGES[:] = [s for s in _STAGES if s.name != name]


@contextlib.contextmanager
def registered(m: Method, stage_info: StageInfo | None = None, after: str | None = None) -> Iterator[Method]:
    """`with registered(Method(...), StageInfo(...)):` a method (and its stage) that exist only inside the block."""
    if stage_info:
        register_stage(stage_info, after)
    try:
        register_method(m)
        yield m
    finally:
        unregister(m.name)
        if stage_info:
            unregister(stage_info.name)
