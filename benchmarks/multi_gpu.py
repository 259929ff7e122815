"""Stage 02 on several GPUs of one machine: one process vs DDP vs FSDP-QLoRA, through `python -m ftlab.runner.launch`.

    PYTHONPATH=lib python benchmarks/multi_gpu.py --shape llama-1b-shape --out benchmarks/results/multi_gpu.json

Builds a random-weight Llama of the chosen shape (the SmolLM2 tokenizer of the cached `tiny-random` model; no
download), writes multi-turn conversations of the bundled pydoc_qa data packed to about `--seq` tokens, runs stage 01
once on them, then stage 02 (QLoRA NF4, LoRA all-linear) three times with the same parameters:
  1. one process:          python -m ftlab.runner.launch 02_train_sft ...
  2. DDP on N GPUs:        accelerate launch --config_file lib/ftlab/accelerate/ddp.yaml --num_processes N -m ftlab.runner.launch ...
  3. FSDP-QLoRA on N GPUs: accelerate launch --config_file lib/ftlab/accelerate/fsdp_qlora.yaml ...
The per-device batch is the same, so N processes train N times the rows per step. Reports each run's tokens/s
(non-padding tokens over the whole training loop, and the median of the logged intervals after the first), the
per-GPU training peak memory of every rank, the losses, and the ratios against one process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from sft_memory import VOCAB, build

from ftlab import data, models
from ftlab.core import runs
from ftlab.core.paths import repo_root, stage_dir


def sh(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int, float]:
    t = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=repo_root(), env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return rc, round(time.time() - t, 1)


def mixed_rows(tokenizer, target: int, n: int, seed: int = 0) -> list[dict]:
    """`n` distinct multi-turn conversations of about `target` tokens: bundled Q/A pairs drawn at random (stage 01
    rejects duplicate rows, so repeating the data in order would not do)."""
    import random

    rows, _, _ = data.load(data.resolve_data_path("data/pydoc_qa/sft.jsonl"))
    pairs = [r.data["messages"] for r in rows]
    cost = [
        len(tokenizer(tokenizer.apply_chat_template(m, tokenize=False)).input_ids) - 20 for m in pairs
    ]  # minus the system prompt
    rng, out = random.Random(seed), []
    for _ in range(n):
        msgs, total = [], 40
        for i in rng.sample(range(len(pairs)), len(pairs)):
            if total + cost[i] > target:
                break
            msgs += pairs[i]
            total += cost[i]
        out.append({"messages": msgs})
    return out


def steady_tokens_per_s(run: str) -> float | None:
    metrics = [json.loads(x) for x in (stage_dir(run, "02_train_sft") / "metrics.jsonl").read_text().splitlines()]
    rates = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m][1:]  # the first interval holds the warm-up
    return round(statistics.median(rates), 1) if rates else None


def _fresh_run(work: Path, run: str) -> None:
    """A copy of the stage-01 run `prep` under `run`."""
    shutil.copytree(work / "outputs" / "prep", work / "outputs" / run)
    m = json.loads((work / "outputs" / run / "manifest.json").read_text())
    (work / "outputs" / run / "manifest.json").write_text(json.dumps({**m, "run_name": run}))


def _adapter(work: Path, run: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(work / "outputs" / run / "02_train_sft" / "adapter" / "adapter_model.safetensors"))


def resume_check(work: Path, env: dict, launcher: list[str], train_p: list[str], steps: int, crash: int) -> dict:
    """Under the launcher (FSDP): an uninterrupted run of `steps` steps, checkpoints every 2; a second run killed
    after step `crash` (the test suite's fault injector, tests/hooks), then started again with the same command: it
    must resume from the last complete checkpoint and end where the uninterrupted run ended."""
    p = [*train_p, "-p", "max_steps", str(steps), "-p", "save_steps", "2"]
    rec: dict = {"steps": steps, "killed_after_step": crash}
    _fresh_run(work, "resume-ref")
    rc, rec["uninterrupted_wall_s"] = sh(
        [*launcher, "02_train_sft", "-p", "run_name", "resume-ref", *p], work / "logs" / "resume-ref.log", env
    )
    _fresh_run(work, "resume-kill")
    cmd = [*launcher, "02_train_sft", "-p", "run_name", "resume-kill", *p]
    hooks = str(repo_root() / "tests" / "hooks")
    crash_env = {
        **env,
        "FTLAB_CRASH_AT_STEP": str(crash),
        "PYTHONPATH": os.pathsep.join((hooks, env.get("PYTHONPATH", ""))),
    }
    rc_kill, _ = sh(cmd, work / "logs" / "resume-kill-1.log", crash_env)
    rc_again, rec["resumed_wall_s"] = sh(cmd, work / "logs" / "resume-kill-2.log", env)
    rec.update(rc_uninterrupted=rc, rc_killed=rc_kill, rc_resumed=rc_again)
    if rc or rc_again or not rc_kill:
        rec["log_tail"] = (work / "logs" / ("resume-ref.log" if rc else "resume-kill-2.log")).read_text()[-3000:]
        return rec
    summary = json.loads((work / "outputs" / "resume-kill" / "02_train_sft" / "summary.json").read_text())
    ref, got = _adapter(work, "resume-ref"), _adapter(work, "resume-kill")
    diff = max((got[k].float() - ref[k].float()).abs().max().item() for k in ref)
    scale = max(ref[k].float().abs().max().item() for k in ref)
    metrics = (work / "outputs" / "resume-kill" / "02_train_sft" / "metrics.jsonl").read_text().splitlines()
    rec.update(
        resumed_from=summary["resumed_from"],
        steps_done=summary["steps"],
        logged_steps=[json.loads(x)["step"] for x in metrics if '"loss"' in x],
        same_keys=ref.keys() == got.keys(),
        adapter_max_abs_diff=diff,
        adapter_max_abs=scale,
        last_loss=summary["last_loss"],
        uninterrupted_last_loss=json.loads(
            (work / "outputs" / "resume-ref" / "02_train_sft" / "summary.json").read_text()
        )["last_loss"],
    )
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", default="llama-1b-shape")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    ap.add_argument("--only", nargs="*", default=["single", "ddp", "fsdp"], help="runs: single ddp fsdp fsdp_resume")
    ap.add_argument("--cap-gib", type=float, default=None, help="cap each process's GPU memory (FTLAB_GPU_CAP_GIB)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary of the random model (default: the shape's own)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="steps of an unreported one-process run first (Triton "
        "kernels compile and the page cache fills once, not inside the first measured run)",
    )
    a = ap.parse_args()
    work = Path(os.environ.get("FTLAB_BENCH_DIR", "/tmp/ftlab-multi-gpu"))
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    tok = models.load_tokenizer("tiny-random")
    base = build(a.shape, work / "base", tok, vocab=a.vocab or VOCAB.get(a.shape))
    rows = mixed_rows(tok, a.seq, 64 * a.batch * max(1, a.gpus))
    with open(work / "long.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    env = {**os.environ, "FTLAB_OUTPUTS": str(work / "outputs")}
    if a.cap_gib:
        env["FTLAB_GPU_CAP_GIB"] = str(a.cap_gib)
    common = ["-p", "base_model", str(base), "-p", "max_length", str(a.seq + 64)]
    rc, s01 = sh(
        [
            sys.executable,
            "-m",
            "ftlab",
            "run",
            "01",
            "-p",
            "run_name",
            "prep",
            "-p",
            "data_path",
            str(work / "long.jsonl"),
            "-p",
            "prefs_path",
            "",
            "-p",
            "eval_fraction",
            "0.05",
            *common,
        ],
        work / "logs" / "01.log",
        env,
    )
    assert rc == 0, (work / "logs" / "01.log").read_text()[-3000:]
    train_p = [
        *common,
        "-p",
        "quantization",
        "4bit",
        "-p",
        "batch_size",
        str(a.batch),
        "-p",
        "max_steps",
        str(a.steps),
        "-p",
        "lora_r",
        str(a.rank),
        "-p",
        "lora_alpha",
        str(2 * a.rank),
        "-p",
        "eval_steps",
        "0",
        "-p",
        "save_steps",
        str(10 * a.steps),
        "-p",
        "logging_steps",
        "5",
        "-p",
        "forecast_rows",
        "0",
        "-p",
        "learning_rate",
        "0.0005",
    ]
    cfg = repo_root() / "lib" / "ftlab" / "accelerate"
    launchers = {
        "single": [sys.executable, "-m", "ftlab.runner.launch"],
        "ddp": [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(cfg / "ddp.yaml"),
            "--num_processes",
            str(a.gpus),
            "-m",
            "ftlab.runner.launch",
        ],
        "fsdp": [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(cfg / "fsdp_qlora.yaml"),
            "--num_processes",
            str(a.gpus),
            "-m",
            "ftlab.runner.launch",
        ],
    }
    results: dict[str, dict] = {}
    if "fsdp_resume" in a.only:
        results["fsdp_resume"] = resume_check(work, env, launchers["fsdp"], train_p, steps=6, crash=5)
        print("fsdp_resume", {k: v for k, v in results["fsdp_resume"].items() if k != "log_tail"}, flush=True)
    for name in (["warmup"] if a.warmup else []) + [n for n in a.only if n != "fsdp_resume"]:
        run = f"bench-{name}"
        _fresh_run(work, run)
        cmd = [*launchers[name.replace("warmup", "single")], "02_train_sft", "-p", "run_name", run, *train_p]
        if name == "warmup":
            cmd += ["-p", "max_steps", str(a.warmup)]
        # one process sees one GPU (with several visible the Trainer would fall back to nn.DataParallel)
        one_gpu = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
        rc, wall = sh(cmd, work / "logs" / f"{name}.log", {**env, **(one_gpu if name in ("single", "warmup") else {})})
        if name == "warmup":
            print(f"warm-up run: rc {rc}, {wall} s", flush=True)
            continue
        rec: dict = {"command": " ".join(cmd[1:] if cmd[0] == sys.executable else cmd), "rc": rc, "wall_s": wall}
        if rc != 0:
            rec["log_tail"] = (work / "logs" / f"{name}.log").read_text()[-4000:]
            results[name] = rec
            print(name, "FAILED", rec["log_tail"][-1500:], flush=True)
            continue
        os.environ["FTLAB_OUTPUTS"] = str(work / "outputs")
        info = json.loads((stage_dir(run, "02_train_sft") / "launch" / "launch.json").read_text())
        summary = json.loads((stage_dir(run, "02_train_sft") / "summary.json").read_text())
        rec.update(
            world_size=info["world_size"],
            distributed_type=info["distributed_type"],
            tokens_per_s=info["tokens_per_s"],
            steady_tokens_per_s=steady_tokens_per_s(run),
            train_seconds=info["train_seconds"],
            train_tokens=info["train_tokens"],
            steps=info["steps"],
            first_loss=summary["first_loss"],
            last_loss=summary["last_loss"],
            eval_loss_before=summary["eval_loss_before"],
            eval_loss_after=summary["eval_loss_after"],
            per_gpu_train_peak=[r.get("train_peak") for r in info["ranks"]],
            per_gpu_process_peak_allocated_gib=[r.get("process_peak_allocated_gib") for r in info["ranks"]],
            per_rank_host_peak_rss_gib=[r.get("host_peak_rss_gib") for r in info["ranks"]],
            load_seconds=summary.get("load_seconds"),
            planner_estimate_gib=summary["memory"]["estimate_gib"]["total"],
        )
        results[name] = rec
        print(name, {k: rec[k] for k in ("tokens_per_s", "steady_tokens_per_s", "per_gpu_train_peak")}, flush=True)
    one = results.get("single", {})
    ratios = {}
    for name in ("ddp", "fsdp"):
        r = results.get(name, {})
        if one.get("tokens_per_s") and r.get("tokens_per_s"):
            ratios[name] = {
                "tokens_per_s_vs_one_gpu": round(r["tokens_per_s"] / one["tokens_per_s"], 3),
                "steady_tokens_per_s_vs_one_gpu": round(r["steady_tokens_per_s"] / one["steady_tokens_per_s"], 3),
                "per_gpu_peak_allocated_vs_one_gpu": round(
                    max(p["allocated_gib"] for p in r["per_gpu_train_peak"])
                    / one["per_gpu_train_peak"][0]["allocated_gib"],
                    3,
                ),
            }
    out = {
        "what": __doc__.split("\n\n")[0],
        "command": "PYTHONPATH=lib python benchmarks/multi_gpu.py " + " ".join(sys.argv[1:]),
        "date": runs.now(),
        "host": platform.node(),
        "device": {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()},
        "versions": runs.package_versions(
            ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "liger_kernel")
        ),
        "config": {
            "shape": a.shape,
            "seq": a.seq,
            "per_device_batch": a.batch,
            "steps": a.steps,
            "lora_r": a.rank,
            "gpus": a.gpus,
            "gpu_cap_gib": a.cap_gib,
            "quantization": "4bit nf4 double-quant, quant_storage bf16",
        },
        "stage01_seconds": s01,
        "runs": results,
        "ratios": ratios,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
