"""Run a training notebook's code as a plain Python process: the entry point for `accelerate launch`.

    python -m ftlab.runner.launch 02_train_sft -f params/default.yaml -p run_name mine            # one process
    accelerate launch --config_file lib/ftlab/accelerate/ddp.yaml \\
        -m ftlab.runner.launch 02_train_sft -f params/gpu-24gb-8b.yaml -p run_name mine            # DDP, one GPU each
    accelerate launch --config_file lib/ftlab/accelerate/fsdp_qlora.yaml -m ftlab.runner.launch 02_train_sft ...

There is no second copy of the training code: every process reads `notebooks/02_train_sft.ipynb` and executes its
code cells in order, with the parameters injected after the `parameters` cell exactly as papermill does. Cells tagged
`main-process` (the curves and the summary) run only in the main process; the library writes the stage's files
(manifest, metrics, checkpoint marks, adapter) only from there. The Trainer takes DDP or FSDP from the launcher.

Each process also writes `launch/rank<N>.json` (its GPU's training peak memory and its wall time) and its printed
output to `launch/rank<N>.log` (rank 0 prints to the terminal); the main process then writes `launch/launch.json`
with all ranks, the world size, the distributed type and the run's tokens/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from ftlab.core import params as P
from ftlab.core import runs, stages
from ftlab.core.paths import atomic_write_json, stage_dir
from ftlab.hardware import devices
from ftlab.runner import pipeline

MAIN_ONLY_TAG = "main-process"


def injected_source(values: dict[str, Any]) -> str:
    """The cell papermill would inject after the parameters cell."""
    return "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())


def execute(notebook: Path, values: dict[str, Any], main: bool = True) -> dict[str, Any]:
    """Execute the notebook's code cells in one namespace, as a kernel would; return the namespace.
    The injected values land in that namespace, where the parameter check finds unknown names as in a notebook."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    for i, (src, tags) in enumerate(P.code_cells(notebook)):
        if MAIN_ONLY_TAG in tags and not main:
            continue
        sources = [src, injected_source(values)] if "parameters" in tags else [src]
        for s in sources:
            exec(compile(s, f"{notebook.name}, code cell {i}", "exec"), ns)  # noqa: S102 - the project's own notebook
    return ns


def resolve(stage: str, params_file: str | None, overrides: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The notebook and the values to inject, validated exactly as `python -m ftlab run` validates them."""
    nbs = [p for p in pipeline.list_notebooks() if p.stem == stage or p.name[:2] == stage[:2] and stage[:2].isdigit()]
    if len(nbs) != 1:
        names = ", ".join(p.stem for p in pipeline.list_notebooks())
        raise P.ParamError(f"no single notebook matches {stage!r}; expected one of: {names}")
    given = {**pipeline.load_params_file(params_file), **overrides}
    [(nb, inject)] = pipeline.plan(nbs, given)
    defaults = {d.name: d.default for d in P.notebook_parameters(nb)}
    inject["run_name"] = given.get("run_name", defaults.get("run_name", "default"))
    return nb, inject


def rank_record(ns: dict[str, Any], seconds: float) -> dict[str, Any]:
    import torch

    rank, local, world = devices.process_rank()
    rec: dict[str, Any] = {"rank": rank, "local_rank": local, "world_size": world, "seconds": round(seconds, 1)}
    rec["host_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux
    live = getattr(ns.get("job"), "live", None)
    if torch.cuda.is_available():
        rec["device"] = torch.cuda.get_device_name(torch.cuda.current_device())
        rec["train_peak"] = getattr(live, "train_peak", None)
        rec["process_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return rec


def distributed_type() -> str:
    try:
        from accelerate import PartialState

        return str(PartialState().distributed_type).rsplit(".", 1)[-1]
    except Exception:  # noqa: BLE001 - not under accelerate: one plain process
        return "NO"


def main(argv: list[str] | None = None) -> int:
    from ftlab.runner.cli import _value

    ap = argparse.ArgumentParser(prog="python -m ftlab.runner.launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", help=f"the notebook, e.g. {stages.TRAIN_SFT} or {stages.TRAIN_SFT[:2]}")
    ap.add_argument("-f", help="parameters YAML file (params/*.yaml)")
    ap.add_argument(
        "-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="override one parameter"
    )
    a = ap.parse_args(argv)
    rank, _, world = devices.process_rank()
    try:
        nb, values = resolve(a.stage, a.f, {k: _value(v) for k, v in a.p})
        if world > 1 and nb.stem not in stages.multi_process_stages():
            raise P.ParamError(
                f"{nb.stem} runs as one process only (several processes: {', '.join(stages.multi_process_stages())}); "
                f"run it with `python -m ftlab.runner.launch {nb.stem}` or `python -m ftlab run {nb.name[:2]}`."
            )
        if world == 1 and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
            raise P.ParamError(
                "FSDP was asked for with one process: FSDP needs two or more GPUs (on one, torch 2.11's FSDP falls "
                "back to NO_SHARD and fails in its first forward: benchmarks/results/fsdp_one_process_h200.json). "
                f"On one GPU run `python -m ftlab.runner.launch {nb.stem} ...`; on several pass --num_processes N."
            )
    except P.ParamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("FTLAB_HEADLESS", "1")  # widgets print; nothing waits for a browser
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    out = stage_dir(values["run_name"], nb.stem) / "launch"
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    cwd = os.getcwd()
    os.chdir(nb.parent)  # as papermill runs it: relative paths in the notebook resolve the same way
    try:
        if rank == 0:
            ns = execute(nb, values, main=True)
        else:  # the other ranks print the same lines: keep them in a file rather than interleaved on the terminal
            with open(out / f"rank{rank}.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
                ns = execute(nb, values, main=False)
    finally:
        os.chdir(cwd)
    atomic_write_json(out / f"rank{rank}.json", rank_record(ns, time.time() - t))
    devices.wait_for_everyone()
    if rank == 0:
        summary = runs.read_json(stage_dir(values["run_name"], nb.stem) / "summary.json")
        ranks = [runs.read_json(out / f"rank{r}.json") for r in range(world)]
        atomic_write_json(
            out / "launch.json",
            {
                "command": ["python", "-m", "ftlab.runner.launch", *sys.argv[1:]],
                "stage": nb.stem,
                "world_size": world,
                "distributed_type": distributed_type(),
                "tokens_per_s": summary.get("tokens_per_s"),
                "train_seconds": summary.get("train_seconds"),
                "train_tokens": summary.get("train_tokens"),
                "steps": summary.get("steps"),
                "ranks": ranks,
            },
        )
        print(f"{nb.stem}: {world} process(es), {summary.get('tokens_per_s')} tokens/s; {out / 'launch.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
