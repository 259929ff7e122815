"""Stage 05's batched greedy generation against the one-prompt-at-a-time loop it replaced, in one process on the
same model and prompts: generated tokens/s of each and their ratio. Run on the GPU machine:

    python3 benchmarks/generation.py /tmp/llama8b result.json [--tokenizer .gputok]

The model is loaded as stage 05 loads it on a GPU (4-bit NF4). Random weights never emit end-of-turn, so every answer
runs to max_new_tokens in both modes (the same token count: a like-for-like comparison).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))


def main() -> None:
    import torch

    from ftlab import generate, models

    folder, out = sys.argv[1], Path(sys.argv[2])
    if not (Path(folder) / "config.json").exists():
        import gpu_series

        gpu_series.build(Path(folder), Path(".gputok"))
    tok = models.load_tokenizer(folder)
    model = models.load_model(folder, quantization="4bit")
    rows = [json.loads(x) for x in Path("data/pydoc_qa/sft.jsonl").read_text().splitlines()[:32]]
    prompts = [r["messages"][:-1] for r in rows]
    res = {"model": folder, "prompts": len(prompts), "max_new_tokens": 64, "gpu": torch.cuda.get_device_name(0)}
    generate.greedy(model, tok, prompts[:2], 8, batch_size=2)  # warm-up
    for name, bs in (("one_at_a_time", 1), ("batched_8", 8), ("batched_32", 32)):
        torch.cuda.synchronize()
        t = time.perf_counter()
        answers = generate.greedy(model, tok, prompts, 64, batch_size=bs)
        torch.cuda.synchronize()
        s = time.perf_counter() - t
        n = sum(a.new_tokens for a in answers)
        res[name] = {"seconds": round(s, 2), "tokens": n, "tokens_per_s": round(n / s, 1)}
        print(name, res[name], flush=True)
    base = res["one_at_a_time"]["tokens_per_s"]
    res["ratio_batched_8"] = round(res["batched_8"]["tokens_per_s"] / base, 2)
    res["ratio_batched_32"] = round(res["batched_32"]["tokens_per_s"] / base, 2)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
