"""The headless runner and papermill runs of the notebooks on the tiny model.

Run: .venv/bin/python -m pytest tests/test_pipeline.py
"""

import json
import os
import platform
import subprocess
import sys

import papermill as pm
import pytest

from ftlab.core.params import ParamError
from ftlab.core.paths import notebooks_dir, repo_root
from ftlab.runner import pipeline

CI = repo_root() / "params" / "ci.yaml"


def _ftlab(*args, outputs, **env_extra):
    env = {**os.environ, "FTLAB_OUTPUTS": str(outputs), **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "ftlab", *args], capture_output=True, text=True, env=env, cwd=repo_root(), timeout=600
    )


def test_unknown_parameter_fails_fast_with_valid_names(outputs):
    r = _ftlab("run", "-p", "no_such_param", "1", outputs=outputs)
    assert r.returncode == 2
    assert "unknown parameter(s) 'no_such_param': no notebook declares them" in r.stderr
    names = r.stderr.split("valid names: ", 1)[1].split(". ", 1)[0].split(", ")
    assert {"adapter", "base_model", "run_name", "learning_rate"} <= set(names) and names == sorted(names)
    assert list(outputs.iterdir()) == []  # nothing ran, nothing written


def test_a_parameter_where_a_stage_number_goes_says_how_to_set_it(outputs, capsys):
    from ftlab.runner import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["run", "-f", str(CI), "run_name=x"])
    assert e.value.code == 2 and list(outputs.iterdir()) == []
    err = capsys.readouterr().err
    assert "expected a stage number such as 2 or 02, found 'run_name=x' (to set a parameter: -p NAME VALUE)" in err
    assert cli._stage_number("2") == "02" == cli._stage_number("02")


def test_several_parameter_files_merge_in_order_the_last_one_winning(outputs, tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("run_name: mine\nmin_ram_gb: 0.2\n")
    r = _ftlab("run", "-f", str(CI), "-f", str(extra), "0", outputs=outputs)
    assert r.returncode == 0, r.stderr[-2000:]
    params = json.loads((outputs / "mine" / "manifest.json").read_text())["stages"]["00_check_environment"]["params"]
    assert params["base_model"] == "tiny-random" and params["min_ram_gb"] == 0.2  # ci.yaml's, then mine.yaml's
    assert params["min_free_disk_gb"] == 1.0  # ci.yaml's value, which mine.yaml does not set


def test_a_notebooks_own_section_reaches_that_notebook_only_and_wins(tmp_path):
    f = tmp_path / "scoped.yaml"
    f.write_text("learning_rate: 0.001\n02_train_sft:\n  learning_rate: 0.002\n03_train_dpo:\n  beta: 0.2\n")
    given = {**pipeline.load_params_file([CI, f]), "03_train_dpo.learning_rate": 1e-5}  # as -p NOTEBOOK.NAME gives it
    planned = {nb.stem: inject for nb, inject in pipeline.plan(pipeline.list_notebooks("02", "04"), given)}
    assert planned["02_train_sft"]["learning_rate"] == 0.002  # its section wins over the top level
    assert planned["03_train_dpo"]["learning_rate"] == 1e-5 and planned["03_train_dpo"]["beta"] == 0.2
    assert "learning_rate" not in planned["04_merge_export"] and "beta" not in planned["02_train_sft"]
    with pytest.raises(ParamError, match="02_train_sft does not declare 'beta'; its parameters: "):
        pipeline.plan(pipeline.list_notebooks(), {"02_train_sft.beta": 0.1})
    with pytest.raises(ParamError, match="'09_nothing' is not a notebook of the series"):
        pipeline.plan(pipeline.list_notebooks(), {"09_nothing.beta": 0.1})
    f.write_text("03_train_dpo: 0.1\n")
    with pytest.raises(ParamError, match="'03_train_dpo' names a notebook, so its value must be a mapping"):
        pipeline.load_params_file(f)


def test_bad_value_fails_before_running(outputs):
    with pytest.raises(ParamError, match="min_ram_gb='lots'"):
        pipeline.plan(pipeline.list_notebooks(), {"min_ram_gb": "lots"})


def test_stage_00_runs_headless_on_the_tiny_model(outputs, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    r = _ftlab("run", "--to", "00", "-f", str(CI), outputs=outputs, HOME=str(home))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list(home.rglob("*")), list(home.rglob("*"))  # IPython, matplotlib, Jupyter: nothing in the home
    run = outputs / "ci-tiny"
    assert "[1/1] 00_check_environment ok" in r.stdout and f"run folder: {run}" in r.stdout
    assert "without encryption" not in r.stdout + r.stderr  # the kernel's start-up noise is gone
    table = [x for x in r.stdout.splitlines() if x.startswith("| 00_check_environment |")]
    assert table and table[0].endswith(
        f"ok True, device.type cpu, device.name {platform.processor() or platform.machine()} |"
    ), table
    report = json.loads((run / "00_check_environment" / "report.json").read_text())
    assert report["ok"] and {c["name"] for c in report["checks"]} >= {"python", "disk", "bitsandbytes 4-bit", "chat"}
    manifest = json.loads((run / "manifest.json").read_text())
    st = manifest["stages"]["00_check_environment"]
    assert st["status"] == "complete" and st["params"]["base_model"] == "tiny-random"
    assert (run / "notebooks" / "00_check_environment.ipynb").exists()


def test_failing_stage_stops_with_its_error_and_nonzero_exit(outputs):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    r = _ftlab("run", "00", "-f", str(CI), "-p", "require_gpu", "true", "-p", "chat_check", "false", outputs=outputs)
    assert r.returncode == 1
    assert "00_check_environment FAILED" in r.stdout
    assert "RuntimeError: environment check failed: gpu" in r.stderr
    manifest = json.loads((outputs / "ci-tiny" / "manifest.json").read_text())
    assert manifest["stages"]["00_check_environment"]["status"] == "running"  # never marked complete


def test_direct_papermill_with_unknown_parameter_fails_in_the_resolve_cell(outputs, tmp_path):
    nb = notebooks_dir() / "00_check_environment.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(
            str(nb),
            str(tmp_path / "out.ipynb"),
            parameters={"run_name": "x", "lora_rank": 8},
            kernel_name=pipeline.ensure_kernel(),
            cwd=str(nb.parent),
            progress_bar=False,
        )
    assert e.value.ename == "ParamError" and "lora_rank" in e.value.evalue
    assert not (outputs / "x").exists()
