"""Scores a stage measured, kept with what they were measured on, so that a later stage asking the same question of
the same model reads them instead of measuring again.

Stage 03's regression guard scores the SFT adapter before training and the tuned adapter after it exactly as stage 05
scores them (`scoring.score` on the same held-out rows). It keeps each score in its folder's `scores.json` under a
key: the adapter file's SHA-256, the rows' SHA-256, the base model, device, quantization, chat template and every
scorer setting. Stage 05 reuses a score only when its own key is equal in every part, and says so; any difference
(another `max_new_tokens`, a retrained adapter, an edited eval.jsonl, a GPU run scored on a CPU) scores again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ftlab.data.template_audit import template_hash
from ftlab.hardware import devices

FILE = "scores.json"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key(
    adapter: str | Path,
    rows: list[dict[str, Any]],
    tokenizer: Any,
    *,
    base_model: str | Path,
    device: str,
    quantization: str,
    max_length: int,
    n_generate: int,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    extra_metrics: Iterable[str] = (),
) -> dict[str, Any]:
    """What a score of `adapter` on `rows` depends on (`scoring.score`'s settings by the same names)."""
    return {
        "adapter_sha256": _sha((Path(adapter) / "adapter_model.safetensors").read_bytes()),
        "rows_sha256": _sha(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()),
        "base_model": str(base_model),
        "device": device,
        "quantization": quantization,
        "chat_template": template_hash(tokenizer),
        "settings": {
            "max_length": max_length,
            "n_generate": n_generate,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "extra_metrics": list(extra_metrics),
        },
    }


def keep(folder: Path, name: str, k: dict[str, Any], score: dict[str, Any]) -> None:
    """Add `name`'s score with its key to `folder`/scores.json."""
    path = folder / FILE
    kept = json.loads(path.read_text()) if path.exists() else {}
    kept[name] = {"key": k, "score": score}
    path.write_text(json.dumps(kept, ensure_ascii=False) + "\n")


def find(folders: Iterable[Path], name: str, k: dict[str, Any]) -> tuple[dict[str, Any], Path] | None:
    """A kept score of `name` whose key equals `k` in every part, with the file it came from; else None."""
    for folder in folders:
        path = folder / FILE
        entry = json.loads(path.read_text()).get(name) if path.exists() else None
        if entry and entry["key"] == json.loads(json.dumps(k)):
            return entry["score"], path
    return None


def scoring_settings(base_dir: Path, quantization: str, kw: dict[str, Any]) -> dict[str, Any]:
    """`reuse.key`'s settings for stage 05's scoring (`kw`: `scoring.score`'s keywords; its own defaults fill the
    rest). The generation batch changes speed only and is left out."""
    from ftlab.evaluation import scoring

    given = inspect.signature(scoring.score).parameters
    names = ("max_length", "n_generate", "max_new_tokens", "batch_size", "extra_metrics")
    settings = {k: kw.get(k, None if given[k].default is inspect.Parameter.empty else given[k].default) for k in names}
    return {"base_model": base_dir, "device": devices.kind(), "quantization": quantization, **settings}
