"""`python -m ftlab.runner.launch`, the entry point `accelerate launch` runs: the notebook's own code as a process.

One process gives the same adapter as the papermill run of the notebook (same code path); two CPU processes under
torchrun (gloo; `accelerate launch` starts GPU processes through the same launcher, with NCCL) train with twice the rows per step,
only the main process writes the stage's files, and every rank reports itself.

Run: .venv/bin/python -m pytest tests/test_launch.py
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import TINY_SFT
from safetensors.torch import load_file

from ftlab.core.paths import repo_root
from ftlab.runner import launch


def _only_stage01(tiny_run, name):
    return tiny_run(name, stages=("01_prepare_data",))


def _args(run_name):
    return ["02_train_sft", *[x for k, v in {**TINY_SFT, "run_name": run_name}.items() for x in ("-p", k, str(v))]]


def _launch(cmd, outputs):
    env = {**os.environ, "FTLAB_OUTPUTS": str(outputs), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=repo_root(), env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _adapter(run):
    return load_file(str(run / "02_train_sft" / "adapter" / "adapter_model.safetensors"))


def test_one_process_runs_the_notebooks_code_to_the_same_adapter(tiny_run, tiny_series, outputs):
    run = _only_stage01(tiny_run, "single")
    _launch([sys.executable, "-m", "ftlab.runner.launch", *_args("single")], outputs)
    ref, got = _adapter(tiny_series), _adapter(run)  # the session's papermill run of notebook 02, same parameters
    assert got.keys() == ref.keys()
    assert max((got[k] - ref[k]).abs().max().item() for k in ref) < 1e-5
    s = json.loads((run / "02_train_sft" / "summary.json").read_text())
    assert s["processes"] == 1 and s["steps"] == TINY_SFT["max_steps"] and s["last_loss"] < s["first_loss"]
    info = json.loads((run / "02_train_sft" / "launch" / "launch.json").read_text())
    assert info["world_size"] == 1 and info["tokens_per_s"] == s["tokens_per_s"]


def test_two_processes_under_accelerate_launch(tiny_run, tiny_series, outputs):
    run = _only_stage01(tiny_run, "ddp")
    # accelerate's multi-GPU launcher is torch's elastic launcher (torchrun); on a CPU `accelerate launch --cpu` runs
    # one process unless MPI is set up, so the test starts torchrun itself. The Trainer picks gloo on a CPU.
    _launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "ftlab.runner.launch",
            *_args("ddp"),
        ],
        outputs,
    )
    st = run / "02_train_sft"
    info = json.loads((st / "launch" / "launch.json").read_text())
    assert info["world_size"] == 2 and info["distributed_type"] == "MULTI_CPU"
    assert [r["rank"] for r in info["ranks"]] == [0, 1] and all(r["seconds"] > 0 for r in info["ranks"])
    s = json.loads((st / "summary.json").read_text())
    one = json.loads((tiny_series / "02_train_sft" / "summary.json").read_text())
    assert s["processes"] == 2 and s["steps"] == TINY_SFT["max_steps"]
    # each step took a batch on each process: the gathered token count is about twice one process's
    assert s["train_tokens"] > 1.6 * one["train_tokens"], (s["train_tokens"], one["train_tokens"])
    assert s["last_loss"] < s["first_loss"] and s["eval_loss_after"] < s["eval_loss_before"]
    steps = [json.loads(x)["step"] for x in (st / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == list(range(1, TINY_SFT["max_steps"] + 1))  # written once, by the main process
    assert (st / "checkpoints" / f"checkpoint-{TINY_SFT['max_steps']}" / "CHECKPOINT_COMPLETE").exists()
    got, one_adapter = _adapter(run), _adapter(tiny_series)
    assert got.keys() == one_adapter.keys()  # a whole adapter, trained on other rows than one process saw
    assert not (st / "adapter" / "training_args.bin").exists()  # no pickle beside the safetensors
    assert max((got[k] - one_adapter[k]).abs().max().item() for k in got) > 1e-4
    assert "eval loss after training" in (st / "launch" / "rank1.log").read_text()  # rank 1 ran, quietly
    m = json.loads((run / "manifest.json").read_text())
    assert m["stages"]["02_train_sft"]["status"] == "complete"


def test_several_processes_only_for_stages_built_for_them(monkeypatch, capsys, resilience):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch.main(["03_train_dpo", "-p", "run_name", "x"]) == 2
    err = capsys.readouterr().err
    assert "03_train_dpo runs as one process only" in err and "02_train_sft" in err
    monkeypatch.delenv("WORLD_SIZE")
    assert launch.main(["02", "-p", "lora_rank", "8"]) == 2
    assert "unknown parameter(s) 'lora_rank'" in capsys.readouterr().err
    assert launch.main(["09"]) == 2
    assert "no single notebook matches '09'" in capsys.readouterr().err
    monkeypatch.setenv(
        "ACCELERATE_USE_FSDP", "true"
    )  # accelerate launch --config_file fsdp_qlora.yaml --num_processes 1
    assert launch.main(["02", "-p", "run_name", "x"]) == 2
    assert "FSDP needs two or more GPUs" in capsys.readouterr().err
    resilience("bad", 4)


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp_qlora.yaml"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(repo_root() / "lib" / "ftlab" / "accelerate" / name))
    assert cfg.num_processes == 2 and cfg.mixed_precision == "no"
    if name.startswith("fsdp"):
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # the adapter is saved whole
