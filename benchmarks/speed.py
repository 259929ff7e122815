"""Stage 02's training path against the tutorial recipe ("recipe B"), same GPU, same data, same seed.

    PYTHONPATH=lib python benchmarks/speed.py --out benchmarks/results/speed_h100.json

Recipe B is what the tutorials do: load the base in 4-bit NF4 (double quantization, bf16 compute), call
`peft.prepare_model_for_kbit_training` (which upcasts embeddings, norms and lm_head to fp32), wrap it with
`get_peft_model` (LoRA r16 on all linear layers), and train with TRL's SFTTrainer on padded batches.
Ours is exactly what stage 02 builds: `ftlab.models.load_model(.., "4bit")` (non-linear weights stay bf16), TRL's
SFTTrainer with `ftlab.train.method_args` (Liger kernels, padding-free batches, non-reentrant checkpointing) and the
LoRA config of `ftlab.train.lora_config`. Both use 8-bit AdamW (non-paged), gradient checkpointing, sdpa.

Two workloads on a random-weight model of the chosen shape (no download): `fixed` (every row exactly --seq tokens)
and `mix` (row lengths drawn from the bundled pydoc_qa conversations' templated lengths, scaled so the longest is
--seq: padded batches waste most of their compute there). Every (recipe, workload) runs in its own process, so
memory left by one cannot inflate the next. Reported per run: seconds per step and useful (non-padding) tokens/s
over the steady steps (after --warmup), peak allocated and reserved memory, MFU (6 x non-embedding parameters x
useful tokens/s over the GPU's dense bf16 peak), and the per-step losses; ratios against recipe B; and whether our
losses stay within 1% of recipe B's (the same rows in the same order, including where the batch shape changes).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_memory import SHAPES, build  # noqa: E402  (same random-weight shapes as the memory benchmark)

# Qwen3-14B's decoder shape (its 151,936-token vocabulary is replaced by the bundled tokenizer's 49,152)
SHAPES["qwen3-14b-shape"] = dict(
    hidden_size=5120,
    intermediate_size=17408,
    num_hidden_layers=40,
    num_attention_heads=40,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=False,
)

from ftlab import data, memory, models, stages, train  # noqa: E402
from ftlab.paths import repo_root  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}  # dense
# ours, and one change at a time on top of it: (attention implementation, stage-02 parameter overrides)
VARIANTS = {
    "ftlab": (None, {}),  # stage 02's defaults
    "ftlab_padded": (None, {"padding_free": "off"}),
    "ftlab_free": (None, {"padding_free": "on"}),  # padding-free rows under sdpa (dense block-diagonal mask)
    "ftlab_flex_free": ("flex_attention", {"padding_free": "on"}),  # padding-free with a block-sparse mask
    "ftlab_no_offload": (None, {"activation_offloading": "off"}),
    "ftlab_offload": (None, {"activation_offloading": "on"}),  # checkpointed activations kept in CPU memory
    "ftlab_chunked": (None, {"loss_type": "chunked_nll"}),  # the loss without the full logits tensor
    "ftlab_nockpt": (None, {"activation_offloading": "off", "gradient_checkpointing": False}),  # every activation kept
    "ftlab_offload_chunked": (None, {"activation_offloading": "on", "loss_type": "chunked_nll"}),
}
RUNS = [("recipe_b", "fixed"), ("ftlab", "fixed"), ("recipe_b", "mix"), ("ftlab", "mix")]


def token_stream(tokenizer) -> list[int]:
    rows, _, _ = data.load(repo_root() / "data" / "pydoc_qa" / "sft.jsonl")
    ids: list[int] = []
    for r in rows:
        ids += tokenizer.apply_chat_template(r.data["messages"], tokenize=True, return_dict=False)
    return ids


def lengths_for(workload: str, tokenizer, seq: int, n: int, seed: int) -> list[int]:
    if workload == "fixed":
        return [seq] * n
    rows, _, _ = data.load(repo_root() / "data" / "pydoc_qa" / "sft.jsonl")
    lens = [len(tokenizer.apply_chat_template(r.data["messages"], tokenize=True, return_dict=False)) for r in rows]
    scale = seq / max(lens)
    rng = random.Random(seed)
    return [max(16, min(seq, round(rng.choice(lens) * scale))) for _ in range(n)]


def dataset(tokenizer, lengths: list[int]):
    """Windows of the bundled conversations' token stream; every token is trained (all-ones assistant mask)."""
    from datasets import Dataset

    stream, pos, ids = token_stream(tokenizer), 0, []
    for n in lengths:
        if pos + n > len(stream):
            pos = 0
        ids.append(stream[pos : pos + n])
        pos += n
    return Dataset.from_dict({"input_ids": ids, "assistant_masks": [[1] * len(x) for x in ids]})


class StepClock:
    """Useful tokens per step (non-padding: the attention mask's sum, or every token of a padding-free row) and the
    wall time of each optimizer step, synchronised with the GPU."""

    def __init__(self, model):
        self.tokens, self.steps, self._t = 0, [], None
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        if torch.is_grad_enabled():
            am = kwargs.get("attention_mask")
            self.tokens += int(am.sum()) if am is not None else int(kwargs["input_ids"].numel())

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                torch.cuda.synchronize()
                clock._t, clock.tokens = time.perf_counter(), 0

            def on_step_end(self, args, state, control, **kw):
                torch.cuda.synchronize()
                clock.steps.append({"seconds": time.perf_counter() - clock._t, "tokens": clock.tokens})

        return _CB()


def run_one(
    folder: Path,
    recipe: str,
    workload: str,
    batch: int,
    seq: int,
    steps: int,
    warmup: int,
    rank: int = 16,
    dtype: str = "bfloat16",
) -> dict:
    import peft
    from trl import SFTTrainer

    tok = models.load_tokenizer(str(folder))
    lengths = lengths_for(workload, tok, seq, batch * steps, seed=0)
    ds = dataset(tok, lengths)
    attn, overrides = VARIANTS.get(recipe, (None, {}))
    p = {
        "seed": 0,
        "epochs": 1.0,
        "max_steps": steps,
        "batch_size": batch,
        "grad_accum": 1,
        "learning_rate": 2e-4,
        "warmup_steps": 2,
        "optim": "adamw_bnb_8bit",
        "gradient_checkpointing": True,
        "eval_steps": 0,
        "save_steps": 100_000,
        "logging_steps": 1,
        "report_to": "none",
        "max_length": seq,
        "liger": True,
        "padding_free": "auto",
        "activation_offloading": "auto",
        **overrides,
    }
    lora = train.lora_config(rank, 2 * rank, 0.0, "all-linear")
    out_dir = Path(tempfile.mkdtemp())
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    if recipe == "recipe_b":
        model = models.load_model(
            str(folder), quantization="4bit", dtype=getattr(torch, dtype)
        )  # same NF4 + double-quant config as ours
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        torch.manual_seed(0)
        model = peft.get_peft_model(model, lora)
        args = train.method_args(
            stages.method("sft"), out_dir, {**p, "liger": False, "padding_free": "off"}, "cuda", None
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    else:
        model = models.load_model(
            str(folder), quantization="4bit", dtype=getattr(torch, dtype), attn_implementation=attn
        )
        torch.manual_seed(0)
        args = train.method_args(stages.method("sft"), out_dir, p, "cuda", model.config._attn_implementation)
        if dtype == "float16":  # what a V100 (no bf16) runs: fp16 compute with loss scaling
            args.bf16, args.fp16 = False, True
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    load_s = time.time() - t0
    train.quiet(trainer)
    clock = StepClock(trainer.model)
    trainer.add_callback(clock.callback())
    res = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steady = clock.steps[warmup:]
    secs = sum(s["seconds"] for s in steady)
    tok_s = sum(s["tokens"] for s in steady) / secs
    # 6N: the decoder's linear layers plus the lm_head matmul (embedding lookups cost no FLOPs)
    shape = memory.Shape.from_config(models.model_config(str(folder)))
    n_logical = shape.linear_params() + shape.vocab * shape.hidden
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    out = {
        "recipe": recipe,
        "workload": workload,
        "batch_size": batch,
        "seq_len": seq,
        "steps": res.global_step,
        "steady_steps": len(steady),
        "useful_tokens_per_step_mean": round(sum(s["tokens"] for s in steady) / max(1, len(steady)), 1),
        "padded_tokens_per_step_mean": round(
            sum(lengths) / steps if trainer.args.padding_free else _padded(lengths, batch), 1
        ),
        "seconds_per_step": round(secs / max(1, len(steady)), 4),
        "tokens_per_s": round(tok_s, 1),
        "first_step_seconds": round(clock.steps[0]["seconds"], 2),
        "load_seconds": round(load_s, 1),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
        "non_embedding_params": n_logical,
        "mfu_6n": round(6 * n_logical * tok_s / (peak * 1e12), 4) if peak else None,
        "losses": losses,
        "liger": bool(trainer.args.use_liger_kernel),
        "padding_free": bool(trainer.args.padding_free),
        "attn_implementation": trainer.model.config._attn_implementation,
        "overrides": overrides,
    }
    # the memory planner's estimate for this configuration: its allocated part (no CUDA context, no +10% margin)
    # against torch's peak allocated, and its total against the peak reserved + context
    plan = memory.estimate(
        shape,
        quantization="4bit",
        batch_size=batch,
        seq_len=max(lengths),
        lora_r=rank,
        gradient_checkpointing=p["gradient_checkpointing"],
        optim=p["optim"],
        cuda=True,
        liger=bool(trainer.args.use_liger_kernel),
        fp16_compute=dtype == "float16",
    )
    alloc = (plan.total / 1.10 - plan.context) / 2**30
    out["planner"] = {
        "estimate_gib": plan.gib(),
        "allocated_part_gib": round(alloc, 3),
        "allocated_part_over_measured": round(alloc / out["peak_allocated_gib"], 3),
        "offloading": bool(trainer.args.activation_offloading),
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    return out


def _padded(lengths: list[int], batch: int) -> float:
    """Tokens a padded batch computes: every row padded to the batch's longest, averaged over steps."""
    steps = [lengths[i : i + batch] for i in range(0, len(lengths), batch)]
    return sum(max(b) * len(b) for b in steps) / len(steps)  # order differs after shuffling; the mean is close


def worker(a) -> None:
    r = run_one(Path(a.model), a.recipe, a.workload, a.batch, a.seq, a.steps, a.warmup, a.rank, a.dtype)
    Path(a.part).write_text(json.dumps(r))


def summarise(runs: list[dict]) -> dict:
    by = {(r["recipe"], r["workload"]): r for r in runs if "error" not in r}
    out = {}
    for (rec, w), r in by.items():
        base = by.get(("recipe_b", w))
        if rec == "recipe_b" or not base:
            continue
        n = min(10, len(base["losses"]), len(r["losses"]))
        rel = [abs(a - b) / abs(b) for a, b in zip(r["losses"][:n], base["losses"][:n])]
        out[f"{rec}_vs_recipe_b_{w}"] = {
            "tokens_per_s_ratio": round(r["tokens_per_s"] / base["tokens_per_s"], 3),
            "peak_allocated_ratio": round(r["peak_allocated_gib"] / base["peak_allocated_gib"], 3),
            "peak_reserved_ratio": round(r["peak_reserved_gib"] / base["peak_reserved_gib"], 3),
            "loss_max_rel_diff_first_steps": round(max(rel), 5),
            "loss_within_1pct": max(rel) <= 0.01,
            "steps_compared": n,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", default="llama-8b-shape", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing (Triton autotuning)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"), help="compute dtype")
    ap.add_argument("--only", nargs="*", help="recipe:workload pairs to run (default: all)")
    for k in ("model", "recipe", "workload", "part"):
        ap.add_argument(f"--{k}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.part:
        return worker(a)
    import bitsandbytes
    import peft
    import transformers
    import trl

    try:
        import liger_kernel  # noqa: F401

        liger = __import__("importlib.metadata").metadata.version("liger-kernel")
    except ImportError:
        liger = None
    cmd = "PYTHONPATH=lib python benchmarks/speed.py " + " ".join(sys.argv[1:])
    results = {
        "command": cmd,
        "device": torch.cuda.get_device_name(0),
        "date": time.strftime("%Y-%m-%d"),
        "shape": a.shape,
        "config": SHAPES[a.shape],
        "batch_size": a.batch,
        "seq_len": a.seq,
        "lora_r": a.rank,
        "compute_dtype": a.dtype,
        "steps": a.steps,
        "warmup_steps_excluded": a.warmup,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
            "bitsandbytes": bitsandbytes.__version__,
            "liger-kernel": liger,
            "python": platform.python_version(),
        },
        "runs": [],
    }
    root = Path(tempfile.mkdtemp())
    t = time.time()
    folder = build(a.shape, root / a.shape, models.load_tokenizer("tiny-random"))
    results["build_seconds"] = round(time.time() - t, 1)
    print(f"built {a.shape} in {results['build_seconds']} s", flush=True)
    try:
        todo = [tuple(x.split(":")) for x in a.only] if a.only else RUNS
        for recipe, workload, *dt in todo:  # recipe:workload[:float16] overrides --dtype for one run
            dtype = dt[0] if dt else a.dtype
            part = root / f"{recipe}-{workload}-{len(results['runs'])}.json"
            t = time.time()
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--out",
                    a.out,
                    "--model",
                    str(folder),
                    "--recipe",
                    recipe,
                    "--workload",
                    workload,
                    "--batch",
                    str(a.batch),
                    "--seq",
                    str(a.seq),
                    "--steps",
                    str(a.steps),
                    "--warmup",
                    str(a.warmup),
                    "--rank",
                    str(a.rank),
                    "--dtype",
                    dtype,
                    "--part",
                    str(part),
                ],
                capture_output=True,
                text=True,
            )
            r = (
                json.loads(part.read_text())
                if part.exists()
                else {"recipe": recipe, "workload": workload, "error": proc.stderr[-1500:]}
            )
            r["compute_dtype"] = dtype
            r["wall_s"] = round(time.time() - t, 1)
            results["runs"].append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "losses"})[:700], flush=True)
            results["ratios"] = summarise(results["runs"])
            Path(a.out).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results["ratios"], indent=1))


if __name__ == "__main__":
    main()
