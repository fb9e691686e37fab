"""Ray Train: a Lightning fit, and a Hugging Face `Trainer`, in a `TorchTrainer` of 2 CPU workers on a local Ray
cluster, each with Ray's report callback. The carbon/* metrics reach the run's result without a Lightning logger,
the last result (in Ray Train V2, the latest checkpoint's metrics) holds the run's totals, and the run folder lands
under the run's storage path, beside its checkpoints."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.train")

from carbon_callbacks import read_run  # noqa: E402

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
#: What the workers import: the training function, the Lightning suite's pieces, the fakes.
PATHS = os.pathsep.join([str(HERE), str(HERE.parent / "lightning"), str(HERE.parents[1] / "tests"), *sys.path])


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {
        "CARBON_CALLBACKS_STRICT": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": PATHS}})
    yield
    ray.shutdown()


def test_lightning_under_ray_train_reports_the_totals_beside_its_checkpoints(cluster, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray_loop import train_loop

    trainer = TorchTrainer(train_loop, scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                           run_config=RunConfig(storage_path=str(tmp_path), name="exp"))
    result = trainer.fit()
    (run_dir,) = (tmp_path / "exp" / "carbon").iterdir()  # under the run's storage path
    summary, logged = read_run(run_dir)
    assert summary["world_size"] == 2 and summary["steps"] == 6 and summary["status"] == "finished"
    assert result.metrics["carbon/energy_kwh"] == pytest.approx(summary["energy_kwh"], rel=1e-12)  # the last result
    assert result.metrics["carbon/co2e_kg"] == pytest.approx(summary["gross_co2e_kg"], rel=1e-12)
    assert [r["num_steps"] for r in logged] == [2, 2, 2]


def test_the_trainer_under_ray_train_reports_the_totals_beside_its_checkpoints(cluster, tmp_path):
    pytest.importorskip("transformers")
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray_loop import trainer_loop

    trainer = TorchTrainer(trainer_loop, train_loop_config={"output_dir": str(tmp_path / "hf")},
                           scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                           run_config=RunConfig(storage_path=str(tmp_path), name="exp"))
    result = trainer.fit()
    (run_dir,) = (tmp_path / "exp" / "carbon").iterdir()
    summary, _ = read_run(run_dir)
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert result.metrics["carbon/energy_kwh"] == pytest.approx(summary["energy_kwh"], rel=1e-12)
    assert not (tmp_path / "hf" / "carbon").exists()
