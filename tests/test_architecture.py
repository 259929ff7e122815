"""The shape of the house: one registry for stage and method names, modules that import one way only, modules and
notebook cells of a readable size, and typed options whose defaults agree with the notebooks.

Run: .venv/bin/python -m pytest tests/test_architecture.py
"""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from ftlab.core import params as P
from ftlab.core import stages
from ftlab.core.paths import notebooks_dir, repo_root

LIB = repo_root() / "lib" / "ftlab"
MODULES = sorted(p for p in LIB.rglob("*.py"))

# The packages in their written order: a module may import its own package and the packages listed before it,
# never one after it (docs/architecture.md draws the same order); no two modules import each other in a cycle.
LAYERS = [
    "core",  # the registry, parameters, notebook cells, run folders: no other ftlab package
    "hardware",  # devices, the memory plan, the multi-GPU planner, telemetry, stage 00's checks
    "models",  # loading, generation, attention kernels, llama.cpp's server
    "data",  # readers, formats, the template audit, rows, stage 01
    "metrics",  # answer NLL, exact match, ROUGE-L, answer match, bootstrap intervals
    "views",  # plots, widgets, check-yourself
    "train",  # stages 02 and 03: the methods, the Trainer's config, fit
    "export",  # stage 04
    "evaluation",  # stage 05, stage 03's regression guard, lm-eval, the deployed GGUF, compare, report
    "runner",  # pipeline, status line, launch, cli
    "__main__",
]
TOP_LEVEL = {"__init__", "__main__"}  # beside the packages, lib/ftlab holds only these modules


def _module(path: Path) -> str:
    rel = path.relative_to(LIB).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
    return ".".join(parts)


def _package(module: str) -> str:
    return module.split(".")[0]


def _imports(path: Path) -> set[str]:
    """ftlab modules (dotted, without `ftlab.`) this file imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftlab"):
            base = node.module.split(".")[1:]
            for a in node.names:  # `from ftlab.core import runs` imports ftlab.core.runs; `import X` names X
                sub = LIB.joinpath(*base, a.name)
                out.add(
                    ".".join([*base, a.name]) if sub.is_dir() or sub.with_suffix(".py").exists() else ".".join(base)
                )
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("ftlab.") for a in node.names if a.name.startswith("ftlab.")}
    return {m for m in out if m}


def _layer(package: str) -> int:
    assert package in LAYERS or package == "__init__", (
        f"{package} is in no layer of tests/test_architecture.py; add it where it belongs"
    )
    return -1 if package == "__init__" else LAYERS.index(package)


def test_lib_is_packages_beside_a_few_top_level_modules():
    top = {p.stem for p in LIB.glob("*.py")}
    assert top <= TOP_LEVEL, f"modules outside the packages: {sorted(top - TOP_LEVEL)}"
    packages = {p.name for p in LIB.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS) - TOP_LEVEL, packages
    for pkg in packages:
        doc = ast.get_docstring(ast.parse((LIB / pkg / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"ftlab.{pkg} needs a docstring saying what it owns and what it may import"


def test_every_import_points_down_the_layers_and_there_is_no_cycle():
    graph: dict[str, set[str]] = {}
    wrong = []
    for path in MODULES:
        me = _module(path)
        deps = _imports(path) - {me}
        graph.setdefault(me, set()).update(deps)
        for d in deps:
            if _layer(_package(d)) > _layer(_package(me)):
                wrong.append(f"{path.relative_to(LIB)} imports ftlab.{d} ({_package(d)} is above {_package(me)})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)

    def visit(n: str, seen: tuple[str, ...]) -> None:
        assert n not in seen, f"import cycle: {' -> '.join((*seen, n))}"
        for d in graph.get(n, ()):
            if _package(d) == _package(n) and d != _package(n):  # cycles inside a package (its face aside)
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
        if path.relative_to(LIB).as_posix() == "core/stages.py":
            continue
        for line, s in _string_constants(ast.parse(path.read_text())):
            if s in names or any(st in s for st in stages.stage_names()):
                hits.append(f"{path.relative_to(LIB)}:{line}: {s!r}")
    assert not hits, "ask ftlab.core.stages instead of spelling these:\n" + "\n".join(hits)


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
    from ftlab.data import formats

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
