"""Static checks of every notebook and params file; no kernel is started.

Run: .venv/bin/python -m pytest tests/test_notebooks_static.py
"""

import ast
import json
from pathlib import Path

import nbformat
import pytest

from ftlab.core import params as P
from ftlab.core import stages
from ftlab.core.paths import notebooks_dir, repo_root
from ftlab.runner import pipeline

NOTEBOOKS = sorted(notebooks_dir().glob("*.ipynb"))
PARAM_FILES = sorted((repo_root() / "params").rglob("*.yaml"))


def _cells(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _src(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_notebooks_and_they_are_stages():
    assert NOTEBOOKS, "no notebooks found"
    assert [p.stem for p in NOTEBOOKS] == list(stages.stage_names()), [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_valid_notebook_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "ftlab"
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, f"{path.name}: committed outputs; strip them"
            ast.parse(c.source)  # every code cell is plain Python


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_of_commented_literals_matching_the_spec(path):
    cells = _cells(path)
    tagged = [c for c in cells if "parameters" in (c.get("metadata", {}).get("tags") or [])]
    assert len(tagged) == 1
    declared = P.notebook_parameters(path)
    assert all(d.comment for d in declared), [d.name for d in declared if not d.comment]
    assert {d.name for d in declared} == set(P.SPECS[path.stem]), "parameters cell and ftlab.core.params.SPECS differ"
    P.validate(path.stem, {d.name: d.default for d in declared})  # the defaults themselves are valid
    assert declared[0].name == "run_name"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_parses_every_parameter_line(path, caplog):
    """papermill's own parser gives up on a line whose comment holds '=', silently losing that parameter's help."""
    import papermill

    caplog.set_level("WARNING")
    found = papermill.inspect_notebook(str(path))
    assert set(found) == set(P.SPECS[path.stem])
    assert not [r.message for r in caplog.records if "Unable to parse" in r.message]
    assert all(v["help"] for v in found.values()), [k for k, v in found.items() if not v["help"]]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_layout_header_then_parameters_then_resolve(path):
    cells = _cells(path)
    assert cells[0]["cell_type"] == "markdown" and "**Reads:**" in _src(cells[0]) and "**Writes:**" in _src(cells[0])
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"]["tags"]
    assert f'resolve_stage("{path.stem}", globals())' in _src(code[1])
    assert "stage.finish(" in _src(code[-1])


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_params_file_keys_exist_and_values_validate(path):
    given = pipeline.load_params_file(path)  # a notebook's own section (02_train_sft: {...}) becomes dotted names
    planned = pipeline.plan(NOTEBOOKS, given)  # raises ParamError on an unknown name or a bad value, as a run would
    assert {k.split(".")[-1] for k in given} <= {n for _, inject in planned for n in inject}, path.name
    assert path.read_text().startswith("#"), "a params file opens with the command that runs it"


def test_the_training_lessons_build_the_ecosystems_objects_in_their_own_cells():
    """02 and 03 show what they teach: the 4-bit config, the LoRA config (03: PEFT's model on the SFT adapter), the
    trainer config and the trainer are built in code cells a learner can print, change and copy, never behind a
    builder; 03 names every method's TRL classes; no notebook cell dispatches on a method (no `algo.`, no
    `method ==`: the registry decides); at least three check-yourself cells each (short cells: test_architecture)."""
    code = {
        nb.stem: [_src(c) for c in _cells(nb) if c["cell_type"] == "code"]
        for nb in sorted(notebooks_dir().glob("0*.ipynb"))
    }
    for stem, cells in code.items():
        for i, c in enumerate(cells):
            assert "algo." not in c and "method ==" not in c and "train.build(" not in c, (stem, i, c)
    sft, dpo = "\n".join(code["02_train_sft"]), "\n".join(code["03_train_dpo"])
    for name in ("BitsAndBytesConfig(", "LoraConfig(", "SFTConfig(", "SFTTrainer("):
        assert name in sft, f"02_train_sft builds no {name[:-1]} in a code cell"
    assert "PeftModel.from_pretrained(" in dpo and "Config(**train.config_kwargs(" in dpo and "Trainer(\n" in dpo
    for m in stages.methods():  # DPOConfig/DPOTrainer, KTOConfig/KTOTrainer, ... named where 03 builds them
        if m.stage == "03_train_dpo":
            for cls in (m.config, m.trainer):
                assert cls.split(":")[1] in dpo, f"03_train_dpo's code cells never name {cls}"
    for stem in ("02_train_sft", "03_train_dpo"):
        checks = [c for c in code[stem] if "check_yourself.check(" in c]
        assert len(checks) >= 3, f"{stem} has {len(checks)} check-yourself cells; a lesson has at least three"
