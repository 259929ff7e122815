"""Many runs side by side (stage 06): collect what each run's stages wrote, rank them, show what differs."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from ftlab.core import stages
from ftlab.core.paths import outputs_dir
from ftlab.evaluation import lm_eval_harness


def _read(p: Path) -> Any:
    return json.loads(p.read_text()) if p.exists() else None


def find_runs(pattern: str, exclude: str = "") -> list[Path]:
    """Run folders under outputs/ whose name matches the glob and that have a manifest."""
    return sorted(p for p in outputs_dir().glob(pattern) if (p / "manifest.json").exists() and p.name != exclude)


def collect(run: Path) -> dict[str, Any]:
    """One run's numbers: the stage 05 verdict when it ran, else stage 03's guard score of the method trained last (its
    held-out NLL and ROUGE-L), else the first method's eval loss; each method's columns
    (from its registry entry: seconds, peak memory, margins, ...), time and parameters."""
    m = _read(run / "manifest.json")
    st = m.get("stages", {})
    summaries = {meth.name: _trained(_read(run / meth.stage / "summary.json"), meth) for meth in stages.methods()}
    metrics = _read(run / stages.EVALUATE / "metrics.json")
    final = (metrics or {}).get("final")
    first = stages.first_method()
    row: dict[str, Any] = {
        "run": run.name,
        "complete": [k[:2] for k, s in st.items() if s.get("status") == "complete"],
        "failed_or_running": [k[:2] for k, s in st.items() if s.get("status") != "complete"],
    }
    if metrics and final:
        fm = metrics["models"][final]
        row.update(
            score_source=f"{stages.EVALUATE[:2]} ({final})",
            heldout_nll=fm["nll"],
            rouge_l=fm["rouge_l"],
            base_nll=metrics["models"][stages.BASE]["nll"],
            passed=metrics["passed"],
        )
        lm = metrics.get("extras", {}).get("lm_eval", {}).get("models", {})  # the harness's local tasks, final model
        row["lm_eval_heldout_acc_norm"] = stages.dig(lm, f"{final}.{lm_eval_harness.HELDOUT_TASK}.acc_norm")
        row["lm_eval_general_acc"] = stages.dig(lm, f"{final}.{lm_eval_harness.FORGETTING_TASK}.acc")
    elif guarded := [m for m in stages.methods() if stages.dig(summaries[m.name] or {}, "guard.after.nll")]:
        meth = guarded[-1]  # the method trained last: its model is the run's result
        after = summaries[meth.name]["guard"]["after"]
        row.update(
            score_source=f"{meth.stage[:2]} guard ({meth.name})", heldout_nll=after["nll"], rouge_l=after["rouge_l"]
        )
    elif summaries[first.name]:
        s = summaries[first.name]
        row.update(
            score_source=f"{first.stage[:2]} eval loss",
            heldout_nll=s["eval_loss_after"],
            base_nll=s["eval_loss_before"],
        )
    row["nll_drop"] = row["base_nll"] - row["heldout_nll"] if "base_nll" in row else math.nan
    for meth in stages.methods():
        if summaries[meth.name]:
            row.update(
                {f"{meth.name}_{col}": stages.dig(summaries[meth.name], key) for col, key in meth.columns.items()}
            )
    row["total_seconds"] = round(sum(s.get("seconds", 0) for s in st.values()), 1)
    row["params"] = {
        f"{k[:2]}.{n}": v for k, s in st.items() for n, v in s.get("params", {}).items() if n != "run_name"
    }
    row["_metrics"] = _jsonl(run / first.stage / "metrics.jsonl")
    row["_samples"] = _jsonl(run / stages.EVALUATE / "samples.jsonl")
    row["_final"] = final
    return row


def _trained(summary: dict[str, Any] | None, meth: stages.Method) -> dict[str, Any] | None:
    """The stage's summary where it trained this method (stage 03 trains one of several; older summaries name none:
    the stage's default method)."""
    ran = (summary or {}).get("method", stages.method_of_stage(meth.stage).name)
    return summary if summary and ran == meth.name else None


def _jsonl(p: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def columns() -> list[str]:
    """The leaderboard's columns: the scores, then every method's own columns, then time and stage status."""
    per_method = [f"{m.name}_{c}" for m in stages.methods() for c in m.columns]
    return [
        "run",
        "score_source",
        "heldout_nll",
        "base_nll",
        "nll_drop",
        "rouge_l",
        "lm_eval_heldout_acc_norm",
        "lm_eval_general_acc",
        "passed",
        *per_method,
        "total_seconds",
        "complete",
        "failed_or_running",
    ]


def leaderboard(rows: list[dict[str, Any]]) -> Any:
    """A DataFrame ranked by held-out NLL (lower is better); runs without a score go last."""
    import pandas as pd

    cols = columns()
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    df = df.sort_values("heldout_nll", na_position="last").reset_index(drop=True)
    df.index = df.index + 1
    return df


def differing_params(rows: list[dict[str, Any]]) -> Any:
    """Only the parameters whose values differ between runs (what the comparison is really about)."""
    import pandas as pd

    keys = sorted({k for r in rows for k in r["params"]})
    diff = [k for k in keys if len({json.dumps(r["params"].get(k), sort_keys=True) for r in rows}) > 1]
    return pd.DataFrame([{"run": r["run"], **{k: r["params"].get(k) for k in diff}} for r in rows]).set_index("run")


def loss_curves(rows: list[dict[str, Any]], path: str | Path | None = None) -> Any:
    """SFT train loss and eval loss of every run on one pair of axes."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for r in rows:
        tr = [m for m in r["_metrics"] if "loss" in m]
        ev = [m for m in r["_metrics"] if "eval_loss" in m]
        (line,) = axes[0].plot([m["step"] for m in tr], [m["loss"] for m in tr], label=r["run"])
        axes[1].plot(
            [m["step"] for m in ev], [m["eval_loss"] for m in ev], "o-", color=line.get_color(), label=r["run"]
        )
    title = stages.first_method().title
    axes[0].set(title=f"{title} train loss per run", xlabel="step", ylabel="loss (nats/token)")
    axes[1].set(title=f"{title} eval loss per run", xlabel="step", ylabel="eval loss (nats/token)")
    for ax in axes:
        if rows:
            ax.legend(fontsize=7)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


def best_vs_worst(rows: list[dict[str, Any]], n: int = 5) -> list[dict[str, Any]]:
    """The same prompts answered by the best and the worst scored run (stage 05's samples)."""
    scored = [r for r in rows if r["_samples"] and r.get("heldout_nll") is not None]
    if len(scored) < 2:
        return []
    best = min(scored, key=lambda r: r["heldout_nll"])
    worst = max(scored, key=lambda r: r["heldout_nll"])
    by_prompt = {s["prompt"]: s for s in worst["_samples"]}
    out = []
    for s in best["_samples"]:
        w = by_prompt.get(s["prompt"])
        if w is not None:
            out.append(
                {
                    "prompt": s["prompt"],
                    "reference": s["reference"],
                    f"best ({best['run']})": s["answers"][best["_final"]],
                    f"worst ({worst['run']})": w["answers"][worst["_final"]],
                }
            )
        if len(out) >= n:
            break
    return out


def page(title: str, board: Any, diff: Any, pairs: list[dict[str, Any]], image: Path | None) -> str:
    import base64

    img = ""
    if image and Path(image).exists():
        img = f'<img alt="loss curves per run" src="data:image/png;base64,{base64.b64encode(Path(image).read_bytes()).decode()}">'
    pairs_html = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in p.values()) + "</tr>" for p in pairs
    )
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (pairs[0] if pairs else {}))
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse;font-size:.85rem}"
        "td,th{border:1px solid #ccc;padding:.3rem .5rem;vertical-align:top}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><h2>Leaderboard (held-out NLL, lower is better)</h2>"
        f"{board.to_html(float_format=lambda x: f'{x:.4g}')}<h2>Loss curves</h2>{img}"
        f"<h2>Parameters that differ</h2>{diff.to_html()}"
        f"<h2>Best vs worst run, same prompts</h2><table><tr>{head}</tr>{pairs_html}</table></body></html>"
    )


def write(
    stage: Any, rows: list[dict[str, Any]], board: Any, diff: Any, pairs: list[dict[str, Any]], title: str
) -> tuple[Path, Path]:
    """comparison.csv and comparison.html in the stage folder, and the stage's summary. Returns (html, csv)."""
    html_path, csv_path = stage.path("comparison.html"), stage.path("comparison.csv")
    board.to_csv(csv_path)
    page_html = page(title, board, diff if diff is not None else board.iloc[:0], pairs, stage.path("curves.png"))
    html_path.write_text(page_html, encoding="utf-8")
    best = board.iloc[0]["run"] if len(board) else None
    return {"runs": [r["run"] for r in rows], "best": best, "html": str(html_path), "csv": str(csv_path)}
