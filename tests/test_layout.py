"""The layout planner (`ftlab.hardware.parallel`, `python -m ftlab plan`): one GPU, DDP, FSDP-QLoRA or "does not fit", from the
model's config alone, with the launch command; stage 02's fit check takes the per-GPU FSDP estimate under FSDP.

Run: .venv/bin/python -m pytest tests/test_layout.py
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ftlab.core.paths import repo_root
from ftlab.hardware import memory, parallel

GIB = memory.GIB
# Qwen2.5-32B's shape and Llama-3.1-8B's, with their real vocabularies
QWEN_32B = dict(
    model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=5120, intermediate_size=27648,
    num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False,
)  # fmt: skip
S32 = memory.Shape(152064, 5120, 64, 40, 8, 128, 27648, False)
S8 = memory.Shape(128256, 4096, 32, 32, 8, 128, 14336, False)
QLORA = dict(quantization="4bit", lora_r=16, liger=True, gradient_checkpointing=True)


def test_a_model_one_card_holds_trains_alone_or_with_ddp():
    one = parallel.choose(S8, 22 * GIB, 1, batch_size=4, seq_len=2048, **QLORA)
    assert (
        one.kind == parallel.ONE
        and "ftlab.runner.launch 02_train_sft" in one.command
        and "accelerate" not in one.command
    )
    two = parallel.choose(S8, 22 * GIB, 2, batch_size=4, seq_len=2048, params_file="params/x.yaml", **QLORA)
    assert two.kind == parallel.DDP and two.plan is two.single  # each GPU holds the whole model
    assert "accelerate/ddp.yaml --num_processes 2 -m ftlab.runner.launch 02_train_sft -f params/x.yaml" in two.command
    assert two.fsdp.total > two.single.total  # sharding a model that fits only adds the copy loaded on each GPU


def test_the_32b_shape_on_two_24gb_cards_needs_fsdp_with_ram_efficient_loading():
    cfg = dict(batch_size=1, seq_len=2048, **QLORA)
    single = memory.estimate(S32, **cfg)
    assert single.total > 22 * GIB > single.weights  # one card loads it but cannot train it
    today = parallel.choose(S32, 22 * GIB, 2, **cfg)
    assert today.kind == parallel.NONE and today.gpus_needed == 2 and today.command.startswith("python")
    assert "the whole model loaded on each first" in today.why and "not measured yet" in today.why
    lean = parallel.choose(S32, 22 * GIB, 2, ram_efficient=True, **cfg)
    assert lean.kind == parallel.FSDP and lean.plan.total < 22 * GIB * parallel.FIT_SHARE
    assert "accelerate/fsdp_qlora.yaml --num_processes 2" in lean.command
    # what is split shrinks with the GPUs; the activations of each GPU's own micro-batch do not
    four = parallel.fsdp_estimate(S32, 4, ram_efficient=True, **cfg)
    assert four.total < lean.plan.total < single.total and four.activations == lean.plan.activations
    assert lean.plan.weights < single.weights / 2 + (S32.other_params() * 2) + 1 * GIB  # root unit + 2 layers whole
    assert parallel.choose(S32, 8 * GIB, 2, **cfg).gpus_needed is None  # not even 8 cards of 8 GiB
    assert "does not fit" in parallel.describe(today) and "launch:" not in parallel.describe(today)


def test_the_fsdp_estimate_goes_the_way_the_one_fsdp_measurement_went():
    """8B on two H200s: FSDP's per-GPU peak was 1.64x one GPU's, because each process loads the whole model first."""
    got = json.loads((repo_root() / "benchmarks" / "results" / "multi_gpu_8b_h200x2.json").read_text())
    measured = got["ratios"]["fsdp"]["per_gpu_peak_allocated_vs_one_gpu"]
    cfg = dict(batch_size=got["config"]["per_device_batch"], seq_len=got["config"]["seq"], **QLORA)
    estimated = parallel.fsdp_estimate(S8, 2, **cfg).total / memory.estimate(S8, **cfg).total
    assert measured > 1.2 and estimated > 1.2, (measured, estimated)


def test_under_fsdp_stage_02_checks_the_per_gpu_estimate(monkeypatch):
    cfg = dict(batch_size=1, seq_len=2048, **QLORA)
    plan = memory.training_plan(
        S32, 22 * GIB, True, "off", **{k: v for k, v in cfg.items() if k != "gradient_checkpointing"}
    )
    check, text = parallel.for_stage(S32, plan, 22 * GIB, 1, **cfg)
    assert check is plan and "does not fit" in text
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    check, text = parallel.for_stage(S32, plan, 22 * GIB, 1, **cfg)
    assert check.total < 22 * GIB * parallel.FIT_SHARE < plan.total and text.startswith("FSDP over 2 processes")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    assert parallel.for_stage(S32, plan, 22 * GIB, 1, **cfg)[0].total > plan.total
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")  # DDP: the whole model on each GPU
    assert parallel.for_stage(S32, plan, 22 * GIB, 2, **cfg)[0] is plan


@pytest.mark.parametrize(("gib", "rc", "says"), [(22, 1, "FSDP with CPU-RAM-efficient loading"), (80, 0, "DDP")])
def test_ftlab_plan_answers_from_a_config_folder(tmp_path, gib, rc, says):
    (tmp_path / "config.json").write_text(json.dumps(QWEN_32B))
    cmd = [sys.executable, "-m", "ftlab", "plan", "--gpus", "2", "--gpu-gib", str(gib), "-p", "base_model"]
    p = subprocess.run(
        [*cmd, str(tmp_path), "-p", "batch_size", "1", "-p", "max_length", "2048"],
        capture_output=True, text=True, cwd=repo_root(), timeout=300,
    )  # fmt: skip
    assert p.returncode == rc, p.stdout + p.stderr
    assert says in p.stdout and "32,763,417,600" in p.stdout  # the model's parameters, counted from its config
    bad = subprocess.run([*cmd[:-2], "-p", "lora_rank", "8"], capture_output=True, text=True, cwd=repo_root())
    assert bad.returncode == 2 and "unknown parameter(s) 'lora_rank'" in bad.stderr


def test_a_memory_cap_rehearses_a_smaller_card(monkeypatch):
    """FTLAB_GPU_CAP_GIB=22 on an 80 GiB GPU (CUDA mocked): the allocator is capped and the planner plans for 22."""
    import torch

    from ftlab.hardware import devices

    fractions = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 80 * GIB})())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, i: fractions.append((f, i)))
    assert memory.device_limit() == (80 * GIB, "GPU memory") and fractions == []
    monkeypatch.setenv(devices.CAP_VARIABLE, "22")
    limit, name = memory.device_limit()
    assert limit == 22 * GIB and "capped" in name and fractions == [(22 / 80, 0)]
    monkeypatch.setenv(devices.CAP_VARIABLE, "200")  # more than the card: the card's own memory
    assert memory.device_limit()[0] == 80 * GIB and fractions[-1] == (1.0, 0)
