"""`carbon_callbacks.flax.track` around a jitted Linen `TrainState` step: metrics, arithmetic, syncs, files."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import carbon_callbacks.flax as cflax
from carbon_callbacks import InvalidInputError, read_run
from carbon_callbacks._warnings import CarbonCallbacksWarning
from carbon_callbacks.flax import track

from flax_support import BASE_KEYS, SITE, FixedMeter, batch, closed, linen_state, make_linen_step, mlp_step_flops

J_PER_KWH = 3.6e6


def run(step, steps: int, state=None, xy=None):
    state = linen_state() if state is None else state
    xy = batch() if xy is None else xy
    history = []
    for _ in range(steps):
        state, metrics = step(state, xy)
        history.append(metrics)
    return state, history


def test_every_step_carries_the_carbon_keys_next_to_the_loss(tmp_path):
    step = track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=3, output_dir=tmp_path)
    _, history = run(step, 7)
    step.close()
    for metrics in history:
        assert set(metrics) == {"loss", *BASE_KEYS, "carbon/flops"}
        assert metrics["carbon/flops"] == mlp_step_flops()
    # Nothing is measured before the first interval closes; then the last closed interval's values hold.
    assert all(math.isnan(m["carbon/energy_kwh"]) for m in history[:2])
    energies = [m["carbon/energy_kwh"] for m in history[2:]]
    assert energies == [90 * 1.2 / J_PER_KWH] * 3 + [2 * 90 * 1.2 / J_PER_KWH] * 2
    assert all(type(m["carbon/co2e_kg"]) is float for m in history)


def test_co2e_is_energy_times_intensity(tmp_path):
    step = track(make_linen_step(), **SITE, meter=FixedMeter(joules=90.0, seconds=3.0), log_every_n_steps=2,
                 output_dir=tmp_path)
    _, history = run(step, 4)
    last = history[-1]
    assert last["carbon/energy_kwh"] == 2 * 90.0 * 1.2 / J_PER_KWH
    assert last["carbon/co2e_kg"] == last["carbon/energy_kwh"] * 0.5
    assert last["carbon/co2e_net_kg"] == last["carbon/energy_kwh"] * 0.2
    assert last["carbon/step_time_s"] == 1.5  # 3 s per 2-step interval
    step.close()
    summary = step.summary()
    assert summary["steps"] == 4 and summary["world_size"] == 1 and summary["status"] == "finished"
    assert summary["gross_co2e_kg"] == pytest.approx(last["carbon/co2e_kg"], rel=1e-12)
    assert summary["total_model_flops"] == 4 * mlp_step_flops()


def test_mfu_with_a_known_chip(tmp_path):
    step = track(make_linen_step(), **SITE, chip="a100-40gb", dtype="bf16", meter=FixedMeter(seconds=2.0),
                 log_every_n_steps=2, output_dir=tmp_path)
    _, history = run(step, 2)
    peak = step.summary()["peak_flops_per_chip"]
    assert math.isnan(history[0]["carbon/mfu"])
    assert history[1]["carbon/mfu"] == pytest.approx(mlp_step_flops() / 1.0 / peak, rel=1e-12)
    step.close()


def test_device_waits_only_when_an_interval_closes(tmp_path, monkeypatch):
    waits = []
    real = jax.block_until_ready
    monkeypatch.setattr(cflax.jax, "block_until_ready", lambda x: waits.append(1) or real(x))
    step = track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=4, output_dir=tmp_path)
    run(step, 10)
    assert len(waits) == 2  # steps 4 and 8
    step.close()
    assert len(waits) == 3  # the partial last interval at close


def test_jit_is_not_retraced_and_flops_are_counted_once(tmp_path):
    traces = []
    jitted = make_linen_step(traces)
    step = track(jitted, **SITE, meter=FixedMeter(), log_every_n_steps=2, output_dir=tmp_path)
    state, _ = run(step, 2)
    traced_after_warmup = len(traces)
    state, _ = run(step, 6, state=state)
    assert len(traces) == traced_after_warmup <= 2  # the jit trace and, at most, the FLOP count's own trace
    baseline = make_linen_step()
    run(baseline, 8)
    assert jitted._cache_size() == baseline._cache_size()  # what jit compiles without the wrapper (the first
    # call's Python-int `TrainState.step` is one entry, the later int32 array another), nothing more
    assert step.counters.signatures == 1 and step.counters.steps == 8
    state, history = run(step, 2, state=state, xy=batch(size=8))  # a new batch shape: one more count
    assert step.counters.signatures == 2
    assert history[-1]["carbon/flops"] == mlp_step_flops(batch=8)
    step.close()


def test_alternating_batch_shapes_get_their_own_flops(tmp_path):
    step = track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=2, output_dir=tmp_path)
    state = linen_state()
    sizes = [4, 4, 8, 4, 8, 8, 4]
    for size in sizes:
        state, metrics = step(state, batch(size=size))
        assert metrics["carbon/flops"] == mlp_step_flops(batch=size)
    assert step.counters.signatures == 2
    assert closed(step)["total_model_flops"] == sum(mlp_step_flops(batch=size) for size in sizes)


def test_donation_is_kept(tmp_path):
    step = track(make_linen_step(donate_argnums=0), **SITE, meter=FixedMeter(), log_every_n_steps=2,
                 output_dir=tmp_path)
    state = linen_state()
    old_leaf = jax.tree_util.tree_leaves(state.params)[0]
    state, metrics = step(state, batch())
    assert old_leaf.is_deleted()
    state, metrics = step(state, batch())
    assert metrics["carbon/flops"] == mlp_step_flops()
    step.close()


def test_close_writes_run_files_and_prints_the_report(tmp_path, capsys):
    with track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=2, output_dir=tmp_path) as step:
        run(step, 5)
    summary, records = read_run(tmp_path)
    assert summary == step.summary()
    assert summary["steps"] == 5 and summary["status"] == "finished"
    assert [r["num_steps"] for r in records] == [2, 2, 1]
    assert records[-1]["loss"] is not None
    assert summary["info"]["flops_method"].startswith("traced")
    assert "carbon-callbacks: 5 steps, status finished" in capsys.readouterr().out
    assert step.close() == step.metrics() and step.summary() is step.summary()  # closing twice changes nothing


def test_an_exception_in_the_loop_marks_the_run_interrupted(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=2, output_dir=tmp_path) as step:
            run(step, 3)
            raise KeyboardInterrupt
    summary, _ = read_run(tmp_path)
    assert summary["status"] == "interrupted" and summary["steps"] == 3


def test_outputs_without_a_metrics_dict_are_untouched(tmp_path):
    inner = make_linen_step()
    step = track(lambda s, xy: inner(s, xy)[0], **SITE, meter=FixedMeter(), flops=1e6, log_every_n_steps=1,
                 output_dir=tmp_path)
    state = step(linen_state(), batch())
    assert type(state).__name__ == "TrainState"
    assert step.metrics()["carbon/flops"] == 1e6
    assert step.metrics()["carbon/energy_kwh"] == 90 * 1.2 / J_PER_KWH
    assert closed(step)["info"]["flops_method"] == "given"


def test_missing_location_fails_at_construction():
    with pytest.raises(InvalidInputError, match="never guesses a location"):
        track(make_linen_step(), meter=FixedMeter())


def test_wrapper_keeps_the_step_signature_and_jit_api(tmp_path):
    jitted = make_linen_step()
    step = track(jitted, **SITE, meter=FixedMeter(), output_dir=tmp_path)
    assert step.__wrapped__ is jitted and step.__name__ == "train_step"
    assert step.lower(linen_state(), batch()).compile() is not None  # the jitted function's own API passes through
    step.close()


def test_a_failing_flop_count_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    from carbon_callbacks.flops import _jax

    def broken(*args, **kwargs):
        raise RuntimeError("tracer exploded")

    monkeypatch.setattr(_jax, "count_placed", broken)
    step = track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=1, output_dir=tmp_path)
    with pytest.warns(CarbonCallbacksWarning, match="tracer exploded") as caught:
        _, history = run(step, 3, xy=batch(size=2))
        run(step, 1, xy=batch(size=3))  # a new signature fails again, silently
    assert sum("counting a training step's FLOPs failed" in str(w.message) for w in caught) == 1
    assert set(history[-1]) == {"loss", *BASE_KEYS, "carbon/flops"}  # the same keys, FLOPs unknown: NaN
    assert math.isnan(history[-1]["carbon/flops"])
    assert closed(step)["total_model_flops"] is None


EXITS_OPEN = """
import sys
from carbon_callbacks.flax import track
from flax_support import SITE, FixedMeter, batch, linen_state, make_linen_step
step = track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=2, output_dir=sys.argv[1])
state, xy = linen_state(), batch()
for _ in range(3):
    state, _ = step(state, xy)
if sys.argv[2] == "close":
    step.close()
"""


@pytest.mark.parametrize("closing", ["close", "leave open"])
def test_the_run_is_closed_at_interpreter_exit_unless_closed_before(tmp_path, closing):
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parents[1] / "tests"), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", EXITS_OPEN, str(tmp_path), closing], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary, _ = read_run(tmp_path)
    assert summary["steps"] == 3 and summary["status"] == "finished"  # no exception: the run completed
    assert proc.stdout.count("carbon-callbacks: 3 steps, status finished") == 1  # ended once


def test_default_run_directory_is_timestamped_under_carbon_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=2) as step:
        run(step, 2)
    assert step.run_dir.parent == tmp_path / "carbon-runs"
    summary, records = read_run(tmp_path / step.run_dir)
    assert summary["steps"] == 2 and len(records) == 1


def test_an_exception_in_the_step_marks_the_run_failed(tmp_path):
    with pytest.raises(TypeError):
        with track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=2, output_dir=tmp_path) as step:
            state, _ = run(step, 2)
            step(state, None)  # the user's step fails on a bad batch
    summary, _ = read_run(tmp_path)
    assert summary["status"] == "failed" and summary["steps"] == 2  # as Lightning and Keras write it


def test_state_dict_resume_continues_the_totals(tmp_path):
    first = track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=2, output_dir=tmp_path / "a")
    state, _ = run(first, 3)
    saved = first.state_dict()  # the open interval (one step) is closed first: 3 steps, 2 windows
    first.close()
    resumed = track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=2, output_dir=tmp_path / "b")
    resumed.load_state_dict(saved)
    run(resumed, 2, state=state)
    resumed.close()
    summary = resumed.summary()
    assert summary["steps"] == 5
    assert summary["total_model_flops"] == 5 * mlp_step_flops()
    assert summary["it_energy_kwh"] == pytest.approx(3 * 90 / J_PER_KWH)  # 2 windows before, 1 after


def test_a_bare_metrics_dict_gets_the_carbon_keys(tmp_path):
    inner = make_linen_step()
    step = track(lambda state, xy: inner(state, xy)[1], **SITE, meter=FixedMeter(), log_every_n_steps=1,
                 output_dir=tmp_path)
    metrics = step(linen_state(), batch())  # an NNX-style step: the model is updated in place, metrics returned
    assert {"loss", *BASE_KEYS, "carbon/flops"} <= set(metrics)
    assert metrics["carbon/energy_kwh"] == 90 * 1.2 / J_PER_KWH
    step.close()


def test_summary_before_close_covers_every_completed_step(tmp_path):
    step = track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=50, output_dir=tmp_path)
    run(step, 3)
    summary = step.summary()  # no interval has closed yet: the session closes the open one
    assert summary["steps"] == 3 and summary["status"] == "running"
    assert summary["total_model_flops"] == 3 * mlp_step_flops()
    assert closed(step)["steps"] == 3


def test_a_flax_tensorboard_writer_ends_on_the_run_totals(tmp_path):
    pytest.importorskip("tensorflow")  # flax.metrics.tensorboard writes through tf.summary
    from flax.metrics.tensorboard import SummaryWriter

    from readers import tensorboard_scalars

    writer = SummaryWriter(str(tmp_path / "tb"))
    state = linen_state()
    with track(make_linen_step(), **SITE, meter=FixedMeter(), log_every_n_steps=2, output_dir=tmp_path) as step:
        for i in range(1, 6):
            state, metrics = step(state, batch())
            if i % 2 == 0:  # the user's writer logs every other step, as a loop with a logging interval does
                for key, value in metrics.items():
                    writer.scalar(key, float(value), i)
    for key, value in step.metrics().items():  # after the with block: the run's totals, for the last step
        writer.scalar(key, value, step.counters.steps)
    writer.flush()
    summary, records = read_run(tmp_path)
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert scalars["carbon/energy_kwh"][-1] == (5, pytest.approx(summary["energy_kwh"], rel=1e-6))
    assert scalars["carbon/co2e_kg"][-1] == (5, pytest.approx(summary["gross_co2e_kg"], rel=1e-6))
    assert [r["step"] for r in records] == [2, 4, 5]  # the step counts the writer logged them at
    assert [step for step, _ in scalars["carbon/energy_kwh"]] == [2, 4, 5]
