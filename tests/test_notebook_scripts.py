"""The training lessons read like a tutorial a user could copy into a script, and the objects in their cells are the
ones that train.

Each test edits a copy of the notebook as a learner would (values in the parameters cell, a field of a config object
in the cell that builds it), turns it into a plain Python file with `jupyter nbconvert --to script`, and runs that
file with `python` in an empty folder: no kernel, no papermill, no ftlab launcher. The trainer the script builds
must train with the edited config, and summary.json and the manifest must record it (beside the parameters cell's
value, which the edit overrode).

Run: .venv/bin/python -m pytest tests/test_notebook_scripts.py
"""

import json
import subprocess
import sys

import nbformat
from conftest import TINY

from ftlab.core.paths import notebooks_dir
from ftlab.runner import launch

# appended to the script: what the trainer it built trained with
FACTS = """
import json as _json

_lora_r = {m.r["default"] for m in trainer.model.modules() if isinstance(getattr(m, "r", None), dict)}
_facts = {"same_args": trainer.args is args, "initial_lr": trainer.optimizer.param_groups[0]["initial_lr"]}
_facts |= {"lora_r": sorted(_lora_r), "beta": getattr(trainer, "beta", None), "trainable": job.trainable_params}
_json.dump(_facts, open("facts.json", "w"))
"""


def _run_as_script(stem, tmp_path, values, edits):
    """`stem`'s notebook with `values` appended to its parameters cell and each `(needle, line)` of `edits` added to
    the code cell containing needle, converted by nbconvert and run with python in tmp_path; returns the facts."""
    nb = nbformat.read(notebooks_dir() / f"{stem}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = next(c for c in code if "parameters" in c.metadata.get("tags", []))
    params.source += "\n" + launch.injected_source(values)  # the learner's values, as papermill writes them
    for needle, line in edits:
        cell = next(c for c in code if needle in c.source)
        cell.source += f"\n{line}  # the learner's edit"
    nbformat.write(nb, tmp_path / f"{stem}.ipynb")
    subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "script", f"{stem}.ipynb", "--log-level=WARN"],
        cwd=tmp_path,
        check=True,
    )
    script = tmp_path / f"{stem}.py"
    assert "get_ipython" not in script.read_text()  # no magics: plain Python
    script.write_text(script.read_text() + FACTS)
    p = subprocess.run([sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads((tmp_path / "facts.json").read_text()), p.stdout


def _recorded(outputs, run_name, stage):
    summary = json.loads((outputs / run_name / stage / "summary.json").read_text())
    return summary, json.loads((outputs / run_name / "manifest.json").read_text())["stages"][stage]


def test_02_as_a_script_trains_with_the_sftconfig_and_loraconfig_edited_in_its_cells(tiny_run, outputs, tmp_path):
    tiny_run("script02", stages=("01_prepare_data",))
    values = {"run_name": "script02", **TINY["02_train_sft"], "max_steps": 2, "eval_steps": 0, "forecast_rows": 0}
    edits = [("SFTConfig(**", "args.learning_rate = 0.001"), ("LoraConfig(", "peft_config.r = 4")]
    facts, out = _run_as_script("02_train_sft", tmp_path, values, edits)
    assert facts["same_args"] and facts["initial_lr"] == 0.001 and facts["lora_r"] == [4]
    s, entry = _recorded(outputs, "script02", "02_train_sft")
    assert s["config"]["learning_rate"] == 0.001 and s["steps"] == 2 and s["trainable_params"] == facts["trainable"]
    assert entry["trained_with"]["learning_rate"] == 0.001  # what trained, beside the parameters cell's value
    assert entry["params"]["learning_rate"] == TINY["02_train_sft"]["learning_rate"]
    assert "step 2/2" in out  # the dashboard prints its lines where no browser shows widgets (plain Python)


def test_03_as_a_script_trains_with_the_dpoconfig_edited_in_its_cell(tiny_run, outputs, tmp_path):
    tiny_run("script03")  # the shared series' stages 01 and 02
    values = {"run_name": "script03", **TINY["03_train_dpo"], "max_steps": 2, "eval_steps": 0, "forecast_rows": 0}
    edits = [("Config(**train.config_kwargs(", "args.learning_rate = 0.004\nargs.beta = 0.3")]
    facts, _ = _run_as_script("03_train_dpo", tmp_path, values, edits)
    assert facts["same_args"] and facts["initial_lr"] == 0.004 and facts["beta"] == 0.3
    s, entry = _recorded(outputs, "script03", "03_train_dpo")
    assert s["method"] == "dpo" and s["steps"] == 2 and s["config"]["beta"] == 0.3
    assert entry["trained_with"]["learning_rate"] == 0.004 and entry["params"]["beta"] == 0.1
