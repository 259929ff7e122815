"""MODEL_CARD.md in the Hugging Face format: YAML metadata, then what the model is, how it was made, its checks, its
compute and how to run it. Stage 04 writes the card of the export; stage 05 writes the evaluated card in its own
folder (the same card with the held-out metrics and the verdict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftlab.core import runs, stages
from ftlab.core.paths import atomic_write_text, stage_dir
from ftlab.export.errors import STEP_GPU_PEAK_GIB
from ftlab.hardware import telemetry


def compute_record(run_name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Device (GPU name and driver when there is one) and the training stages' energy and cost, for the card."""
    return {"device": manifest.get("device"), "economics": {r["stage"]: r for r in telemetry.compute_rows(run_name)}}


def model_card(manifest: dict[str, Any], export_summary: dict[str, Any], metrics: dict[str, Any] | None = None) -> str:
    """MODEL_CARD.md in the Hugging Face format: YAML metadata, then what it is, how it was made, how to run it."""
    import yaml

    st = manifest.get("stages", {})
    lineage = stages.lineage(export_summary["adapter"])
    p01 = st.get(stages.DATA, {}).get("params", {})
    inputs = {k: v for s in st.values() for k, v in s.get("inputs", {}).items()}
    meta: dict[str, Any] = {
        "base_model": export_summary["base_model_id"],
        "license": export_summary["license"],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["ftlab", "lora", *[m.name for m in lineage], "gguf"],
        "datasets": [p for p in (p01.get("data_path"), p01.get("prefs_path"), p01.get("eval_path")) if p],
    }
    params = {k: st.get(k, {}).get("params", {}) for k in (stages.DATA, *[m.stage for m in stages.methods()])}
    meta["ftlab"] = {
        "input_sha256": dict(sorted(inputs.items())),
        "parameters": {k: v for k, v in params.items() if v},
        "adapter": export_summary["adapter"],
        "git_commit": manifest.get("git", {}).get("commit"),
    }
    if metrics:
        meta["model-index"] = [
            {
                "name": export_summary["name"],
                "results": [
                    {
                        "task": {"type": "text-generation"},
                        "dataset": {"name": "held-out split", "type": "custom"},
                        "metrics": [
                            {"type": k, "value": round(v, 4)} for k, v in metrics.items() if isinstance(v, (int, float))
                        ],
                    }
                ],
            }
        ]
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {export_summary['name']}",
        "",
        f"A LoRA fine-tune of `{export_summary['base_model_id']}` made with Fine-Tuning Lab: "
        f"{' then '.join(m.description for m in lineage)} on the data below, merged into "
        f"the base and exported to safetensors and GGUF ({', '.join(export_summary['gguf_types'])}).",
        "",
        "## Intended use",
        "",
        "Answers in the style and domain of the training data (see the datasets). Not evaluated for safety, "
        "factuality outside that domain, or any high-stakes use. Check its answers.",
        "",
        "## Training data (sensitivity)",
        "",
        "**Warning:** a fine-tuned model can reproduce its training data verbatim. If the data holds personal, "
        "confidential or licensed text, treat this model and its GGUF files with the same care as the data, "
        "and do not publish them where the data may not go.",
        "",
        "| input | sha256 |",
        "|---|---|",
        *[f"| {k} | `{v}` |" for k, v in sorted(inputs.items())],
        "",
        "## How it was made",
        "",
        "```yaml",
        yaml.safe_dump(params, sort_keys=True).strip(),
        "```",
        "",
        f"Git commit: `{manifest.get('git', {}).get('commit', 'unknown')}`; versions: "
        + ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items() if v)
        + ".",
        "",
        "## Evaluation",
        "",
    ]
    if metrics:
        lines += [
            "| metric | value |",
            "|---|---|",
            *[f"| {k} | {v:.4g} |" for k, v in metrics.items() if isinstance(v, (int, float))],
            "",
        ]
        lines += [f"Verdict: {metrics.get('verdict', '')}", ""] if "verdict" in metrics else []
    else:
        lines += [
            f"Not evaluated yet: run `notebooks/{stages.EVALUATE}.ipynb`; it writes this card with its metrics "
            f"to `{stages.EVALUATE}/MODEL_CARD.md`.",
            "",
        ]
    lines += [
        "## Export checks (llama.cpp)",
        "",
        "| file | MB | template | greedy agreement with HF | stops |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {Path(c['path']).name} | {c['size_mb']} | {'same' if c['template_matches'] else 'DIFFERENT'} | "
        f"{c['agreement']:.0%} | {c['stopped_share']:.0%} |"
        for c in export_summary["gguf"]
    ]
    comp = export_summary.get("compute") or {}
    if comp:
        lines += ["", "## Compute", "", f"Device: {comp.get('device')}.", ""]
        lines += [
            f"- {k}: {v['energy_wh']:.1f} Wh ({v['energy_source']}), energy cost {v['cost_energy']:.3f} at "
            f"{v['price_per_kwh']}/kWh"
            for k, v in comp.get("economics", {}).items()
        ]
    lines += ["", "## Run it", "", "```bash", *export_summary["ollama_commands"].values(), "```", ""]
    return "\n".join(lines)


def export_summary(
    p: dict[str, Any],
    adapter: stages.Method,
    adapter_dir: Path,
    name: str,
    dtype: Any,
    merged: Path,
    files: dict[str, Path],
    **parts: Any,
) -> dict[str, Any]:
    """Stage 04's summary.json (what the card is made from): the adapter, the files and their sizes, the checks
    (`parts`: merge, gguf, warnings, ollama_commands, stops, times_s, version, modelfile_gguf) and the compute."""
    from ftlab import models
    from ftlab.core.paths import folder_mb

    run = p["run_name"]
    return {
        "adapter": adapter.name,
        "adapter_dir": str(adapter_dir),
        "name": name,
        "base_model": p["base_model"],
        "base_model_id": models.hub_id(p["base_model"]),
        "license": p["license"],
        "merged_dtype": str(dtype).replace("torch.", ""),
        "gguf_types": list(files),
        **parts,
        "sizes_mb": {"merged": folder_mb(merged), **{t: folder_mb(f) for t, f in files.items()}},
        "gpu_peak_gib_per_step": dict(STEP_GPU_PEAK_GIB),  # {} on a CPU
        "compute": compute_record(run, runs.load_manifest(run)),
    }


def write_card(stage: Any, summary: dict[str, Any]) -> Path:
    """Stage 04's MODEL_CARD.md (not evaluated yet: stage 05 writes the evaluated one in its own folder)."""
    return atomic_write_text(stage.path("MODEL_CARD.md"), model_card(runs.load_manifest(stage.run_name), summary))


def card_metrics(scores: dict[str, dict[str, Any]], verdict: list[str], more: dict | None = None) -> dict[str, Any]:
    """The evaluated card's metrics: held-out NLL and ROUGE-L of every model scored, `more` (lm-eval, the deployed
    GGUF) and the verdict."""
    out: dict[str, Any] = {f"nll_{m}": s["nll"] for m, s in scores.items()}
    out |= {f"rouge_l_{m}": s["rouge_l"] for m, s in scores.items()} | (more or {})
    out["verdict"] = "; ".join(verdict)
    return out


def evaluated_card(
    run_name: str, scores: dict[str, dict[str, Any]], verdict: list[str], out: Path, more: dict | None = None
) -> Path | None:
    """Stage 04's card completed with stage 05's metrics, written to `out` (stage 05's own folder); None when the
    run has no export to describe."""
    export = stage_dir(run_name, stages.EXPORT) / "summary.json"
    if not export.exists():
        return None
    text = model_card(runs.load_manifest(run_name), runs.read_json(export), card_metrics(scores, verdict, more))
    return atomic_write_text(out, text)
