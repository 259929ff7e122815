"""Stage 02's training path on a CUDA GPU: the memory planner's estimate against the measured peak, and tokens/s.

    PYTHONPATH=lib python benchmarks/sft_memory.py --out benchmarks/results/sft_memory.json

Builds random-weight Llama models of three shapes (SmolLM2-135M, a 1B and an 8B shape, all with the SmolLM2
tokenizer of the cached `tiny-random` model), saves each and loads it back through `ftlab.models.loading.load_model` (the
real `from_pretrained` path, NF4 4-bit or bf16), then runs the exact trainer stage 02 builds (`ftlab.train.method_args`,
TRL SFTTrainer, LoRA all-linear r16, 8-bit AdamW, gradient checkpointing) on multi-turn rows from the bundled
pydoc_qa data packed to the target length. Reports per config: preflight peak, training peak
(torch.cuda.max_memory_allocated), the planner's estimate, their ratio, and non-padding tokens/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ftlab import data, models, train
from ftlab.core import stages
from ftlab.hardware import memory

SHAPES = {
    "smollm2-135m-shape": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    ),
    "llama-1b-shape": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "llama-8b-shape": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    # Qwen2.5-32B's dimensions in a Llama block (no q/k/v bias: 0.01% of the weights), for the FSDP run of issue 23
    "qwen2.5-32b-shape": dict(
        hidden_size=5120,
        intermediate_size=27648,
        num_hidden_layers=64,
        num_attention_heads=40,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
}
# the families' own vocabularies (random ids beyond the bundled tokenizer's are still valid rows of the embedding)
VOCAB = {"llama-1b-shape": 128_256, "llama-8b-shape": 128_256, "qwen2.5-32b-shape": 152_064}
CONFIGS = [  # (shape, quantization, batch, seq)
    ("smollm2-135m-shape", "4bit", 8, 1024),
    ("llama-1b-shape", "4bit", 4, 2048),
    ("llama-1b-shape", "none", 4, 2048),
    ("llama-8b-shape", "4bit", 4, 2048),
]


def long_rows(tokenizer, target: int, n: int) -> list[dict]:
    """Multi-turn conversations of bundled Q/A pairs, each about `target` tokens long."""
    rows, _, _ = data.load(data.resolve_data_path("data/pydoc_qa/sft.jsonl"))
    pairs = [r.data["messages"] for r in rows]
    # a pair adds its own templated length minus the default system prompt that a conversation has only once
    sys_len = 20  # "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n"
    cost = [len(tokenizer(tokenizer.apply_chat_template(m, tokenize=False)).input_ids) - sys_len for m in pairs]
    out, i = [], 0
    while len(out) < n:
        msgs: list[dict] = []
        total = 40
        while total + cost[i % len(pairs)] <= target:
            msgs += pairs[i % len(pairs)]
            total += cost[i % len(pairs)]
            i += 1
        i += 1
        out.append({"messages": msgs or pairs[i % len(pairs)]})
    return out


def build(shape: str, folder: Path, tokenizer, vocab: int | None = None) -> Path:
    """A random-weight checkpoint of `shape`; `vocab` (default: the tokenizer's) sets the embedding and lm_head rows,
    so a model family's real vocabulary can be timed with the bundled tokenizer's ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab or len(tokenizer),
        max_position_embeddings=131_072,  # Llama 3.1's: the longest-context search goes past 4k
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def run_one(folder: Path, tokenizer, quant: str, batch: int, seq: int, steps: int) -> dict:
    from trl import SFTTrainer

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
        "save_steps": 10_000,
        "logging_steps": 1,
        "report_to": "none",
        "max_length": seq,
        "liger": False,
    }
    t0 = time.time()
    rows = long_rows(tokenizer, seq, batch * (steps + 1))
    print(f"  {len(rows)} rows built in {time.time() - t0:.1f} s", flush=True)
    ds = train.encode_dataset(tokenizer, rows, seq)
    lengths = [len(x) for x in ds["input_ids"]]
    shape = memory.Shape.from_config(models.model_config(str(folder)))
    plan = memory.estimate(shape, quantization=quant, batch_size=batch, seq_len=max(lengths), lora_r=16, cuda=True)
    torch.cuda.reset_peak_memory_stats()
    model = models.load_model(str(folder), quantization=quant)
    weights_gib = torch.cuda.memory_allocated() / memory.GIB
    out_dir = Path(tempfile.mkdtemp())
    live = train.LiveMetrics(out_dir / "metrics.jsonl", log=print)
    trainer = train.quiet(
        SFTTrainer(
            model=model,
            args=train.method_args(stages.method("sft"), out_dir, p, "cuda"),
            train_dataset=ds,
            processing_class=tokenizer,
            peft_config=train.lora_config(16, 32, 0.0, "all-linear"),
            callbacks=[live],
        )
    )
    print(f"  trainer ready, weights {weights_gib:.2f} GiB", flush=True)
    pre = train.preflight(trainer, "")
    print(f"  preflight {pre}", flush=True)
    pre_peak = torch.cuda.max_memory_allocated() / memory.GIB
    torch.cuda.reset_peak_memory_stats()
    t = time.time()
    res = trainer.train()
    secs = time.time() - t
    train_peak = torch.cuda.max_memory_allocated() / memory.GIB
    peak = max(train_peak, pre_peak)
    metrics = train.read_metrics(live.path)
    steady = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m][2:]  # skip warm-up steps
    out = {
        "quantization": quant,
        "batch_size": batch,
        "seq_len_max": max(lengths),
        "tokens_per_batch": sum(lengths[:batch]),
        "weights_loaded_gib": round(weights_gib, 3),
        "preflight_peak_gib": round(pre_peak, 3),
        "train_peak_gib": round(train_peak, 3),
        "peak_allocated_gib": round(peak, 3),
        "estimate_gib": plan.gib(),
        "estimate_over_measured": round(plan.total / memory.GIB / peak, 3),
        "tokens_per_s_steady_median": sorted(steady)[len(steady) // 2] if steady else None,
        "train_seconds": round(secs, 1),
        "steps": res.global_step,
        "preflight": pre,
        "first_loss": metrics[0].get("loss"),
        "last_loss": metrics[-1].get("loss"),
    }
    del trainer, model
    torch.cuda.empty_cache()
    shutil.rmtree(out_dir, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--only", type=int, nargs="*", help="indices into CONFIGS to run (default: all)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        return worker(a.worker, a.steps, Path(a.part))
    import bitsandbytes
    import peft
    import transformers
    import trl

    results = {
        "command": "PYTHONPATH=lib python benchmarks/sft_memory.py --out " + a.out,
        "device": torch.cuda.get_device_name(0),
        "gpu_total_gib": round(torch.cuda.get_device_properties(0).total_memory / memory.GIB, 1),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
            "bitsandbytes": bitsandbytes.__version__,
            "python": platform.python_version(),
        },
        "runs": [],
    }
    # one process per config: a Trainer keeps references to its model, so memory left by one config would inflate
    # the next one's numbers
    for i, (shape, quant, batch, seq) in enumerate(CONFIGS):
        if a.only is not None and i not in a.only:
            continue
        print(f"config {i}: {shape} {quant} batch {batch} seq {seq}", flush=True)
        t = time.time()
        part = Path(tempfile.mkdtemp()) / "r.json"
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--out",
                a.out,
                "--steps",
                str(a.steps),
                "--worker",
                str(i),
                "--part",
                str(part),
            ],
            capture_output=True,
            text=True,
        )
        if part.exists():
            r = json.loads(part.read_text())
        else:
            r = {"quantization": quant, "batch_size": batch, "error": proc.stderr[-800:]}
        r.update(shape=shape, wall_s=round(time.time() - t, 1))
        results["runs"].append(r)
        print(json.dumps(r)[:600], flush=True)
        Path(a.out).write_text(json.dumps(results, indent=1))


def worker(i: int, steps: int, part: Path) -> None:
    shape, quant, batch, seq = CONFIGS[i]
    tokenizer = models.load_tokenizer("tiny-random")
    root = Path(tempfile.mkdtemp())
    try:
        r = run_one(build(shape, root / shape, tokenizer), tokenizer, quant, batch, seq, steps)
        part.write_text(json.dumps(r))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
