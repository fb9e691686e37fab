"""The run's files, attached where an experiment tracker keeps files: MLflow artifacts, W&B run files.

Used by the adapters at a run's end (rank 0), after `run.json` and `report.md` are written. Each function takes
the tracker's own objects (an `MlflowClient` and a run id, a `wandb` run) so the adapter decides which run.
"""

from __future__ import annotations

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
