"""Parameter specs per stage and their validation.

The notebook's `parameters` cell holds the defaults (with comments a reader sees); this module holds what a
value may be. Validation collects every problem at once and raises one `ParamError` naming the valid choices,
before any expensive work, whether the notebook was run by hand, by papermill or by `python -m ftlab run`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ftlab.core import stages
from ftlab.core.cells import DeclaredParam, ParamError, code_cells, notebook_parameters, parse_parameters_source  # noqa: F401
from ftlab.core.paths import check_run_name


@dataclass(frozen=True)
class Param:
    type: type | tuple[type, ...]
    choices: tuple[Any, ...] | None = None
    lo: float | None = None
    hi: float | None = None
    nullable: bool = False
    check: Callable[[Any], Any] | None = field(default=None, compare=False)

    def describe(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        s = " or ".join(t.__name__ for t in types) + (" or None" if self.nullable else "")
        if self.choices:
            s += f", one of {list(self.choices)}"
        if self.lo is not None or self.hi is not None:
            s += f", in [{self.lo if self.lo is not None else '-inf'}, {self.hi if self.hi is not None else 'inf'}]"
        return s


def _nonempty(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


def _renames(v: dict) -> dict:
    bad = [f"{k!r}: {x!r}" for k, x in v.items() if not (isinstance(k, str) and isinstance(x, str) and k and x)]
    if bad:
        raise ValueError(f"expected names mapped to names, e.g. {{'conversation': 'messages'}}, found {bad[:3]}")
    return v


def _roles(v: dict) -> dict:
    bad = {k: x for k, x in _renames(v).items() if x not in ("system", "user", "assistant")}
    if bad:
        raise ValueError(f"roles map onto system, user or assistant, found {bad}")
    return v


def _bool_or_auto(v: bool | str) -> bool | str:
    if isinstance(v, str) and v != "auto":
        raise ValueError(f"expected true, false or 'auto' (the memory plan decides), got {v!r}")
    return v


def _targets(v: str | list) -> str | list:
    if isinstance(v, str) and v != "all-linear":
        raise ValueError(f"expected 'all-linear' or a list of module names like ['q_proj', 'v_proj'], got {v!r}")
    if isinstance(v, list) and (not v or not all(isinstance(x, str) and x for x in v)):
        raise ValueError(f"expected a non-empty list of module names like ['q_proj', 'v_proj'], got {v!r}")
    return v


# ---- vocabularies: defined here once, every module asks for them ---------------------------------------------------
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m")  # what stage 04 can write
GGUF_CONVERTER_TYPES = ("f32", "f16", "bf16")  # written by llama.cpp's converter itself; the rest by its quantizer
QUANTIZATION = ("auto", "4bit", "none")  # auto: 4-bit on a GPU, none on a CPU
# the conversation layouts stage 01 reads (ftlab.data.formats defines them; a test keeps the two equal)
DATA_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
TURN_FLAGS = ("reject", "honour")  # stage 01's turn_flags: what a per-turn training key does (ftlab.data.turns)
MERGED_DTYPES = ("auto", "float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw_bnb_8bit", "adamw_torch", "paged_adamw_8bit")
AUTO_ON_OFF = ("auto", "on", "off")
ATTENTION = ("auto", "sdpa", "eager", "varlen", "flash_attention_2")  # "varlen": torch's own varlen flash kernel
REPORT_TO = ("none", "tensorboard", "mlflow")


def _gguf_types(v: list) -> list:
    if not v or any(x not in GGUF_TYPES for x in v):
        raise ValueError(f"expected a non-empty list from {list(GGUF_TYPES)}, got {v!r}")
    return v


def _eval_models(v: list) -> list:
    allowed = stages.compare_choices()  # asked at validation time: a registered method is a choice at once
    if not v or any(x not in allowed for x in v) or stages.BASE not in v:
        raise ValueError(
            f"expected a list from {list(allowed)} that includes {stages.BASE!r} (the number to beat), got {v!r}"
        )
    return v


def _one_of(choices: Callable[[], tuple[str, ...]]) -> Callable[[str], str]:
    """A check against the registry's choices, asked at validation time: a registered method is a choice at once."""

    def check(v: str) -> str:
        if v not in choices():
            raise ValueError(f"expected one of {list(choices())}, got {v!r}")
        return v

    return check


def parse_value(text: str) -> Any:
    """A command-line value as YAML (8 is an int, true a bool, null None, [a, b] a list), plus what YAML 1.1 misses:
    `1e-4` is a float, not the string '1e-4'."""
    import yaml

    v = yaml.safe_load(text) if text else ""
    if isinstance(v, str) and v:
        try:
            return float(v) if v.strip().lower() not in ("nan", "inf", "-inf", "infinity") else v
        except ValueError:
            return v
    return v


RUN = {"run_name": Param(str, check=check_run_name)}
# what the two training stages (SFT, DPO) share; DPO narrows the learning rate's lower bound
TRAINING = {
    "epochs": Param(float, lo=0),
    "max_steps": Param(int, lo=0),
    "batch_size": Param(int, lo=1),
    "grad_accum": Param(int, lo=1),
    "warmup_steps": Param(int, lo=0),
    "max_length": Param(int, lo=16, hi=131072),
    "eval_steps": Param(int, lo=0),
    "save_steps": Param(int, lo=1),
    "logging_steps": Param(int, lo=1),
    "gradient_checkpointing": Param((bool, str), check=_bool_or_auto),
    "fused_lora": Param(str, choices=AUTO_ON_OFF),
    "optim": Param(str, choices=OPTIMIZERS),
    "seed": Param(int, lo=0),
}

# wall-time forecast and run economics (stages 02 and 03)
ECONOMICS = {
    "forecast_rows": Param(int, lo=0),
    "device_power_w": Param(float, lo=0),
    "price_per_kwh": Param(float, lo=0),
    "price_per_gpu_hour": Param(float, lo=0),
}

_SPECS: dict[str, dict[str, Param]] = {  # shared by the stage's methods; a method's own: PARAMS
    stages.CHECK: {
        **RUN,
        "base_model": Param(str),
        "chat_check": Param(bool),
        "require_gpu": Param(bool),
        "bnb_smoke_test": Param(bool),
        "min_free_disk_gb": Param(float, lo=0),
        "min_ram_gb": Param(float, lo=0),
    },
    stages.DATA: {
        **RUN,
        "base_model": Param(str),
        "data_path": Param(str, check=_nonempty),
        "prefs_path": Param(str),
        "eval_path": Param(str),
        "data_format": Param(str, choices=("auto", *DATA_FORMATS)),
        "turn_flags": Param(str, choices=TURN_FLAGS),
        "data_fields": Param(dict, check=_renames),
        "data_roles": Param(dict, check=_roles),
        "max_length": Param(int, lo=16, hi=131072),
        "eval_fraction": Param(float, lo=0, hi=0.5),
        "max_rows": Param(int, lo=0),
        "max_rejected_share": Param(float, lo=0, hi=1),
        "seed": Param(int, lo=0),
        "perplexity_filter": Param(bool),
        "min_perplexity": Param(float, lo=1),
    },
    stages.TRAIN_SFT: {
        **RUN,
        "base_model": Param(str),
        "quantization": Param(str, choices=QUANTIZATION),
        "lora_r": Param(int, lo=1, hi=1024),
        "lora_alpha": Param(int, lo=1),
        "lora_dropout": Param(float, lo=0, hi=0.9),
        "lora_targets": Param((str, list), check=_targets),
        "learning_rate": Param(float, lo=1e-7, hi=1e-2),
        **TRAINING,
        "liger": Param(bool),
        "attention": Param(str, choices=ATTENTION),
        "packing": Param(str, choices=AUTO_ON_OFF),
        "padding_free": Param(str, choices=AUTO_ON_OFF),
        "activation_offloading": Param(str, choices=AUTO_ON_OFF),
        "report_to": Param(str, choices=REPORT_TO),
        **ECONOMICS,
    },
    stages.TRAIN_DPO: {
        **RUN,
        "base_model": Param(str),
        "quantization": Param(str, choices=QUANTIZATION),
        "method": Param(str, check=_one_of(lambda: stages.stage_methods(stages.TRAIN_DPO))),
        "eval_pairs": Param(int, lo=0),
        "learning_rate": Param(float, lo=1e-8, hi=1e-2),
        **TRAINING,
        **ECONOMICS,
        "max_prompt_length": Param(int, lo=8, hi=131072),
        "guard_rows": Param(int, lo=0),
        "max_new_tokens": Param(int, lo=1, hi=4096),
        "max_rejected_share": Param(float, lo=0, hi=1),
    },
    stages.EXPORT: {
        **RUN,
        "base_model": Param(str),
        "adapter": Param(str, check=_one_of(stages.adapter_choices)),
        "merged_dtype": Param(str, choices=MERGED_DTYPES),
        "gguf_types": Param(list, check=_gguf_types),
        "verify_prompts": Param(int, lo=1, hi=1000),
        "max_new_tokens": Param(int, lo=8, hi=4096),
        "min_agreement": Param(float, lo=0, hi=1),
        "gguf_check_seconds": Param(float, lo=0, hi=86400),
        "ollama_name": Param(str),
        "system_prompt": Param(str),
        "num_ctx": Param(int, lo=128, hi=1048576),
        "license": Param(str, check=_nonempty),
    },
    stages.EVALUATE: {
        **RUN,
        "base_model": Param(str),
        "quantization": Param(str, choices=QUANTIZATION),
        "compare_models": Param(list, check=_eval_models),
        "max_length": Param(int, lo=16, hi=131072),
        "generate_rows": Param(int, lo=0),
        "max_new_tokens": Param(int, lo=1, hi=4096),
        "batch_size": Param(int, lo=1),
        "forgetting_probe": Param(bool),
        "probe_path": Param(str),
        "nll_tolerance": Param(float, lo=0),
        "forgetting_nll_tolerance": Param(float, lo=0),
        "forgetting_correct_tolerance": Param(float, lo=0, hi=1),
        "deployed_gguf": Param(str, choices=("", *GGUF_TYPES)),
        "extra_metrics": Param(list),  # names or folders of evaluate modules; ftlab.metrics.load says what it found
        **{f"deployed_{k}_tolerance": Param(float, lo=0, hi=1) for k in ("rouge", "stop")},
        "deployed_seconds": Param(float, lo=0, hi=86400),
        **{f"lm_eval_{k}": Param(str) for k in ("tasks", "include_path")},
        "lm_eval_limit": Param(int, lo=0),
        "judge_url": Param(str),
        "judge_model": Param(str),
        "playground_prompt": Param(str),
        "seed": Param(int, lo=0),
    },
    stages.COMPARE: {
        **RUN,
        "run_glob": Param(str, check=_nonempty),
        "answers": Param(int, lo=0, hi=100),
    },
}


class _Specs(Mapping):
    """Each stage's parameter specs. A stage that trains one of several methods (03) has its shared specs in
    `_SPECS` plus each method's own, `PARAMS` in the method's module (`ftlab.train.methods`), gathered when first
    asked for (the modules import torch); a name two methods declare must have the same spec in both."""

    def __getitem__(self, stage: str) -> dict[str, Param]:
        return _with_methods(stage, stages.stage_methods(stage) if stage in _SPECS else ())

    def __iter__(self) -> Iterator[str]:
        return iter(_SPECS)

    def __len__(self) -> int:
        return len(_SPECS)


@functools.cache
def _with_methods(stage: str, methods: tuple[str, ...]) -> dict[str, Param]:
    spec = dict(_SPECS[stage])
    if len(methods) < 2:
        return spec
    for name in methods:
        for k, v in stages.load(stages.method(name).module).PARAMS.items():
            if k in spec and spec[k] != v:
                raise ValueError(f"{stage}: method {name!r} declares {k!r} as {v.describe()}, not {spec[k].describe()}")
            spec[k] = v
    return spec


SPECS: Mapping[str, dict[str, Param]] = _Specs()


def _type_ok(value: Any, p: Param) -> bool:
    if value is None:
        return p.nullable
    types = p.type if isinstance(p.type, tuple) else (p.type,)
    if isinstance(value, bool):  # bool is an int in Python; never accept it for a number
        return bool in types
    if float in types and isinstance(value, int):
        return True
    if list in types and isinstance(value, (list, tuple)):
        return True
    return isinstance(value, types)


def validate(stage: str, values: dict[str, Any], *, unknown: list[str] | None = None) -> dict[str, Any]:
    """Check `values` against the stage's spec; return them with ints widened to floats where floats are asked."""
    if stage not in SPECS:
        raise ParamError(f"no parameter spec for stage {stage!r}; known stages: {sorted(SPECS)}")
    spec = SPECS[stage]
    problems: list[str] = []
    for name in sorted(set(unknown or []) | (set(values) - set(spec))):
        problems.append(f"unknown parameter {name!r} (valid names: {', '.join(sorted(spec))})")
    out: dict[str, Any] = {}
    for name, p in spec.items():
        if name not in values:
            problems.append(f"missing parameter {name!r} ({p.describe()})")
            continue
        v = values[name]
        if not _type_ok(v, p):
            problems.append(f"{name}={v!r}: expected {p.describe()}, found {type(v).__name__}")
            continue
        if v is not None:
            if p.choices is not None and v not in p.choices:
                problems.append(f"{name}={v!r}: expected one of {list(p.choices)}")
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if (p.lo is not None and v < p.lo) or (p.hi is not None and v > p.hi):
                    problems.append(f"{name}={v!r}: expected {p.describe()}")
                    continue
                if p.type is float:
                    v = float(v)
            if p.check is not None:
                try:
                    p.check(v)
                except ValueError as e:
                    problems.append(f"{name}: {e}")
                    continue
        out[name] = v
    if problems:
        raise ParamError(
            f"stage {stage}: {len(problems)} parameter problem(s):\n  - "
            + "\n  - ".join(problems)
            + "\nFix the parameters cell, the params YAML or the -p override and run again."
        )
    return out
