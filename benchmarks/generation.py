"""Stage 05's batched greedy generation against the one-prompt-at-a-time loop it replaced, in one process on the
same model and prompts: generated tokens/s of each and their ratio. Run on the GPU machine:

    python3 benchmarks/generation.py /tmp/llama8b result.json
    python3 benchmarks/generation.py /tmp/llama8b merge_check.json --quantization none --prompts 16 \
        --max-new-tokens 128 --batches 1,8        # stage 04's merge check: bf16 weights, 16 x 128 tokens

By default the model is loaded as stage 05 loads it on a GPU (4-bit NF4); `--quantization none` loads the 16-bit
weights as stage 04's merge check does. Random weights never emit end-of-turn, so every answer runs to
max_new_tokens in every mode (the same token count: a like-for-like comparison).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))


def main() -> None:
    import argparse

    import torch

    from ftlab import generate, models

    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("out", type=Path)
    ap.add_argument("--quantization", default="4bit", choices=("4bit", "none"))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,8,32")
    a = ap.parse_args()
    if not (Path(a.folder) / "config.json").exists():
        import gpu_series

        gpu_series.build(Path(a.folder), Path(".gputok"))
    tok = models.load_tokenizer(a.folder)
    dtype = torch.bfloat16 if a.quantization == "none" else None
    model = models.load_model(a.folder, quantization=a.quantization, dtype=dtype)
    rows = [json.loads(x) for x in Path("data/pydoc_qa/sft.jsonl").read_text().splitlines()[: a.prompts]]
    prompts = [r["messages"][:-1] for r in rows]
    res = {"model": a.folder, "quantization": a.quantization, "prompts": len(prompts)}
    res |= {"max_new_tokens": a.max_new_tokens, "gpu": torch.cuda.get_device_name(0)}
    generate.greedy(model, tok, prompts[:2], 8, batch_size=2)  # warm-up
    sizes = [int(b) for b in a.batches.split(",")]
    for bs in sizes:
        name = "one_at_a_time" if bs == 1 else f"batched_{bs}"
        torch.cuda.synchronize()
        t = time.perf_counter()
        answers = generate.greedy(model, tok, prompts, a.max_new_tokens, batch_size=bs)
        torch.cuda.synchronize()
        s = time.perf_counter() - t
        n = sum(x.new_tokens for x in answers)
        res[name] = {"seconds": round(s, 2), "tokens": n, "tokens_per_s": round(n / s, 1)}
        print(name, res[name], flush=True)
    base = res["one_at_a_time"]["tokens_per_s"]
    res |= {f"ratio_batched_{b}": round(res[f"batched_{b}"]["tokens_per_s"] / base, 2) for b in sizes if b != 1}
    a.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
