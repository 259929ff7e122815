"""Stage 05's batched greedy generation against the one-prompt-at-a-time loop it replaced, in one process on the
same model and prompts: generated tokens/s of each and their ratio. Run on the GPU machine:

    python3 benchmarks/generation.py /tmp/llama8b result.json
    python3 benchmarks/generation.py /tmp/llama8b merge_check.json --quantization none --prompts 16 \
        --max-new-tokens 128 --batches 1,8        # stage 04's merge check: bf16 weights, 16 x 128 tokens

By default the model is loaded as stage 05 loads it on a GPU (4-bit NF4); `--quantization none` loads the 16-bit
weights as stage 04's merge check does (and as a CPU loads it). On a CPU, the forgetting probe's questions with the
embedded model, the held-out answers' batch (`batch_size`, 8) against the probe's (`scoring.PROBE_BATCH`, 32):

    .venv/bin/python benchmarks/generation.py smollm2-135m benchmarks/results/generation_cpu_probe.json \
        --quantization none --rows data/probes/general_knowledge.jsonl --prompts 260 --max-new-tokens 32 --batches 8,32

Random weights never emit end-of-turn, so every answer runs to
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

    from ftlab import models
    from ftlab.models import generate

    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("out", type=Path)
    ap.add_argument("--quantization", default="4bit", choices=("4bit", "none"))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--rows", default="data/pydoc_qa/sft.jsonl", help="chat rows; the prompt is all but the last turn")
    a = ap.parse_args()
    if "/" in a.folder and not (Path(a.folder) / "config.json").exists():
        import gpu_series

        gpu_series.build(Path(a.folder), Path(".gputok"))
    tok = models.load_tokenizer(a.folder)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if a.quantization == "none" and cuda else None
    model = models.load_model(a.folder, quantization=a.quantization, dtype=dtype)
    rows = [json.loads(x) for x in Path(a.rows).read_text().splitlines()[: a.prompts]]
    prompts = [r["messages"][:-1] for r in rows]
    res = {"model": a.folder, "quantization": a.quantization, "prompts": len(prompts)}
    res |= {"rows": a.rows, "max_new_tokens": a.max_new_tokens, "command": " ".join(sys.argv)}
    res |= {"gpu": torch.cuda.get_device_name(0)} if cuda else {"cpu_threads": torch.get_num_threads()}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    texts = {}
    generate.greedy(model, tok, prompts[:2], 8, batch_size=2)  # warm-up
    sizes = [int(b) for b in a.batches.split(",")]
    for bs in sizes:
        name = "one_at_a_time" if bs == 1 else f"batched_{bs}"
        sync()
        t = time.perf_counter()
        answers = generate.greedy(model, tok, prompts, a.max_new_tokens, batch_size=bs)
        sync()
        s = time.perf_counter() - t
        n = sum(x.new_tokens for x in answers)
        texts[bs] = [x.text for x in answers]
        same = sum(x == y for x, y in zip(texts[bs], texts[sizes[0]], strict=True))
        res[name] = {"seconds": round(s, 2), "tokens": n, "tokens_per_s": round(n / s, 1)}
        res[name]["same_answers_as_batch_" + str(sizes[0])] = f"{same}/{len(prompts)}"
        print(name, res[name], flush=True)
    key = {b: "one_at_a_time" if b == 1 else f"batched_{b}" for b in sizes}
    base = res[key[sizes[0]]]["tokens_per_s"]
    res |= {f"ratio_{key[b]}_vs_{key[sizes[0]]}": round(res[key[b]]["tokens_per_s"] / base, 2) for b in sizes[1:]}
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
