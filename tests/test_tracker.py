"""The Tracker every adapter drives: intervals, per-step sums, failure fallback, resume."""

from __future__ import annotations

import warnings

import pytest

from carbon_callbacks import InvalidInputError, Tracker, read_run
from carbon_callbacks.meters._base import Measurement


class StepMeter:
    """A meter whose every window holds `joules` of GPU energy over `seconds`, measured."""

    def __init__(self, joules=100.0, seconds=2.0, fail_after=None):
        self.joules, self.seconds, self.fail_after = joules, seconds, fail_after
        self.windows = 0
        self.closed = False

    def begin_window(self, key):
        pass

    def end_window(self, key):
        self.windows += 1
        if self.fail_after is not None and self.windows > self.fail_after:
            raise OSError("sensor gone")
        return Measurement(self.seconds, {"gpu": self.joules}, {"gpu": "measured:nvml"})

    def close(self):
        self.closed = True


def make(tmp_path, **kwargs):
    args = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.2, "meter": StepMeter(), "output_dir": tmp_path}
    return Tracker(**{**args, **kwargs})


def test_missing_location_fails_at_construction():
    with pytest.raises(InvalidInputError, match="never guesses a location"):
        Tracker(meter=StepMeter())


def test_intervals_close_every_n_steps(tmp_path):
    tracker = make(tmp_path, log_every_n_steps=4)
    tracker.start()
    closed = [tracker.step_end(model_flops=1e9, tokens=10, loss=2.0) for _ in range(10)]
    assert closed == [False, False, False, True] * 2 + [False, False]
    metrics = tracker.metrics()
    assert metrics["carbon/energy_kwh"] == pytest.approx(2 * 100 * 1.2 / 3.6e6)
    assert metrics["carbon/co2e_kg"] == pytest.approx(metrics["carbon/energy_kwh"] * 0.5)
    assert metrics["carbon/co2e_net_kg"] == pytest.approx(metrics["carbon/energy_kwh"] * 0.2)
    assert metrics["carbon/flops"] == 1e9
    assert metrics["carbon/step_time_s"] == pytest.approx(0.5)
    summary = tracker.finish()
    assert summary["steps"] == 10 and summary["tokens"] == 100
    assert summary["it_energy_kwh"] == pytest.approx(3 * 100 / 3.6e6)  # the partial third interval counts
    _, records = read_run(tmp_path)
    assert [r["num_steps"] for r in records] == [4, 4, 2]


def test_given_flops_override_counted(tmp_path):
    tracker = make(tmp_path, log_every_n_steps=1, flops=5e9)
    tracker.start()
    tracker.step_end(model_flops=1.0)
    assert tracker.metrics()["carbon/flops"] == 5e9
    assert tracker.finish()["info"]["flops_method"] == "given"


def test_sensor_failure_warns_once_and_falls_back(tmp_path):
    tracker = make(tmp_path, log_every_n_steps=1, meter=StepMeter(fail_after=1), chip="v100")
    tracker.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            tracker.step_end()
    assert sum("energy meter failed" in str(w.message) for w in caught) == 1
    summary = tracker.finish()
    assert summary["steps"] == 3
    assert summary["energy_methods"]["gpu"] == "modeled:tdp-fallback(v100)"


def test_state_dict_resume_continues(tmp_path):
    first = make(tmp_path / "a", log_every_n_steps=2)
    first.start()
    for _ in range(4):
        first.step_end(model_flops=1.0)
    state = first.state_dict()
    resumed = make(tmp_path / "b", log_every_n_steps=2)
    resumed.load_state_dict(state)
    resumed.start()
    for _ in range(4):
        resumed.step_end(model_flops=1.0)
    summary = resumed.finish()
    assert summary["steps"] == 8
    assert summary["total_model_flops"] == 8.0
    assert summary["it_energy_kwh"] == pytest.approx(4 * 100 / 3.6e6)


def test_sync_uses_the_given_collective(tmp_path):
    tracker = make(tmp_path, log_every_n_steps=1)
    tracker.start(world_size=2)
    tracker.step_end(model_flops=3.0)
    tracker.sync(lambda values: [2 * v for v in values], world_size=2)
    summary = tracker.finish()
    assert summary["world_size"] == 2 and summary["num_chips"] == 2
    assert summary["total_model_flops"] == 6.0
    assert summary["it_energy_kwh"] == pytest.approx(200 / 3.6e6)


def test_non_zero_rank_writes_nothing(tmp_path):
    tracker = make(tmp_path / "run", log_every_n_steps=1)
    tracker.start(rank=1, world_size=2)
    tracker.step_end()
    tracker.finish()
    assert not (tmp_path / "run").exists()


def test_state_loaded_after_a_finished_run_applies_to_the_next(tmp_path):
    tracker = make(tmp_path, log_every_n_steps=1)
    tracker.start()
    tracker.step_end()
    state = tracker.state_dict()
    tracker.finish()
    tracker.load_state_dict(state)  # e.g. a reused callback restored from a checkpoint before its next fit
    tracker.start()
    tracker.step_end()
    assert tracker.finish()["steps"] == 2
