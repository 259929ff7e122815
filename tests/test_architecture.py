"""The shape of the house: one registry for stage and method names, modules that import one way only, modules and
notebook cells of a readable size, and typed options whose defaults agree with the notebooks.

Run: .venv/bin/python -m pytest tests/test_architecture.py
"""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from ftlab import params as P
from ftlab import stages
from ftlab.paths import notebooks_dir, repo_root

LIB = repo_root() / "lib" / "ftlab"
MODULES = sorted(p for p in LIB.rglob("*.py"))

# Each module may import only modules of its own layer or of a layer above it (listed earlier); never in a cycle.
LAYERS = [
    {
        "stages",
        "reasons",
        "formats",
        "files",
        "cells",
    },  # the registry, input layouts, reading files and notebook cells: no ftlab
    {"turns"},  # keys inside a record's turns (formats below it)
    {"paths"},
    {"params"},  # parameter specs and the vocabularies
    {"devices", "attention", "runs", "telemetry", "progress", "served", "metrics"},
    {"generate", "audit", "memory", "models", "env"},
    {"data", "scoring", "teach", "prepare", "harness", "layout", "reuse"},
    {"plots"},
    {"widgets"},
    {"train", "export"},  # packages: every module inside counts as the package
    {"report", "compare", "evaluation", "deployed"},
    {"pipeline", "launch", "cli", "__main__", "__init__"},
]


def _name(path: Path) -> str:
    rel = path.relative_to(LIB).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> set[str]:
    """ftlab modules this file imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftlab"):
            parts = node.module.split(".")
            if len(parts) > 1:
                out.add(parts[1])
            else:  # from ftlab import a, b
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ftlab.")}
    return out


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"module {name} is in no layer of tests/test_architecture.py; add it where it belongs")


def test_every_import_points_up_the_layers_and_there_is_no_cycle():
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        me = _name(path)
        deps = _imports(path) - {me}
        graph.setdefault(me, set()).update(deps)
        for d in deps:
            assert _layer(d) <= _layer(me), f"{path.relative_to(LIB)} imports {d} (layer {_layer(d)} > {_layer(me)})"

    def visit(n: str, seen: tuple[str, ...]) -> None:
        assert n not in seen, f"import cycle: {' -> '.join((*seen, n))}"
        for d in graph.get(n, ()):
            visit(d, (*seen, n))

    for n in graph:
        visit(n, ())


def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_no_stage_or_method_name_is_spelled_outside_the_registry():
    names = set(stages.method_names())
    hits = []
    for path in MODULES:
        if path.name == "stages.py":
            continue
        for line, s in _string_constants(ast.parse(path.read_text())):
            if s in names or any(st in s for st in stages.stage_names()):
                hits.append(f"{path.relative_to(LIB)}:{line}: {s!r}")
    assert not hits, "ask ftlab.stages instead of spelling these:\n" + "\n".join(hits)


def test_no_module_is_over_350_lines():
    long = {str(p.relative_to(LIB)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long


NOTEBOOKS = sorted(notebooks_dir().glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_code_cells_are_short(path):
    long = [
        (i, len(src.splitlines()))
        for i, (src, tags) in enumerate(P.code_cells(path))
        if "parameters" not in tags and len(src.splitlines()) > 12
    ]
    assert not long, f"{path.name}: code cells over 12 lines (index, lines): {long}; move the logic into lib/ftlab"


@pytest.mark.parametrize("method", stages.method_names())
def test_method_options_defaults_are_the_notebook_defaults(method):
    """A typed option's default must never disagree with the notebook's parameters cell (no silent fallbacks)."""
    m = stages.method(method)
    opts = stages.load(m.module).Options
    declared = {d.name: d.default for d in P.notebook_parameters(notebooks_dir() / f"{m.stage}.ipynb")}
    spec = P.SPECS[m.stage]
    for f in fields(opts):
        assert f.name in spec, f"{opts.__name__}.{f.name} is not a parameter of {m.stage}"
        assert f.default == declared[f.name], (
            f"{opts.__name__}.{f.name}: default {f.default!r} != notebook's {declared[f.name]!r}"
        )


def test_training_params_are_exactly_the_shared_training_spec():
    from ftlab.train import Economics, TrainParams

    assert {f.name for f in fields(TrainParams)} == set(P.TRAINING) | {"learning_rate"}
    assert {f.name for f in fields(Economics)} == set(P.ECONOMICS)


def test_every_format_is_a_data_format_choice_and_detected_by_its_own_fields():
    from ftlab import formats

    choices = P.SPECS[stages.DATA]["data_format"].choices
    assert set(choices) == {"auto", *formats.names(preference=False)}
    for f in formats.FORMATS:
        rec = {k: "x" for k in f.required}
        assert formats.detect_format(rec) == f.name, f.name


def test_the_notebook_folder_holds_no_run_logs():
    assert not (notebooks_dir() / "runs").exists()
    stray = [p.name for p in notebooks_dir().iterdir() if p.suffix != ".ipynb" and p.name != ".ipynb_checkpoints"]
    assert not stray, f"run logs or stores in notebooks/ (they belong in the run folder): {stray}"
    assert "runs/" in (repo_root() / ".gitignore").read_text()
