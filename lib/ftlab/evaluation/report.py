"""Stage 05's `report.html`: a self-contained page (plots embedded) that opens without Jupyter."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

METRICS = (
    ("nll", "held-out NLL (nats/token, lower is better)"),
    ("perplexity", "perplexity"),
    ("rouge_l", "ROUGE-L F1"),
    ("exact_match", "exact match"),
    ("answer_tokens", "answer length (tokens)"),
    ("stopped_share", "answers that stopped by themselves"),
)

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.35rem .5rem;vertical-align:top;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{background:#eef6ee;border-left:4px solid #3a7d44;padding:.6rem 1rem}
.verdict.failed{background:#fdecea;border-left-color:#c62828}
.verdict.failed strong{color:#b71c1c}
.warn{background:#fff4e5;border-left:4px solid #d9822b;padding:.6rem 1rem}
img{max-width:100%}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def metrics_table(scores: dict[str, dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(m)}</th>" for m in scores)
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th>"
        + "".join(f'<td class="num">{_fmt(s.get(k))}</td>' for s in scores.values())
        + "</tr>"
        for k, label in METRICS
    )
    return f"<table><tr><th>metric</th>{head}</tr>{rows}</table>"


def table(head: list[str], rows: list[list[str]]) -> str:
    """A plain table: a header row, then rows whose first cell names the row."""
    top = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        f"<tr><th>{html.escape(r[0])}</th>" + "".join(f'<td class="num">{html.escape(c)}</td>' for c in r[1:]) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{top}</tr>{body}</table>"


def side_by_side(samples: list[dict[str, Any]], models: list[str], limit: int = 50) -> str:
    head = "<tr><th>#</th><th>prompt</th><th>reference</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for i, s in enumerate(samples[:limit]):
        cells = "".join(
            f"<td>{html.escape(s['answers'][m])}<br><small>ROUGE-L {s['rouge_l'][m]:.2f}"
            f"{'' if s['stopped'][m] else ', did not stop'}</small></td>"
            for m in models
        )
        rows.append(
            f"<tr><td>{i + 1}</td><td>{html.escape(s['prompt'])}</td><td>{html.escape(s['reference'])}</td>{cells}</tr>"
        )
    return f"<table>{head}</tr>{''.join(rows)}</table>"


def compute_table(rows: list[dict[str, Any]]) -> str:
    """The compute section: one row per training stage and a total."""
    if not rows:
        return "<p>No training stage of this run recorded its energy (stages 02/03 write it to summary.json).</p>"
    total = {
        k: sum(r[k] or 0 for r in rows) for k in ("train_seconds", "energy_wh", "cost_energy", "cost_cloud_equivalent")
    }
    head = (
        "<tr><th>stage</th><th>train s</th><th>energy Wh</th><th>how measured</th><th>energy cost</th>"
        "<th>cloud GPU equivalent</th><th>GPU samples</th><th>throttle warnings</th></tr>"
    )
    body = "".join(
        f"<tr><th>{html.escape(r['stage'])}</th><td class='num'>{_fmt(r['train_seconds'])}</td>"
        f"<td class='num'>{_fmt(r['energy_wh'])}</td><td>{html.escape(r['energy_source'])}</td>"
        f"<td class='num'>{_fmt(r['cost_energy'])}</td><td class='num'>{_fmt(r['cost_cloud_equivalent'])}</td>"
        f"<td class='num'>{r['gpu_samples']}</td><td class='num'>{r['throttle_warnings']}</td></tr>"
        for r in rows
    )
    body += (
        f"<tr><th>total</th><td class='num'>{_fmt(total['train_seconds'])}</td><td class='num'>"
        f"{_fmt(total['energy_wh'])}</td><td></td><td class='num'>{_fmt(total['cost_energy'])}</td>"
        f"<td class='num'>{_fmt(total['cost_cloud_equivalent'])}</td><td></td><td></td></tr>"
    )
    return f"<table>{head}{body}</table>"


def page(
    title: str,
    verdict: list[str],
    warnings: list[str],
    scores: dict[str, dict[str, Any]],
    samples: list[dict[str, Any]],
    probe: dict[str, dict[str, Any]],
    images: list[tuple[Path, str]],
    notes: list[str],
    compute: list[dict[str, Any]] | None = None,
    tables: list[tuple[str, list[str], list[list[str]]]] = (),
    refused: str | None = None,
) -> str:
    """The evaluation report. `refused`: why the promotion gate did not pass, in one sentence; the top box then
    turns red and opens with it, so a failed gate never looks like a green verdict."""
    models = list(scores)
    head = [f"<strong>Not promoted: {html.escape(refused)}.</strong>"] if refused else []
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<div class='verdict{' failed' if refused else ''}'>"
        + "<br>".join(head + [html.escape(v) for v in verdict])
        + "</div>",
    ]
    parts += [f"<div class='warn'>WARNING: {html.escape(w)}</div>" for w in warnings]
    parts += ["<h2>Held-out metrics</h2>", metrics_table(scores)]
    parts += [_img(p, alt) for p, alt in images if Path(p).exists()]
    if probe:
        parts += [
            "<h2>Forgetting probe (general knowledge)</h2>",
            "<table><tr><th>model</th><th>NLL</th><th>correct</th></tr>"
            + "".join(
                f"<tr><th>{html.escape(m)}</th><td class='num'>{_fmt(p['nll'])}</td>"
                f"<td class='num'>{_fmt(p['correct'])}</td></tr>"
                for m, p in probe.items()
            )
            + "</table>",
        ]
    parts += [f"<h2>{html.escape(title)}</h2>{table(head, rows)}" for title, head, rows in tables]
    parts += ["<h2>Side by side</h2>", side_by_side(samples, models)]
    if compute is not None:
        parts += ["<h2>Compute and cost</h2>", compute_table(compute)]
    parts += ["<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul></body></html>"]
    return "\n".join(parts)
