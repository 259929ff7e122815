"""ipywidgets views for JupyterLab that fall back to printed output in headless (papermill) runs.

A run is headless when the runner set FTLAB_HEADLESS=1 or when papermill injected parameters into the notebook.
"""

from __future__ import annotations

import os
from typing import Any

from ftlab.audit import encode, marked


def is_headless() -> bool:
    if os.environ.get("FTLAB_HEADLESS") == "1":
        return True
    try:
        ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        return True  # plain Python: no widgets
    history = ip.user_ns.get("In", [])
    return any(isinstance(src, str) and src.lstrip().startswith("# Parameters") for src in history)


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
            display(HTML(f"<b>line {r.get('_line')}</b>: {e.length} tokens, {sum(e.assistant_masks)} trained "
                         f"(highlighted){' — truncated' if e.truncated else ''}"))  # fmt: skip
            display(HTML(marked(tokenizer, e, "html")))

    slider.observe(show, names="value")
    show()
    box = w.VBox([slider, out])
    display(box)
    return box
