"""Real `Trainer.fit` runs of the reference GPTs with `CarbonCallback` and a CSVLogger, on CPU."""

from __future__ import annotations

import contextlib
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch
from traces import by_hand, hours_around, plain_csv

from carbon_callbacks import InvalidInputError, read_run
from carbon_callbacks.flops import transformer_flops
from carbon_callbacks.lightning import CarbonCallback

from lightning_support import (
    DENSE_SMALL,
    J_PER_KWH,
    SITE,
    SWITCH_SMALL,
    FixedMeter,
    LitGPT,
    csv_rows,
    loader,
    trainer,
)

CARBON_COLUMNS = (
    "carbon/energy_kwh",
    "carbon/co2e_kg",
    "carbon/co2e_net_kg",
    "carbon/flops",
    "carbon/step_time_s",
    "carbon/mfu",
)
#: One window of the fake meter, as facility energy: 90 J x PUE 1.2.
WINDOW_KWH = 90.0 * 1.2 / J_PER_KWH


def fit(tmp_path, module=None, max_steps=8, log_every_n_steps=2, ckpt_path=None, **callback_kwargs):
    args = {**SITE, "meter": FixedMeter(), "chip": "a100-40gb", **callback_kwargs}
    callback = CarbonCallback(**args)
    run = trainer(tmp_path, [callback], max_steps=max_steps, log_every_n_steps=log_every_n_steps)
    module = module or LitGPT()
    run.fit(module, loader(module.model.config), ckpt_path=ckpt_path)
    return callback, run


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_missing_location_fails_at_construction():
    with pytest.raises(InvalidInputError, match="never guesses a location"):
        CarbonCallback()


def test_metrics_sit_in_the_loss_rows_and_co2e_is_energy_times_intensity(tmp_path, capsys):
    callback, run = fit(tmp_path)
    rows = csv_rows(run)
    loss_rows = [r for r in rows if r.get("train_loss")]
    assert [r["step"] for r in loss_rows] == ["1", "3", "5", "7"]
    for windows, row in enumerate(loss_rows, start=1):
        assert all(row[c] != "" for c in CARBON_COLUMNS)  # the same CSV row as the loss
        energy = float(row["carbon/energy_kwh"])
        assert energy == pytest.approx(windows * WINDOW_KWH, rel=1e-12)
        assert float(row["carbon/co2e_kg"]) == pytest.approx(energy * 0.5, rel=1e-12)
        assert float(row["carbon/co2e_net_kg"]) == pytest.approx(energy * 0.2, rel=1e-12)
        assert float(row["carbon/step_time_s"]) == 1.5  # 3 s windows of 2 steps
    assert not [r for r in rows if not r.get("train_loss") and r.get("carbon/co2e_kg")]  # no rows of their own

    assert callback.session.run_dir == Path(run.logger.log_dir) / "carbon"  # default: the logger's version folder
    summary, records = read_run(callback.session.run_dir)
    assert summary["status"] == "finished" and summary["steps"] == 8 and summary["world_size"] == 1
    assert summary["gross_co2e_kg"] == pytest.approx(4 * WINDOW_KWH * 0.5, rel=1e-12)
    assert [r["step"] for r in records] == [1, 3, 5, 7] and records[-1]["loss"] == pytest.approx(
        float(loss_rows[-1]["train_loss"]), rel=1e-6
    )
    assert capsys.readouterr().out.count("carbon-callbacks: 8 steps, status finished") == 1


def test_an_hourly_trace_is_integrated_over_each_logged_interval(tmp_path):
    starts = hours_around(time.time())
    trace = plain_csv(tmp_path / "grid.csv", starts)
    callback, run = fit(tmp_path, intensity=str(trace), net_intensity=None)
    summary, records = read_run(callback.session.run_dir)
    expected = sum(r["step_energy_kwh"] * by_hand(starts, r["time"] - r["seconds"], r["time"]) for r in records)
    assert summary["gross_co2e_kg"] == pytest.approx(expected, rel=1e-9) == summary["net_co2e_kg"]
    last = [r for r in csv_rows(run) if r.get("carbon/co2e_kg")][-1]
    assert float(last["carbon/co2e_kg"]) == pytest.approx(expected, rel=1e-9)  # the logger's row: the same total
    assert summary["info"]["intensity_trace"]["gross"]["source"] == "grid.csv"


def test_dense_counted_flops_match_the_analytic_count(tmp_path):
    callback, run = fit(tmp_path)
    expected = transformer_flops(DENSE_SMALL)
    row = [r for r in csv_rows(run) if r.get("train_loss")][-1]
    assert float(row["carbon/flops"]) == pytest.approx(expected.model_flops, rel=0.01)
    mfu = float(row["carbon/flops"]) / 1.5 / 312e12  # a100: 312 dense bf16 TFLOP/s
    assert float(row["carbon/mfu"]) == pytest.approx(mfu, rel=1e-6)
    assert callback.summary["total_model_flops"] == pytest.approx(8 * expected.model_flops, rel=0.01)
    method = callback.summary["info"]["flops_method"]  # the config is known: model FLOPs analytic, hardware traced
    assert method.startswith("model: analytic") and "hardware: traced:torch-flop-counter" in method


def test_switch_reports_model_and_hardware_flops(tmp_path):
    callback, run = fit(tmp_path, LitGPT(SWITCH_SMALL))
    expected = transformer_flops(SWITCH_SMALL)
    assert expected.model_flops < expected.hardware_flops  # capacity padding
    row = [r for r in csv_rows(run) if r.get("train_loss")][-1]
    assert float(row["carbon/flops"]) == expected.model_flops  # activated experts only
    summary = callback.summary
    assert summary["total_model_flops"] == 8 * expected.model_flops
    assert summary["total_hardware_flops"] == pytest.approx(8 * expected.hardware_flops, rel=0.01)  # traced
    assert summary["info"]["percent_active"] == pytest.approx(expected.percent_active)
    assert summary["info"]["flops_method"].startswith("model: analytic")


def test_given_flops_and_module_attribute_override_counting(tmp_path):
    callback, _ = fit(tmp_path / "given", flops=1e9)
    assert callback.summary["total_model_flops"] == 8e9
    assert callback.summary["info"]["flops_method"] == "given"

    module = LitGPT()
    module.flops_per_batch = 2e9
    callback, _ = fit(tmp_path / "attr", module)
    assert callback.summary["total_model_flops"] == 16e9
    assert callback.summary["info"]["flops_method"] == "given: LitGPT.flops_per_batch"


def test_counting_leaves_the_training_unchanged(tmp_path):
    """The FLOP count runs one extra step; RNG, buffers and gradients are restored, so the losses are the same."""
    torch.manual_seed(0)
    _, counted = fit(tmp_path / "counted", LitGPT())
    torch.manual_seed(0)
    _, given = fit(tmp_path / "given", LitGPT(), flops=1.0)
    losses = [[r["train_loss"] for r in csv_rows(run) if r.get("train_loss")] for run in (counted, given)]
    assert losses[0] == losses[1]


def test_resume_continues_the_totals(tmp_path):
    straight, _ = fit(tmp_path / "straight", max_steps=8)

    first, run = fit(tmp_path / "first", max_steps=4)
    ckpt = tmp_path / "half.ckpt"
    run.save_checkpoint(ckpt)
    resumed, _ = fit(tmp_path / "resumed", max_steps=8, ckpt_path=str(ckpt))

    a, b = straight.summary, resumed.summary
    assert b["steps"] == a["steps"] == 8
    for key in ("energy_kwh", "gross_co2e_kg", "net_co2e_kg", "total_model_flops", "wall_time_s"):
        assert b[key] == pytest.approx(a[key], rel=1e-12), key
    assert b["started_at"] == first.summary["started_at"]
    assert resumed.session.run_dir == first.session.run_dir  # the resumed fit continues its own run folder


def test_checkpoints_every_two_steps_never_split_an_interval(tmp_path):
    import pytorch_lightning as pl

    callback = CarbonCallback(**SITE, meter=FixedMeter())
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    trainer(tmp_path, [callback, saver], max_steps=12, log_every_n_steps=5, enable_checkpointing=True).fit(
        LitGPT(), loader())
    _, records = read_run(callback.session.run_dir)
    assert [r["num_steps"] for r in records] == [5, 5, 2]
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=6.ckpt", weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("CarbonCallback"))
    assert state["steps"] == 6  # the checkpoint holds every step so far, the open interval's included


def test_callback_instance_is_reusable(tmp_path):
    callback = CarbonCallback(**SITE, meter=FixedMeter())
    for name in ("a", "b"):
        run = trainer(tmp_path / name, [callback], max_steps=4)
        run.fit(LitGPT(), loader())
        assert callback.summary["steps"] == 4  # totals start again at each fit


def test_sensor_failing_mid_run_falls_back_and_warns_once(tmp_path):
    meter = FixedMeter(fail_after=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback, run = fit(tmp_path, meter=meter, chip="v100")
    assert sum("reading was unusable (read raised" in str(w.message) for w in caught) == 1
    summary = callback.summary
    assert summary["status"] == "finished" and summary["steps"] == 8
    assert summary["energy_methods"]["gpu"] == "measured:nvml+modeled:last-avg-power"
    assert summary["meter_faults"]["windows"] == 3
    assert not meter.closed  # a meter passed in stays the caller's to close


def test_nan_loss_is_tracked_not_raised(tmp_path):
    callback, run = fit(tmp_path, LitGPT(nan_loss=True))
    assert callback.summary["status"] == "finished" and callback.summary["steps"] == 8
    _, records = read_run(callback.session.run_dir)
    assert [r["loss"] for r in records] == [None] * 4


def test_exception_in_training_step_leaves_a_failed_run(tmp_path):
    with pytest.raises(RuntimeError, match="user code failed"):
        fit(tmp_path, LitGPT(fail_at=5))
    summary, records = read_run(tmp_path / "csv" / "version_0" / "carbon")
    assert summary["status"] == "failed"
    assert summary["steps"] == 5 == sum(r["num_steps"] for r in records)
    assert summary["energy_kwh"] == pytest.approx(3 * WINDOW_KWH, rel=1e-12)  # 2 full windows + the partial one


def test_keyboard_interrupt_leaves_an_interrupted_run(tmp_path):
    class Interrupted(LitGPT):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    handler = signal.getsignal(signal.SIGINT)
    try:
        with contextlib.suppress(SystemExit):  # Lightning's graceful shutdown exits (2.5 and later)
            fit(tmp_path, Interrupted())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after an interrupt
    summary, _ = read_run(tmp_path / "csv" / "version_0" / "carbon")
    assert summary["status"] == "interrupted" and summary["steps"] == 3


def test_a_failure_inside_the_callback_never_reaches_the_loop(tmp_path):
    class BrokenMeter(FixedMeter):
        def begin_window(self, key):
            raise RuntimeError("driver crashed")

        def end_window(self, key):
            raise RuntimeError("driver crashed")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        callback, _ = fit(tmp_path, meter=BrokenMeter(), log_every_n_steps=1)
    assert callback.summary["steps"] == 8


def test_a_warning_points_at_the_users_fit_line_and_names_a_fix_that_exists(tmp_path):
    module = LitGPT()
    module.flops_per_batch = "lots"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, module)
    (warning,) = [w for w in caught if "flops_per_batch must be a number" in str(w.message)]
    assert warning.filename == __file__  # the line that called fit, not a library line
    assert CarbonCallback(**SITE, rapl=False, nvml=False)  # the fixes the meter warnings name exist


class ManualGPT(LitGPT):
    """Manual optimization: the optimizer steps on every second batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        if batch_idx % 2 == 1:
            optimizer = self.optimizers()
            optimizer.step()
            optimizer.zero_grad()
        return loss


@pytest.mark.parametrize("manual", [False, True], ids=["accumulated", "manual"])
def test_intervals_close_on_optimizer_steps_under_accumulation_and_manual_optimization(tmp_path, manual):
    """The global step, read per step from Lightning's own tracker of optimizer steps, moves every second batch:
    rows at optimizer steps 2 and 4 (logger steps 1 and 3), each over 4 batches; 8 batches in all."""
    callback = CarbonCallback(**SITE, meter=FixedMeter(), flops=1e9 if manual else None)
    run = trainer(tmp_path, [callback], max_steps=4, log_every_n_steps=2,
                  **({} if manual else {"accumulate_grad_batches": 2}))
    module = ManualGPT() if manual else LitGPT()
    run.fit(module, loader(module.model.config))
    assert run.global_step == 4
    summary, records = read_run(callback.session.run_dir)
    assert summary["steps"] == 8 and [(r["step"], r["num_steps"]) for r in records] == [(1, 4), (3, 4)]
    if not manual:  # under manual optimization Lightning numbers its rows by batch, not by optimizer step
        assert [r["step"] for r in csv_rows(run) if r.get("carbon/energy_kwh")] == ["1", "3"]


def test_without_lightnings_step_tracker_the_global_step_property_is_read():
    from types import SimpleNamespace

    from carbon_callbacks._compat.lightning import optimizer_step_counter

    trainer_like = SimpleNamespace(global_step=7)  # no fit_loop: a Lightning that moved its tracker
    counter = optimizer_step_counter(trainer_like)
    trainer_like.global_step = 9
    assert counter.completed == 9
