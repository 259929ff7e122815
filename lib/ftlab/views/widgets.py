"""ipywidgets views for JupyterLab that fall back to printed output in headless (papermill) runs.

A run is headless when it is not in a Jupyter kernel, or when the runner set FTLAB_HEADLESS=1 (`python -m ftlab run`
and `ftlab.runner.launch` do; set it yourself for a plain `papermill` call to get printed progress instead of widgets).
"""

from __future__ import annotations

import os
from typing import Any

from ftlab.data.template_audit import encode, marked


def is_headless() -> bool:
    if os.environ.get("FTLAB_HEADLESS") == "1":
        return True
    try:
        ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        return True  # plain Python: no widgets
    return getattr(ip, "kernel", None) is None  # IPython in a terminal: no widgets either


def dataset_browser(rows: list[dict[str, Any]], tokenizer: Any, max_length: int, static_examples: int = 3) -> Any:
    """Page through rows and see each rendered through the chat template with its trained tokens highlighted."""
    if is_headless() or not rows:
        for r in rows[:static_examples]:
            e = encode(tokenizer, r["messages"], max_length)
            print(f"--- line {r.get('_line')} ({e.length} tokens, {sum(e.assistant_masks)} trained) ---")
            print(marked(tokenizer, e))
        return None
    import ipywidgets as w
    from IPython.display import HTML, display

    slider = w.IntSlider(value=0, min=0, max=len(rows) - 1, description="row", continuous_update=False)
    out = w.Output()

    def show(change: Any = None) -> None:
        r = rows[slider.value]
        e = encode(tokenizer, r["messages"], max_length)
        out.clear_output(wait=True)
        with out:
            display(
                HTML(
                    f"<b>line {r.get('_line')}</b>: {e.length} tokens, {sum(e.assistant_masks)} trained "
                    f"(highlighted){' — truncated' if e.truncated else ''}"
                )
            )
            display(HTML(marked(tokenizer, e, "html")))

    slider.observe(show, names="value")
    show()
    box = w.VBox([slider, out])
    display(box)
    return box


class TrainingDashboard:
    """Live loss / eval loss / tokens/s / memory view in JupyterLab; progress lines in a headless run."""

    def __init__(self, title: str, total_steps: int, every_s: float = 2.0, plot: Any = None):
        self.title, self.total, self.every_s, self.plot_fn = title, total_steps, every_s, plot
        self.records: list[dict[str, Any]] = []
        self._last = 0.0
        self.headless = is_headless()
        if not self.headless:
            import ipywidgets as w
            from IPython.display import display

            self.stats = w.HTML(value=f"<b>{title}</b>: starting…", description="")
            self.plot = w.Output()
            self.box = w.VBox([self.stats, self.plot])
            display(self.box)

    def line(self, r: dict[str, Any]) -> str:
        parts = [f"step {r['step']}/{self.total}"]
        for k, fmt in (
            ("loss", "loss {:.4f}"),
            ("eval_loss", "eval_loss {:.4f}"),
            ("grad_norm", "grad {:.3f}"),
            ("learning_rate", "lr {:.2e}"),
            ("rewards/margins", "margin {:.3f}"),
            ("rewards/accuracies", "reward acc {:.2f}"),
            ("kl", "KL {:.3f}"),
            ("tokens_per_s", "{:.0f} tok/s"),
            ("vram_alloc_gib", "vram {:.2f} GiB"),
            ("ram_rss_gib", "ram {:.2f} GiB"),
            ("gpu_temp_c", "{:.0f} °C"),
            ("gpu_power_w", "{:.0f} W"),
            ("gpu_sm_clock_mhz", "{:.0f} MHz"),
            ("gpu_util_pct", "util {:.0f}%"),
            ("eta_s", "eta {:.0f} s"),
        ):
            if k in r:
                limit = r.get("gpu_power_limit_w") if k == "gpu_power_w" else None
                parts.append(fmt.format(r[k]) + (f" of {limit:.0f} W" if limit else ""))
        return " | ".join(parts)

    def __call__(self, r: dict[str, Any]) -> None:
        import time

        self.records.append(r)
        if self.headless:
            print(self.line(r), flush=True)
            return
        self.stats.value = f"<b>{self.title}</b>: {self.line(r)}"
        if time.time() - self._last >= self.every_s or "eval_loss" in r:
            self._last = time.time()
            import matplotlib.pyplot as plt

            from ftlab.views.plots import training_curves

            with self.plot:
                self.plot.clear_output(wait=True)
                fig = (self.plot_fn or training_curves)(self.records, title=self.title)
                plt.show(fig)
                plt.close(fig)


def dashboard(method: Any, total_steps: int) -> TrainingDashboard:
    """The live view of a training method (a registry entry): its title and its own curves."""
    from ftlab.views import plots

    return TrainingDashboard(method.title, total_steps, plot=getattr(plots, method.curves))


def chat_playground(contenders: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 96) -> Any:
    """The same prompt to every contender (base and tuned) side by side, tokens streaming in as they are generated.
    Headless there is no one to type a prompt: a note says so (the side-by-side table is the static form)."""
    names = list(contenders.names)
    if is_headless():
        print("chat playground: interactive in JupyterLab; the side-by-side answers above are its static form")
        return None
    import html

    import ipywidgets as w
    from IPython.display import display

    box_in = w.Textarea(value=prompt, description="prompt", layout=w.Layout(width="100%", height="4em"))
    go = w.Button(description="Ask every model", tooltip="send the prompt to base and tuned models", icon="play")
    panes = {n: w.HTML(value="", description=n, layout=w.Layout(width=f"{100 // max(1, len(names))}%")) for n in names}
    status = w.HTML(value="")

    def ask(_: Any = None) -> None:
        go.disabled = True
        status.value = "generating…"

        def update(name: str, text: str) -> None:
            panes[name].value = f"<div class='ftlab-answer' style='white-space:pre-wrap'>{html.escape(text)}</div>"

        for name in names:
            update(name, "")
        try:
            for _name, _text in answers(contenders, tokenizer, box_in.value, max_new_tokens, names, update):
                pass
            status.value = f"done: {len(names)} models answered “{html.escape(box_in.value[:60])}”"
        except Exception as e:  # noqa: BLE001 - shown in the widget; the notebook keeps working
            status.value = f"<b>error</b>: {html.escape(f'{type(e).__name__}: {e}')}"
        finally:
            go.disabled = False

    go.on_click(ask)
    ui = w.VBox([box_in, w.HBox([go, status]), w.HBox(list(panes.values()))])
    ui.add_class("ftlab-playground")
    display(ui)
    ask()
    return ui


def answers(contenders: Any, tokenizer: Any, prompt: str, max_new_tokens: int, names: list[str], on_token: Any):
    """Greedy answer of each contender; `on_token(name, text_so_far)` is called as tokens stream in."""
    from ftlab.models import generate

    for name in names:
        with contenders.use(name):
            text = ""
            try:
                for text in generate.stream(contenders.model, tokenizer, prompt, max_new_tokens):
                    if on_token:
                        on_token(name, text)
            except RuntimeError as e:
                raise RuntimeError(f"{name} could not answer: {e.__cause__ or e}") from e.__cause__
        yield name, text.strip()
