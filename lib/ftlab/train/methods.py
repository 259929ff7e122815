"""The method contract: what a method's module (`ftlab.train.sft`, `dpo`, `kto`, `orpo`, `grpo`) provides, as typed
protocols checked once, when the method is first looked up or registered; and `module(...)`, the one lookup.

Every method provides `TrainingMethod`: its own parameters (`PARAMS`, the specs stage 03's parameter check is built
from; `Options`, the typed values), its TRL config and trainer arguments, its dataset, its batch shape for the memory
plan (`batch_rows`, `planned_length`) and for the preflight (`worst_case`: the rows of the batch that sets peak
memory). A method that builds on another's adapter (stage 03's) also provides `TuningMethod`: its rows, its
reference check, its loss at step 0 and its summary, which `ftlab.train.steps` calls for the notebook.

A method from outside is one `stages.Method` entry plus a module under `ftlab.train` (or anywhere importable) that
provides these names; `register(method)` checks the module before the registry takes it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ftlab.core import runs, stages


class TrainingMethod(Protocol):
    PARAMS: Mapping[str, Any]  # the stage parameters only some of the stage's methods read: name -> params.Param
    Options: type  # frozen dataclass of the method's own parameters (every field a parameter of its stage)
    NOT_ARGS: tuple[str, ...]  # shared Trainer arguments its TRL config does not take

    def config_kwargs(
        self, out_dir: Path, t: Any, o: Any, device: str, attn: str | None, offload_needed: bool = False
    ) -> dict[str, Any]: ...
    def trainer_kwargs(self, o: Any) -> dict[str, Any]: ...
    def read_inputs(self, stage: runs.Stage) -> dict[str, Any]: ...
    def dataset(self, tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> Any: ...
    def batch_rows(self, p: dict[str, Any]) -> int: ...
    def planned_length(self, p: dict[str, Any], device: str, seq_len: int) -> int: ...
    def worst_case(self, trainer: Any) -> list[int]: ...


class TuningMethod(TrainingMethod, Protocol):
    FIRST_LOSS: str  # the loss at step 0, where policy == reference, explained
    FIRST_LOSS_TOL: float
    SHOWN: tuple[str, ...]  # the summary entries the notebook's last cell prints

    def make_pairs(self, stage: runs.Stage, rows: dict[str, Any], model: Any, tokenizer: Any, done: bool) -> Any: ...
    def check_reference(self, trainer: Any) -> dict[str, Any]: ...
    def summary(
        self, job: Any, metrics: list[dict[str, Any]], pairs: Any, reference: Any, guard: Any
    ) -> dict[str, Any]: ...


def protocol(method: stages.Method) -> type:
    return TuningMethod if method.builds_on else TrainingMethod


def problems(mod: Any, proto: type) -> list[str]:
    """What `mod` lacks against `proto`: a missing name, a function whose signature cannot take the protocol's
    arguments, a value of the wrong kind."""
    out = []
    wanted = {n for k in proto.__mro__ if k not in (Protocol, object) for n in vars(k) if not n.startswith("_")}
    wanted |= {n for k in proto.__mro__ for n in getattr(k, "__annotations__", {})}
    for name in sorted(wanted):
        have, want = getattr(mod, name, inspect.Parameter.empty), getattr(proto, name, None)
        if have is inspect.Parameter.empty:
            out.append(f"{name}: missing")
        elif inspect.isfunction(want):
            args = [
                p for p in list(inspect.signature(want).parameters.values())[1:] if p.kind is p.POSITIONAL_OR_KEYWORD
            ]
            try:
                inspect.signature(have).bind(*(None for p in args if p.default is p.empty))
                inspect.signature(have).bind(*(None for _ in args))
            except (TypeError, ValueError):
                out.append(
                    f"{name}: takes {inspect.signature(have)}, the contract calls it with ({', '.join(p.name for p in args)})"
                )
        elif name == "Options" and not (isinstance(have, type) and hasattr(have, "__dataclass_fields__")):
            out.append("Options: not a dataclass")
        elif name == "PARAMS" and not isinstance(have, Mapping):
            out.append("PARAMS: not a mapping of parameter names to specs")
    if not out and isinstance(getattr(mod, "PARAMS", None), Mapping):
        fields = set(getattr(mod.Options, "__dataclass_fields__", {}))
        out += [f"PARAMS: {n!r} is not a field of Options" for n in sorted(set(mod.PARAMS) - fields)]
    return out


def check(method: stages.Method) -> Any:
    """The method's module, once it provides the contract; a TypeError naming every name it lacks otherwise."""
    mod = stages.load(method.module)
    if bad := problems(mod, protocol(method)):
        raise TypeError(
            f"method {method.name!r}: its module {method.module} does not provide the method contract "
            f"(ftlab.train.methods.{protocol(method).__name__}): " + "; ".join(bad)
        )
    return mod


@functools.cache
def _checked(name: str, ref: str) -> Any:
    return check(stages.method(name))


def module(of: runs.Stage | stages.Method) -> Any:
    """The checked module of a method, or of the method a stage trains (`stage.method`), loaded and checked once."""
    method = of.method if isinstance(of, runs.Stage) else of
    return _checked(method.name, method.module)


def register(method: stages.Method) -> Any:
    """Add a method to the registry once its module provides the contract and its parameters agree with those of
    the stage's other methods; returns the module. Refused: the registry is as it was, and the error says why."""
    from ftlab.core import params

    check(method)
    stages.register_method(method)
    try:
        params.SPECS[method.stage]  # its PARAMS beside the other methods' (a name declared twice must agree)
    except Exception:
        stages.unregister(method.name)
        raise
    return module(method)
