"""What users read: every Lightning logger ends on the run's totals, joins the step log, holds the run's facts.

Each logger's output is read back with its own client: Lightning's CSV (a csv reader and its `hparams.yaml`
loader), TensorBoard's `EventAccumulator`, MLflow's client on a sqlite tracking database, W&B's offline run
records. 7 steps logged every 2: the Trainer writes rows at steps 1, 3 and 5, so step 7 reaches the loggers only
through the callback's last row.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("wandb")
pytest.importorskip("tensorboard")

import pytorch_lightning as pl  # noqa: E402

from carbon_callbacks import read_run  # noqa: E402
from carbon_callbacks.lightning import CarbonCallback  # noqa: E402

from lightning_support import SITE, FixedMeter, LitGPT, csv_rows, loader  # noqa: E402
from readers import tensorboard_scalars, wandb_records  # noqa: E402

pytestmark = pytest.mark.slow
FACTS = {"carbon/region": "none (intensity given)", "carbon/pue": 1.2, "carbon/gross_kg_per_kwh": 0.5,
         "carbon/net_kg_per_kwh": 0.2, "carbon/chip": "v100", "carbon/num_chips": 1,
         "carbon/energy_method": "measured:nvml"}


@pytest.fixture(autouse=True)
def _wandb_offline_and_mlflow_reset(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    import mlflow
    import wandb

    # What Lightning's loggers leave process-wide, which a later test's W&B and MLflow would write into: W&B's
    # settings (its save folder) and MLflow's tracking URI (with MLFLOW_TRACKING_URI).
    wandb.finish()
    wandb.teardown()
    mlflow.set_tracking_uri(None)


def fit(root, loggers, *, max_steps=7, model=None, **callback):
    callback = CarbonCallback(**{**SITE, "chip": "v100", "meter": FixedMeter(), **callback})
    trainer = pl.Trainer(
        default_root_dir=root, max_steps=max_steps, log_every_n_steps=2, callbacks=[callback], logger=loggers,
        accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model or LitGPT(), loader())
    return callback, trainer


def loggers(root):
    return [
        pl.loggers.CSVLogger(root, name="csv"),
        pl.loggers.TensorBoardLogger(root, name="tb"),
        mlflow_logger(root),
        pl.loggers.WandbLogger(project="carbon", save_dir=str(root), offline=True),
    ]


def mlflow_logger(root):
    """An MLflow logger on a sqlite tracking database, its artifacts beside it (not in the working directory)."""
    return pl.loggers.MLFlowLogger(experiment_name="carbon", tracking_uri=f"sqlite:///{root}/mlflow.db",
                                   artifact_location=str(root / "mlartifacts"))


def mlflow_client(root):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")


def test_every_logger_ends_on_the_run_totals_joins_the_step_log_and_holds_the_facts(tmp_path):
    csv, tb, mlf, wb = loggers(tmp_path)
    callback, _ = fit(tmp_path, [csv, tb, mlf, wb])
    import wandb

    wandb.finish()
    summary, records = read_run(callback.session.run_dir)
    assert summary["steps"] == 7
    by_step = {r["step"]: r for r in records}
    assert sorted(by_step) == [1, 3, 5, 6]  # the logger's steps: 0-based, the last one the 7th step's
    totals = {"carbon/energy_kwh": summary["energy_kwh"], "carbon/co2e_kg": summary["gross_co2e_kg"],
              "carbon/co2e_net_kg": summary["net_co2e_kg"]}

    rows = [r for r in csv_rows(csv) if r.get("carbon/energy_kwh")]
    assert [int(r["step"]) for r in rows] == [1, 3, 5, 6]
    for key, total in totals.items():
        assert float(rows[-1][key]) == pytest.approx(total, rel=1e-12)
    for row in rows:
        assert float(row["carbon/energy_kwh"]) == pytest.approx(by_step[int(row["step"])]["energy_kwh"], rel=1e-12)
    hparams = pl.core.saving.load_hparams_from_yaml(os.path.join(csv.log_dir, "hparams.yaml"))
    assert FACTS.items() <= hparams.items()

    scalars = tensorboard_scalars(tb.log_dir)
    for key, total in totals.items():
        assert scalars[key][-1] == (6, pytest.approx(total, rel=1e-6))  # float32 events
    assert [step for step, _ in scalars["carbon/energy_kwh"]] == [1, 3, 5, 6]

    client = mlflow_client(tmp_path)
    run = client.get_run(mlf.run_id)
    for key, total in totals.items():
        assert run.data.metrics[key] == pytest.approx(total, rel=1e-12)  # the run table's figure: the last value
    history = client.get_metric_history(mlf.run_id, "carbon/energy_kwh")
    assert [m.step for m in history] == [1, 3, 5, 6]
    assert {k: str(v) for k, v in FACTS.items()}.items() <= run.data.params.items()
    assert run.data.params["carbon/flops_method"].startswith("model: analytic")
    assert {a.path for a in client.list_artifacts(mlf.run_id, "carbon")} == {"carbon/run.json", "carbon/report.md"}

    recorded = wandb_records(tmp_path, wb.version)
    for key, total in totals.items():
        assert recorded["summary"][key] == pytest.approx(total, rel=1e-12)
    assert [h["trainer/global_step"] for h in recorded["history"] if "carbon/energy_kwh" in h] == [1, 3, 5, 6]
    assert FACTS.items() <= recorded["config"].items()
    assert {"carbon/run.json", "carbon/report.md"} <= set(recorded["files"])


def test_two_runs_under_mlflow_and_wandb_leave_two_run_folders(tmp_path):
    runs = []
    for _ in range(2):
        mlf = mlflow_logger(tmp_path)
        callback, _ = fit(tmp_path, [mlf], max_steps=2)
        runs.append((mlf.run_id, callback.session.run_dir))
    for _ in range(2):
        import wandb

        wb = pl.loggers.WandbLogger(project="carbon", save_dir=str(tmp_path), offline=True)
        callback, _ = fit(tmp_path, [wb], max_steps=2)
        runs.append((wb.version, callback.session.run_dir))
        wandb.finish()
    for run_id, run_dir in runs:
        assert run_dir == tmp_path / "carbon" / run_id  # the logger's run id names the folder
        assert read_run(run_dir)[0]["steps"] == 2
    assert len({run_dir for _, run_dir in runs}) == 4


def test_without_a_logger_each_run_gets_a_new_folder(tmp_path):
    folders = {fit(tmp_path, False, max_steps=2)[0].session.run_dir for _ in range(2)}
    assert len(folders) == 2 and all(f.parent == tmp_path / "carbon" for f in folders)


def test_an_output_dir_holding_a_run_gets_a_new_subfolder_and_says_so(tmp_path, capsys):
    first, _ = fit(tmp_path, False, max_steps=2, output_dir=tmp_path / "runs")
    second, _ = fit(tmp_path, False, max_steps=2, output_dir=tmp_path / "runs")
    assert first.session.run_dir == tmp_path / "runs"
    assert second.session.run_dir.parent == tmp_path / "runs"
    assert f"{tmp_path / 'runs'} already holds a run; this run is written to {second.session.run_dir}" in \
        capsys.readouterr().out
    assert read_run(tmp_path / "runs")[0]["steps"] == read_run(second.session.run_dir)[0]["steps"] == 2


def test_a_failed_fit_still_ends_every_logger_on_its_totals(tmp_path):
    csv = pl.loggers.CSVLogger(tmp_path, name="csv")
    with pytest.raises(RuntimeError, match="user code failed"):
        fit(tmp_path, [csv], model=LitGPT(fail_at=4))
    summary, _ = read_run(tmp_path / "csv" / "version_0" / "carbon")
    rows = [r for r in csv_rows(csv) if r.get("carbon/energy_kwh")]
    assert summary["status"] == "failed" and summary["steps"] == 4
    assert float(rows[-1]["carbon/energy_kwh"]) == pytest.approx(summary["energy_kwh"], rel=1e-12)
