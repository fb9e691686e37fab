"""The run's facts and files, where an experiment tracker keeps them: MLflow params and artifacts, W&B config and
run files. Used by the adapters on rank 0.

Two ways to find the run: `attach` takes a Lightning logger (the adapter knows which run); the `*_active_runs`
functions use the tracker's active run in this process, for frameworks whose loggers are not reachable objects
(the Hugging Face Trainer's `report_to` integrations).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

#: The artifact folder (MLflow) or file prefix (W&B) the run files go under.
ARTIFACT_DIR = "carbon"


def attach_to_mlflow(client, run_id: str, files: Iterable[Path]) -> None:
    """Logs `files` as artifacts of MLflow run `run_id` under `carbon/`."""
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_DIR)


def attach_to_wandb(run, files: Iterable[Path]) -> None:
    """Saves `files` with W&B run `run`, as `carbon/<name>` among its files (uploaded now, or at sync offline)."""
    for path in files:
        staged = Path(run.dir) / ARTIFACT_DIR / path.name
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(path.read_bytes())
        run.save(str(staged), base_path=run.dir, policy="now")


def attach(logger, files: list[Path]) -> bool:
    """Attaches `files` to a Lightning logger's run when it keeps files (MLflow, W&B); returns whether it did."""
    experiment = getattr(logger, "experiment", None)
    run_id = getattr(logger, "run_id", None)
    if run_id is not None and hasattr(experiment, "log_artifact"):
        attach_to_mlflow(experiment, run_id, files)
        return True
    if hasattr(experiment, "save") and hasattr(experiment, "dir"):
        attach_to_wandb(experiment, files)
        return True
    return False


def active_runs() -> list[tuple[str, object]]:
    """The experiment-tracker runs active in this process: `("mlflow", run id)` and `("wandb", run)`.

    For frameworks whose loggers are not reachable objects (the Hugging Face Trainer's `report_to` integrations
    log to the tracker's active run). A tracker that was never imported has no run: none is imported here.
    """
    runs: list[tuple[str, object]] = []
    mlflow = sys.modules.get("mlflow")
    active = getattr(mlflow, "active_run", None)
    run = active() if callable(active) else None
    if run is not None:
        runs.append(("mlflow", run.info.run_id))
    wandb_run = getattr(sys.modules.get("wandb"), "run", None)
    if wandb_run is not None:
        runs.append(("wandb", wandb_run))
    return runs


def log_params_to_active_runs(params: dict) -> None:
    """Logs `params` (the run's facts) as the active MLflow run's params and the active W&B run's config."""
    for kind, run in active_runs():
        if kind == "mlflow":
            sys.modules["mlflow"].log_params(params, run_id=run)
        else:
            run.config.update(params, allow_val_change=True)


def attach_to_active_runs(files: list[Path]) -> None:
    """Attaches `files` to the active MLflow run (artifacts under `carbon/`) and W&B run (files under `carbon/`)."""
    for kind, run in active_runs():
        if kind == "mlflow":
            from mlflow.tracking import MlflowClient

            attach_to_mlflow(MlflowClient(), run, files)
        else:
            attach_to_wandb(run, files)
