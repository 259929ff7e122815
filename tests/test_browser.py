"""The notebooks in a real JupyterLab, driven by headless Chromium (Playwright with Debian's `chromium`).

JupyterLab starts on loopback with a token, in the project's environment, with the `ftlab` kernel and every
Jupyter folder inside the test's tmp dir (nothing written to $HOME). Its outputs/ starts with a copy of the shared tiny
series (conftest) without stage 02. Each notebook 00-06 is copied with tiny-model values appended to its parameters
cell (as a learner would edit them), opened, run with Run > Run All Cells (runmenu:run-all), saved and read back: no
error output may appear. Stages 03 and 04, finished with the same parameters, skip their work and show their cells.
The widgets are checked in the page: the dataset browser (01) moves to another row, the live dashboard (02) shows the
step advancing while training runs, the chat playground (05) shows one streamed answer per model. Screenshots go to
the test's tmp folder (`browser-shots/`).

Needs a Chromium: `make test` installs Debian's package when it is missing; without one the test is skipped and says
why. Run: .venv/bin/python -m pytest tests/test_browser.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import TINY as SERIES
from conftest import branch

from ftlab.core.paths import repo_root

CHROMIUM = next(
    (p for p in (os.environ.get("FTLAB_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")) if p),
    None,
)
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium on this system: `apt-get install chromium` (make test "
        "does it where apt works) or set FTLAB_CHROMIUM to a Chromium binary",
    ),
]

# The browser opens a copy of the shared tiny series (conftest) without its stage 02: 02 trains there, live, for the
# dashboard (24 steps, long enough to watch it move); 00, 01, 03, 04 and 06 run with the series' parameters, so the
# stages already finished skip their work and show their cells, as they do for a user; 05 scores every model again
# (it always does), with the probe off and lm-eval on 4 questions.
TINY = {
    **SERIES,
    "02_train_sft": {
        **SERIES["02_train_sft"],
        "max_steps": 24,
        "eval_steps": 12,
        "save_steps": 12,
        "forecast_rows": 0,
    },
    "05_evaluate": {**SERIES["05_evaluate"], "forgetting_probe": False, "lm_eval_limit": 4},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tiny_series, tmp_path_factory):
    """A JupyterLab server on loopback serving tiny-parameter copies of the notebooks and, under its outputs/, the
    shared series without stage 02 as run "browser"; yields (url, token, folder, root)."""
    root = tmp_path_factory.mktemp("lab")
    branch(tiny_series, root / "outputs" / "browser", [s for s in SERIES if s != "02_train_sft"])
    nbdir = root / "notebooks"
    nbdir.mkdir()
    for name, values in TINY.items():
        nb = nbformat.read(repo_root() / "notebooks" / f"{name}.ipynb", as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        cell.source += '\n# tiny-model values for the browser test\nrun_name = "browser"\n' + "".join(
            f"{k} = {v!r}\n" for k, v in values.items()
        )
        nbformat.write(nb, nbdir / f"{name}.ipynb")
    token = os.urandom(16).hex()
    port = _free_port()
    env = {
        **os.environ,
        "FTLAB_OUTPUTS": str(root / "outputs"),
        "JUPYTER_CONFIG_DIR": str(root / "jcfg"),
        "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / "ws"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    env.pop("FTLAB_HEADLESS", None)
    from ftlab.runner.pipeline import ensure_kernel

    ensure_kernel()  # the `ftlab` kernel inside .venv
    log = open(root / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={nbdir}",
            "--ServerApp.open_browser=False",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=nbdir,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        if proc.poll() is not None:
            break
        try:
            import urllib.request

            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"JupyterLab did not start (60 s): {(root / 'jupyterlab.log').read_text()[-2000:]}")
    yield url, token, nbdir, root
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def page(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield pg
        browser.close()


def _command(page, label: str, command: str) -> None:
    """Click a menu of the menu bar, then the item that runs `command` (JupyterLab's own command ids)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{label}$")).first.click()
    page.locator(f"li.lm-Menu-item[data-command='{command}']").first.click()


PANEL = ".jp-NotebookPanel:visible"  # the open notebook (earlier ones stay in the DOM, hidden)


def _prompts(page) -> list[str]:
    return page.locator(f"{PANEL} .jp-CodeCell .jp-InputPrompt").all_inner_texts()


def _shutdown_kernels(url: str, token: str) -> None:
    """Stop every kernel through the server's REST API, as closing the notebooks and their kernels would."""
    import urllib.request

    sessions = json.loads(urllib.request.urlopen(f"{url}/api/sessions?token={token}").read())
    for s in sessions:
        req = urllib.request.Request(f"{url}/api/sessions/{s['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(req)


def _run_notebook(page, url: str, token: str, name: str, shots: Path, during=None, timeout_s: float = 600) -> list:
    page.goto(f"{url}/lab/tree/{name}.ipynb?reset&token={token}")  # reset: only this notebook, no restored tabs
    page.wait_for_selector(f".lm-TabBar-tab.jp-mod-current:has-text('{name}')", timeout=90_000)
    page.wait_for_selector(f"{PANEL} .jp-Cell", timeout=90_000)
    page.wait_for_timeout(1000)
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        page.screenshot(path=str(shots / f"{name}-dialog.png"))
        pytest.fail(f"{name}: a dialog opened: {dialog.first.inner_text()[:500]}")
    page.wait_for_selector(f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    started = False
    for _ in range(3):  # a Run All sent while the kernel is still connecting can be dropped: send it again
        _command(page, "Run", "runmenu:run-all")
        for _ in range(30):
            page.wait_for_timeout(500)
            if any(re.search(r"\*|\d", p) for p in _prompts(page)):
                started = True
                break
        if started:
            break
    assert started, f"{name}: Run All did not start any cell"
    seen, t0, quiet = [], time.time(), 0
    while time.time() - t0 < timeout_s:
        time.sleep(1)
        if during:
            seen.append(during(page))
        prompts = _prompts(page)
        done = all(re.search(r"\[\d+\]", p) for p in prompts)
        busy = any("*" in p for p in prompts)
        quiet = 0 if busy else quiet + 1
        if done or quiet >= 5:  # all cells ran, or an error stopped the rest
            break
    else:
        pytest.fail(f"{name}: still running after {timeout_s} s")
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    _command(page, "File", "docmanager:save")
    page.wait_for_timeout(1500)
    return seen


def _errors(nbfile: Path) -> list[str]:
    nb = json.loads(nbfile.read_text())
    return [
        f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
        for i, c in enumerate(nb["cells"])
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def _unexecuted(nbfile: Path) -> list[int]:
    nb = json.loads(nbfile.read_text())
    return [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and "".join(c["source"]).strip() and c.get("execution_count") is None
    ]


def test_every_notebook_runs_in_jupyterlab_and_its_widgets_work(lab, page, tiny_series, tmp_path):
    url, token, nbdir, root = lab
    shots = tmp_path / "browser-shots"
    shots.mkdir()
    dashboard_text = lambda pg: " ".join(pg.locator(f"{PANEL} .widget-html-content").all_inner_texts())  # noqa: E731

    for name in TINY:
        during = dashboard_text if name == "02_train_sft" else None
        seen = _run_notebook(page, url, token, name, shots, during)
        nbfile = nbdir / f"{name}.ipynb"
        assert not _errors(nbfile), (name, _errors(nbfile))
        assert not _unexecuted(nbfile), (name, _unexecuted(nbfile))

        if name == "01_prepare_data":  # the dataset browser: a slider and a row rendered with trained tokens marked
            readout = page.locator(f"{PANEL} .widget-slider .widget-readout").first  # the slider's typed value
            first = page.locator(f"{PANEL} .widget-output").filter(has_text=re.compile(r"line \d+")).first.inner_text()
            readout.click()
            page.keyboard.press("Control+a")
            page.keyboard.type("5")
            page.keyboard.press("Enter")
            page.wait_for_timeout(1500)
            second = page.locator(f"{PANEL} .widget-output").filter(has_text=re.compile(r"line \d+")).first.inner_text()
            assert first != second and "mark" in page.locator(f"{PANEL} .widget-output").first.inner_html()
        if name == "02_train_sft":  # the live dashboard: the step counter advanced while training ran
            steps = {int(m.group(1)) for s in seen for m in [re.search(r"SFT: step (\d+)/24", s)] if m}
            assert len(steps) >= 3 and max(steps) == 24, sorted(steps)
            assert page.locator(f"{PANEL} .widget-output img, .widget-output canvas").count() >= 1  # the live plot
        if name == "05_evaluate":  # the chat playground: one streamed answer per model
            play = page.locator(f"{PANEL} .ftlab-playground")
            assert play.count() == 1 and play.locator("textarea").count() == 1
            answers = play.locator(".ftlab-answer")  # base, sft and dpo, streamed into their panes
            assert answers.count() == 3 and any(t.strip() for t in answers.all_inner_texts())
            assert "done" in play.inner_text()
            before = answers.all_inner_texts()
            play.locator("textarea").fill("Explain what a Python list comprehension is.")
            play.locator("button", has_text="Ask every model").click()  # a new prompt, asked from the page
            page.wait_for_function(
                "document.querySelector('.ftlab-playground button').disabled === false", timeout=120_000
            )
            page.wait_for_timeout(500)
            assert "done: 3 models answered “Explain what a Python list comprehension is.”" in play.inner_text()
            assert len(answers.all_inner_texts()) == len(before) == 3
        _shutdown_kernels(url, token)  # as closing the notebook with its kernel: frees the memory
    assert sorted(p.name for p in shots.iterdir()) == sorted(f"{n}.png" for n in TINY)
    run = root / "outputs" / "browser"
    for name in ("03_train_dpo", "04_merge_export"):  # finished in the copy: shown, not redone
        assert (run / name / "summary.json").read_bytes() == (tiny_series / name / "summary.json").read_bytes(), name
    assert "this stage already finished with these parameters" in (nbdir / "04_merge_export.ipynb").read_text()
    assert "(finished before)" in (nbdir / "03_train_dpo.ipynb").read_text()
    m = json.loads((run / "05_evaluate" / "metrics.json").read_text())
    assert m["final"] == "dpo" and set(m["models"]) == {"base", "sft", "dpo", "merged"}  # 02 anew, 03 and 04 copied
    assert json.loads((run / "02_train_sft" / "summary.json").read_text())["steps"] == 24
