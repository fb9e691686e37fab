"""What carbon-callbacks reads from inside Ray Train, when the training runs in its worker actors (`TorchTrainer`).

Checked against ray 2.60.0 (Train V2, the default there). Used, in `train_run`: `ray.train.get_context()` (whether this
process is a Ray Train worker) and its `get_storage()` (a DeveloperAPI: the run's storage, `RunConfig(storage_path,
name)`, where the run folder goes beside the checkpoints when it is a local or shared file system), and
`ray.train.report(metrics)`, through which the run's final totals become the last result's metrics (every worker
calls it once at a finished end: it is a barrier across workers). Nothing here imports Ray: it is used only where
the user's own code has imported `ray.train`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from carbon_callbacks._compat import missing

CHECKED = "ray 2.60.0"


@dataclass(frozen=True)
class RayTrain:
    """A Ray Train worker's run: where its storage is on this machine's file system (`None`: remote storage, such as
    S3), and the `report` that hands metrics to the run's result."""

    storage_dir: Path | None
    report: Callable[[dict], None]


def train_run() -> RayTrain | None:
    """This process's Ray Train run, or `None` outside one."""
    train = sys.modules.get("ray.train")
    if train is None:
        return None
    try:
        context = train.get_context()
        context.get_world_rank()  # raises outside a training function
    except Exception:
        return None
    storage_dir = None
    try:
        storage = context.get_storage()
        if storage.storage_filesystem.type_name == "local":
            storage_dir = Path(storage.experiment_fs_path)
    except AttributeError:
        missing("ray", "TrainContext.get_storage().experiment_fs_path", CHECKED, "the run folder is not put beside "
                "the run's checkpoints; pass output_dir=.")
    return RayTrain(storage_dir, lambda metrics: train.report(metrics))
