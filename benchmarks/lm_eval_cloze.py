"""The forgetting gate's lm-eval task as it is (version 2: a cloze, only the key word scored) against version 1
(each choice the whole reference sentence with its key word swapped), in one process on the same model: seconds,
accuracy, and how many questions each version answers with the same pick. CPU, embedded model:

    .venv/bin/python benchmarks/lm_eval_cloze.py smollm2-135m benchmarks/results/lm_eval_cloze_cpu.json \
        --adapter outputs/default/03_train_dpo/adapter

The adapter (optional) is scored too, as stage 05 scores the run's final model (a PEFT model in the harness).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "data" / "lm_eval"))

V1 = "ftlab_general_knowledge_v1"


def sentence_docs() -> list[dict]:
    """Version 1 of the task: the reference sentence against three copies with the key word swapped."""
    import tasks

    docs = []
    for d, r in zip(tasks.general_knowledge_docs(), tasks._read(tasks.PROBE), strict=True):
        sentence = r["messages"][-1]["content"]
        head = sentence[: list(re.finditer(rf"\b{re.escape(r['answer'])}\b", sentence))[-1].start()]
        tail = sentence[len(head) + len(r["answer"]) :]
        docs.append({**d, "choices": [head + c.strip() + tail for c in d["choices"]]})
    return docs


def include_folder() -> Path:
    """The repository's tasks plus version 1 beside them, in a temporary include folder."""
    folder = Path(tempfile.mkdtemp(prefix="lm_eval_cloze_"))
    for f in ("tasks.py", "ftlab_general_knowledge.yaml"):
        shutil.copy(ROOT / "data" / "lm_eval" / f, folder / f)
    (folder / "tasks.py").write_text(
        (folder / "tasks.py").read_text().replace('HERE.parent / "probes"', f'Path({str(ROOT / "data")!r}) / "probes"')
        + "\n\ndef v1(**_):\n    import lm_eval_cloze\n\n    return _dataset(lm_eval_cloze.sentence_docs())\n"
    )
    v1 = (ROOT / "data" / "lm_eval" / "ftlab_general_knowledge.yaml").read_text()
    v1 = v1.replace("task: ftlab_general_knowledge", f"task: {V1}").replace("tasks.general_knowledge", "tasks.v1")
    (folder / f"{V1}.yaml").write_text("\n".join(x for x in v1.splitlines() if not x.startswith("gen_prefix")))
    return folder


def evaluate(lm, tm, task: str) -> dict:
    import lm_eval

    t0 = time.perf_counter()
    r = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=tm, apply_chat_template=True, log_samples=True, verbosity="ERROR"
    )
    seconds = time.perf_counter() - t0
    picks = [max(range(len(s["filtered_resps"])), key=lambda k: s["filtered_resps"][k][0]) for s in r["samples"][task]]
    res = r["results"][task]
    return {"seconds": round(seconds, 1), "acc": res["acc,none"], "acc_norm": res["acc_norm,none"], "picks": picks}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--adapter", default="")
    a = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from ftlab import models

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    tok = models.load_tokenizer(a.model)
    tm = TaskManager(include_path=str(include_folder()), include_defaults=False)
    results = {}
    for name in ["base"] + (["adapter"] if a.adapter else []):
        model = models.load_model(a.model, quantization="none")
        if name == "adapter":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, a.adapter)
        lm = HFLM(pretrained=model.eval(), tokenizer=tok, batch_size=8, max_length=512)
        got = {v: evaluate(lm, tm, t) for v, t in (("v2_cloze", "ftlab_general_knowledge"), ("v1_sentences", V1))}
        same = sum(x == y for x, y in zip(got["v2_cloze"]["picks"], got["v1_sentences"]["picks"], strict=True))
        results[name] = {
            **{v: {k: g[k] for k in ("seconds", "acc", "acc_norm")} for v, g in got.items()},
            "same_picks": same,
            "questions": len(got["v2_cloze"]["picks"]),
            "speedup": round(got["v1_sentences"]["seconds"] / got["v2_cloze"]["seconds"], 2),
        }
        print(name, results[name])
    Path(a.out).write_text(
        json.dumps(
            {
                "command": "python " + " ".join(sys.argv),
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{os.cpu_count()} CPU cores",
                "batch_size": 8,
                "results": results,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
