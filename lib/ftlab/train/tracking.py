"""report_to="mlflow": every training stage of a run is one MLflow run in a local store inside the run folder.

The store is `outputs/<run_name>/mlflow.db` (SQLite; no server) with artifacts in `outputs/<run_name>/mlartifacts/`;
the experiment is named after the run. transformers' MLflowCallback logs the Trainer's arguments and every logged
step's metrics into the run opened here; this module adds the stage's own parameters (`ftlab.*`), the loss before and
after training, and the adapter folder and `metrics.jsonl` as artifacts. Browse it with
`mlflow ui --backend-store-uri sqlite:///outputs/<run_name>/mlflow.db`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def store_uri(run_folder: Path) -> str:
    return f"sqlite:///{(Path(run_folder) / 'mlflow.db').resolve()}"


def _params(params: dict[str, Any]) -> dict[str, str]:
    """The stage's parameters as MLflow params (text, at most 6,000 characters each), prefixed so that they never
    clash with the Trainer arguments the callback logs under their own names."""
    return {f"ftlab.{k}": str(v)[:6000] for k, v in params.items()}


@contextlib.contextmanager
def tracked(trainer: Any, stage: Any) -> Iterator[Callable[..., None]]:
    """Around `trainer.train`: open this stage's MLflow run (when the trainer reports to mlflow) and yield
    `finish(metrics, *folders)`, which logs final metrics and artifacts; the run ends FAILED if training raised."""
    if "mlflow" not in (getattr(trainer.args, "report_to", None) or []):
        yield lambda *a, **k: None
        return
    import mlflow

    from ftlab.hardware import devices

    if not devices.is_main_process():  # the callback logs from the main process only; so does this
        yield lambda *a, **k: None
        return
    run_folder = Path(stage.dir).parent
    mlflow.set_tracking_uri(store_uri(run_folder))
    name = stage.run_name
    exp = mlflow.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(name, (run_folder / "mlartifacts").as_uri())
    run = mlflow.start_run(experiment_id=exp_id, run_name=stage.name, tags={"ftlab.stage": stage.name})
    mlflow.log_params(_params(stage.params))

    def finish(metrics: dict[str, float], *folders: Path) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        for f in folders:
            f = Path(f)
            if f.is_dir():
                mlflow.log_artifacts(str(f), f.name)
            elif f.exists():
                mlflow.log_artifact(str(f))

    try:
        yield finish
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run()
    print(f"MLflow run {run.info.run_id} in {store_uri(run_folder)} (experiment {name!r})")


def tensorboard_in_output_dir(trainer: Any) -> None:
    """report_to="tensorboard": fix the event folder before the first log. The stage evaluates before training, and
    transformers' TensorBoardCallback opens its writer on that first log with no folder set, which lands in the
    kernel's working directory (notebooks/runs/); training would then log there too. This is the folder the callback
    picks itself at train begin: <output_dir>/runs/<date>_<host>."""
    from transformers.integrations import TensorBoardCallback
    from transformers.integrations.integration_utils import default_logdir

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None:
            cb.logging_dir = str(Path(trainer.args.output_dir) / default_logdir())
