"""Run the notebooks headless with papermill: a range of stages, one run folder, fail fast.

Parameters are checked against every notebook in the range before the first one starts: an unknown name, a wrong
type or a bad value stops the run with a message naming the valid choices and nothing is executed.

A name at the top level goes to every notebook that declares it. A name under a notebook's name goes to that one
notebook only, and wins over the top level: in a params file, `03_train_dpo: {learning_rate: 5.0e-5}`; on the command
line, `-p 03_train_dpo.learning_rate 5e-5`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ftlab.core import params as P
from ftlab.core import stages
from ftlab.core.paths import cache_dir, notebooks_dir, run_dir
from ftlab.runner import status_line

KERNEL_NAME = "ftlab"
KERNEL_DISPLAY = "Python (ftlab)"


class StageFailed(RuntimeError):
    pass


def list_notebooks(start: str = "00", end: str = "99") -> list[Path]:
    """Notebooks `NN_name.ipynb` that exist, in order, with start <= NN <= end."""
    nbs = sorted(p for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))
    return [p for p in nbs if start <= p.name[:2] <= end]


def load_params_file(path: str | Path | list[str | Path] | None) -> dict[str, Any]:
    """A parameters YAML file as a dict; several files merged in order, a later file's value winning."""
    if isinstance(path, list | tuple):
        return {k: v for f in path for k, v in load_params_file(f).items()}
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise P.ParamError(f"{path}: expected a mapping of parameter names to values, found {type(data).__name__}")
    # a notebook's own section becomes dotted names, so a later file or -p overrides one name, not the section
    stems = {nb.stem for nb in list_notebooks()}
    flat = {}
    for k, v in data.items():
        if k in stems:
            if not isinstance(v, dict):
                raise P.ParamError(
                    f"{path}: {k!r} names a notebook, so its value must be a mapping of that notebook's parameters "
                    f"(e.g. {k}: {{learning_rate: 5.0e-5}}); found {type(v).__name__} {v!r}"
                )
            flat.update({f"{k}.{n}": x for n, x in v.items()})
        else:
            flat[k] = v
    return flat


def split_scoped(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`given` as (the names for every notebook, {notebook name: the names for it alone}), from dotted names such as
    `03_train_dpo.learning_rate`; a dotted name whose notebook is not in the series is an error."""
    stems = {nb.stem for nb in list_notebooks()}
    common: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {}
    for k, v in given.items():
        stem, dot, name = str(k).partition(".")
        if not dot:
            common[k] = v
        elif stem in stems:
            scoped.setdefault(stem, {})[name] = v
        else:
            raise P.ParamError(
                f"parameter {k!r}: {stem!r} is not a notebook of the series; a notebook's own value is written "
                f"NOTEBOOK.NAME with NOTEBOOK one of {', '.join(sorted(stems))}"
            )
    return common, scoped


def plan(notebooks: list[Path], given: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    """Validate `given` against the notebooks; return each notebook with the parameters to inject into it."""
    if not notebooks:
        raise P.ParamError(f"no notebooks in that range under {notebooks_dir()}")
    declared = {nb: {d.name: d.default for d in P.notebook_parameters(nb)} for nb in notebooks}
    common, scoped = split_scoped(given)
    # a name is valid when some notebook of the series declares it, so one params file serves any range of stages
    series = {nb.stem: {d.name for d in P.notebook_parameters(nb)} for nb in list_notebooks()}
    known = set().union(*series.values())
    unknown = sorted(set(common) - known)
    if unknown:
        raise P.ParamError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))}: no notebook declares them; "
            f"valid names: {', '.join(sorted(known))}. "
            f"`python -m ftlab params NOTEBOOK` lists each notebook's parameters with their comments."
        )
    for stem, names in scoped.items():
        if set(names) - series[stem]:
            raise P.ParamError(
                f"{stem} does not declare {', '.join(map(repr, sorted(set(names) - series[stem])))}; "
                f"its parameters: {', '.join(sorted(series[stem]))}"
            )
    out = []
    for nb, defaults in declared.items():
        inject = {k: v for k, v in common.items() if k in defaults} | scoped.get(nb.stem, {})
        if nb.stem in P.SPECS:
            P.validate(nb.stem, {**defaults, **inject})
        out.append((nb, inject))
    return out


def ensure_kernel() -> str:
    """Register this interpreter as the `ftlab` Jupyter kernel inside its own prefix (no writes to $HOME)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY, prefix=sys.prefix)
    return KERNEL_NAME


HOME_DIRS = {"IPYTHONDIR": "ipython", "MPLCONFIGDIR": "matplotlib", "JUPYTER_RUNTIME_DIR": "jupyter-runtime"}


def run(
    start: str = "00",
    end: str = "99",
    params_file: str | list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    verbose: bool = False,
    log=print,
) -> Path:
    """Execute the notebooks in [start, end] in order; executed copies go to outputs/<run>/notebooks/."""
    given = {**load_params_file(params_file), **(overrides or {})}
    steps = plan(list_notebooks(start, end), given)
    # every notebook declares run_name; when it is not given, the first notebook's default names the run
    defaults = {d.name: d.default for d in P.notebook_parameters(steps[0][0])}
    run_name = given.get("run_name", defaults.get("run_name", "default"))
    steps = [(nb, {**inject, "run_name": run_name}) for nb, inject in steps]
    out_dir = run_dir(run_name) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("FTLAB_HEADLESS", "PYTORCH_CUDA_ALLOC_CONF", *HOME_DIRS)}
    os.environ["FTLAB_HEADLESS"] = "1"  # the kernel inherits it: widgets print instead of waiting for a browser
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # fewer fragmentation OOMs
    for k, sub in HOME_DIRS.items():  # IPython, matplotlib and Jupyter write into the cache, not the user's home
        os.environ.setdefault(k, str(cache_dir() / sub))
    try:
        kernel = ensure_kernel()
        _execute(steps, run_name, out_dir, kernel, verbose, log)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return run_dir(run_name)


def _execute(
    steps: list[tuple[Path, dict[str, Any]]], run_name: str, out_dir: Path, kernel: str, verbose: bool, log
) -> None:
    import papermill as pm

    t_run = time.time()
    log(f"run {run_name!r}: {len(steps)} stage(s) -> {run_dir(run_name)}")
    for i, (nb, inject) in enumerate(steps, 1):
        t = time.time()
        log(f"[{i}/{len(steps)}] {nb.stem} ...")
        live = status_line.Progress(f"[{i}/{len(steps)}] {nb.stem}", run_dir(run_name) / nb.stem, out=log)
        try:
            pm.execute_notebook(
                str(nb),
                str(out_dir / nb.name),
                parameters=inject,
                kernel_name=kernel,
                cwd=str(nb.parent),
                progress_bar=False,
                log_output=verbose,
                engine_name=status_line.engine(),
                # the kernel's own start-up warnings (e.g. "running over TCP without encryption": it listens on
                # 127.0.0.1 with signed messages) are noise in a headless log; its errors and the cells' output stay
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
                on_cell=(live.running() if not verbose else live).cell,  # verbose: the cells' own output instead
            )
        except pm.PapermillExecutionError as e:
            log(f"[{i}/{len(steps)}] {nb.stem} FAILED after {time.time() - t:.1f} s")
            raise StageFailed(
                f"stage {nb.stem} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                f"executed copy with the full traceback: {out_dir / nb.name}"
            ) from None
        except Exception as e:  # noqa: BLE001 - the kernel died (killed, out of host memory) or could not start
            log(f"[{i}/{len(steps)}] {nb.stem} FAILED after {time.time() - t:.1f} s")
            raise StageFailed(
                f"stage {nb.stem} stopped: {type(e).__name__}: {e}. If the kernel died, re-running resumes "
                f"from the last complete checkpoint where the stage has them. Partial output: {out_dir / nb.name}"
            ) from None
        finally:
            live.end()
            to_html(out_dir / nb.name)
        log(f"[{i}/{len(steps)}] {nb.stem} ok ({time.time() - t:.1f} s)")
        for line in stage_notices(run_dir(run_name) / nb.stem):
            log(f"    {line}")
    keyed = [(nb.stem, stages.stage(nb.stem).key if nb.stem in stages.stage_names() else ()) for nb, _ in steps]
    log(status_line.stage_table(run_dir(run_name), keyed))
    log(f"done in {time.time() - t_run:.1f} s; run folder: {run_dir(run_name)}")


def stage_notices(folder: Path) -> list[str]:
    """What a stage that passed still wants read, for the headless log: stage 01's rejected rows by reason (each one
    with its line in rejected.jsonl) and its content warnings: placeholders and media tags that would train verbatim,
    fields kept beside the row but not trained."""
    import json

    from ftlab import data

    path = folder / "stats.json"
    if not path.exists():
        return []
    stats = json.loads(path.read_text(encoding="utf-8"))
    out = []
    if reasons := stats.get("rejected_reasons"):
        by = ", ".join(f"{r} x{n}" for r, n in reasons.items())
        out.append(f"rejected {sum(reasons.values())} rows: {by} (each with its line: {folder / 'rejected.jsonl'})")
    for name, found in (stats.get("warnings") or {}).items():
        out += [f"{name}: {line}" for line in data.brief_warnings(found).splitlines()] if found else []
    return out


def to_html(executed: Path) -> Path | None:
    """The executed notebook as a standalone HTML page beside it, readable without Jupyter (also after a failure)."""
    if not executed.exists():
        return None
    import nbformat

    try:
        from nbconvert import HTMLExporter
    except ImportError:  # an environment without nbconvert still runs the series; only the HTML copy is missing
        print(
            f"no HTML copy of {executed.name}: nbconvert is not installed (pip install nbconvert, in requirements.lock)"
        )
        return None
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    out = executed.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


# ---- sweeps -------------------------------------------------------------------------------------------------------


def grid(specs: list[str]) -> list[dict[str, Any]]:
    """`["lora_r=8,16", "learning_rate=1e-4,3e-4"]` -> every combination, values read as YAML."""
    import itertools

    axes = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name or not values:
            raise P.ParamError(f"grid axis {spec!r}: expected NAME=V1,V2,... (e.g. lora_r=8,16,32)")
        axes.append([(name.strip(), P.parse_value(v)) for v in values.split(",")])
    return [dict(c) for c in itertools.product(*axes)]


def _slug(d: dict[str, Any]) -> str:
    import re

    return "-".join(re.sub(r"[^A-Za-z0-9_.]", "", f"{k}{v}") for k, v in d.items())


def sweep_sets(files: list[str], axes: list[str], prefix: str = "sweep") -> list[tuple[str, dict[str, Any]]]:
    """(run name, parameters) per run: each parameter file (its run_name, else its file name) crossed with the grid."""
    bases = [(load_params_file(f), Path(f).stem) for f in files] or [({}, prefix)]
    combos = grid(axes) if axes else [{}]
    out = []
    for params, stem in bases:
        for combo in combos:
            name = params.get("run_name", stem) if not combo else f"{params.get('run_name', stem)}-{_slug(combo)}"
            out.append((name, {**params, **combo, "run_name": name}))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise P.ParamError(f"two sweep runs would share the run name(s) {dup}: give each file its own run_name")
    return out


def is_complete(run_name: str, start: str, end: str, given: dict[str, Any]) -> bool:
    """Every stage in the range finished with exactly these parameters (so the run can be skipped)."""
    import json

    manifest = run_dir(run_name) / "manifest.json"
    if not manifest.exists():
        return False
    stages = json.loads(manifest.read_text()).get("stages", {})
    for nb, inject in plan(list_notebooks(start, end), given):
        defaults = {d.name: d.default for d in P.notebook_parameters(nb)}
        want = P.validate(nb.stem, {**defaults, **inject, "run_name": run_name}) if nb.stem in P.SPECS else None
        st = stages.get(nb.stem, {})
        if st.get("status") != "complete" or (want is not None and st.get("params") != want):
            return False
    return True


def sweep(sets: list[tuple[str, dict[str, Any]]], start: str = "00", end: str = "99", log=print) -> dict[str, Any]:
    """Run each parameter set as its own run, one after another; a failed run does not stop the others."""
    done, skipped, failed = [], [], []
    invalid = {}
    for name, given in sets:  # checked up front: a broken set is reported at once and the others still run
        try:
            P.check_run_name(name)
            plan(list_notebooks(start, end), given)
        except (P.ParamError, ValueError) as e:
            invalid[name] = str(e)
    if invalid:
        log(f"{len(invalid)} of {len(sets)} parameter set(s) are invalid and will not run: {sorted(invalid)}")
    for i, (name, given) in enumerate(sets, 1):
        tag = f"[run {i}/{len(sets)}] {name}"
        if name in invalid:
            log(f"{tag}: FAILED (invalid parameters): {invalid[name].splitlines()[0]}")
            failed.append({"run": name, "error": invalid[name]})
            continue
        try:
            if is_complete(name, start, end, given):
                log(f"{tag}: already complete with these parameters, skipped")
                skipped.append(name)
                continue
            log(f"{tag}: starting")
            t = time.time()
            run(start, end, overrides=given, log=lambda m, tag=tag: log(f"  {m}"))
            log(f"{tag}: ok ({time.time() - t:.0f} s)")
            done.append(name)
        except (P.ParamError, StageFailed, FileNotFoundError, ValueError) as e:
            log(f"{tag}: FAILED: {str(e).splitlines()[0]}")
            failed.append({"run": name, "error": str(e)})
    log(f"sweep: {len(done)} ran, {len(skipped)} skipped (complete), {len(failed)} failed")
    for f in failed:
        log(f"  FAILED {f['run']}: {f['error']}")
    return {"ok": done, "skipped": skipped, "failed": failed}
