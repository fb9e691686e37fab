"""What a run does with faults on its own side: bad and late meter readings, one rank's failure under several ranks,
resumes and forks from checkpoints, and a run of unknown length that must not grow in memory."""

from __future__ import annotations

import math
import threading
import time
import tracemalloc

import pytest

from carbon_callbacks import RunSession, read_run
from carbon_callbacks._record.names import STEPS_FILE
from carbon_callbacks._reports.projection import ProjectionSample, project
from carbon_callbacks._reports.report import read_report
from carbon_callbacks._warnings import STRICT_ENV, CarbonCallbacksWarning
from carbon_callbacks.meters import _checked

from fakes import BadReadingMeter, CounterSensor, FixedMeter

SITE = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.2}


def session(tmp_path, meter, **kwargs) -> RunSession:
    return RunSession(**{**SITE, "meter": meter, "output_dir": tmp_path, "log_every_n_steps": 3, **kwargs})


# ------------------------------------------------------------------------------------------- bad readings
@pytest.mark.parametrize(("value", "reason"), [
    (math.nan, "NaN energy"), (math.inf, "infinite energy"), (-5.0, "negative energy"),
    (1e9, "implausible power"),  # 1 GJ in 3 s: 333 MW
])
def test_a_bad_reading_is_a_labelled_fault_and_no_step_is_dropped(tmp_path, monkeypatch, value, reason):
    monkeypatch.delenv(STRICT_ENV)
    run = session(tmp_path, BadReadingMeter(value, bad=range(5, 21)))  # from the 5th window on
    run.start()
    with pytest.warns(CarbonCallbacksWarning, match=reason):
        for _ in range(60):
            run.step_end()
    summary = run.finish()
    assert summary["steps"] == 60 and summary["status"] == "finished"
    assert [r["num_steps"] for r in read_run(tmp_path)[1]] == [3] * 20
    faults = summary["meter_faults"]
    assert faults["windows"] == 16 and faults["reasons"] == {reason: 16} and faults["seconds"] == 16 * 3.0
    # The 16 estimated windows continue at the last good window's power: 90 J / 3 s.
    assert summary["it_energy_kwh"] == pytest.approx(20 * 90.0 / 3.6e6)
    assert summary["energy_methods"]["gpu"] == "measured:nvml+modeled:last-avg-power"
    note = next(n for n in read_report(tmp_path).notes if "unusable" in n)
    assert f"16 window(s), 48 s, estimated and labelled instead ({reason} x16)" in note


def test_a_read_that_blocks_is_abandoned_and_the_next_catches_up(tmp_path, monkeypatch):
    monkeypatch.delenv(STRICT_ENV)
    monkeypatch.setattr(_checked, "READ_TIMEOUT_S", 0.2)
    sensor = CounterSensor(block={3})  # the 3rd window's read hangs until released
    run = session(tmp_path, sensor, log_every_n_steps=1)
    run.start()
    threading.Timer(5.0, sensor.release.set).start()  # the driver answers after 5 s, whoever waits
    waits = []
    for step in range(1, 7):
        sensor.joules += 100.0
        sensor.now += 1.0
        begun = time.perf_counter()
        with pytest.warns(CarbonCallbacksWarning, match="read timed out") if step == 3 else _nothing():
            run.step_end()
        waits.append(time.perf_counter() - begun)
        if step == 4:
            sensor.release.set()
            time.sleep(0.1)  # the late read returns
    summary = run.finish()
    assert waits[2] < 2.0  # abandoned after the timeout, not the 5 s the read took
    assert summary["steps"] == 6
    assert summary["meter_faults"]["reasons"] == {"read timed out": 2}  # the 3rd window, and the 4th
    # The late reading and the next cover the estimated windows: the counter's total, exactly.
    assert summary["it_energy_kwh"] * 3.6e6 == pytest.approx(6 * 100.0)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------------- ranks
def test_every_rank_enters_the_sum_whatever_fails_on_it(tmp_path, monkeypatch):
    monkeypatch.delenv(STRICT_ENV)
    calls = []

    def reduce_sum(values):
        calls.append(len(values))
        return [2 * v for v in values]  # the other rank did the same

    run = session(tmp_path, BadReadingMeter(math.nan, bad={2}), log_every_n_steps=1)
    run.start(world_size=2, rank=1, reduce_sum=reduce_sum, device_sync=_sync_failing_at(3))
    with pytest.warns(CarbonCallbacksWarning):
        for _ in range(4):
            run.step_end()
        run.state_dict()
    summary = run.finish()
    assert len(calls) == 4 + 1 + 1  # every interval (one with a NaN reading, one whose sync raised), state, end
    assert summary["meter_faults"]["windows"] == 2  # both ranks' estimated windows (the NaN one, summed)


def _sync_failing_at(n: int):
    count = [0]

    def sync(_):
        count[0] += 1
        if count[0] == n:
            raise RuntimeError("device lost")

    return sync


# ------------------------------------------------------------------------------------------- resume and fork
def _crashed_run(folder, steps=7, checkpoint_at=5):
    """A run of `steps` steps in intervals of 3 whose checkpoint was taken at `checkpoint_at`, and which then died
    (its writer lock gone) with its record at `steps`."""
    run = session(folder, FixedMeter())
    run.start()
    state = None
    for step in range(1, steps + 1):
        run.step_end()
        if step == checkpoint_at:
            state = run.state_dict()
    run.flush()
    run._store.close()  # the process died: the kernel dropped its lock
    return state


def test_a_resume_trims_what_came_after_its_checkpoint_and_writes_the_open_interval(tmp_path):
    state = _crashed_run(tmp_path)
    assert state["steps"] == 5 and state["pending_record"]["num_steps"] == 2
    with open(tmp_path / STEPS_FILE, "ab") as handle:
        handle.write(b"99,1,8,,17650")  # a crash mid-write
    resumed = session(None, FixedMeter())
    resumed.load_state_dict(state)
    resumed.start()
    assert resumed.run_dir == tmp_path.resolve()
    for _ in range(4):
        resumed.step_end()
    summary = resumed.finish()
    logged = read_run(tmp_path)[1]
    assert [r["cum_steps"] for r in logged] == [3, 5, 8, 9]  # 6 (past the checkpoint) trimmed; 5 from the state
    assert summary["steps"] == 9 and summary["step_log"]["gap_count"] == 0
    assert summary["info"]["resumed_from"]["steps_discarded"] == 1  # the interval 4-6 ran, and was lost


def test_a_resume_into_another_output_dir_forks_and_names_its_parent(tmp_path, capsys):
    state = _crashed_run(tmp_path / "parent")
    before = (tmp_path / "parent" / "run.json").read_bytes()
    forks = []
    for name in ("a", "b"):
        fork = session(tmp_path / name, FixedMeter())
        fork.load_state_dict(state)
        fork.start()
        fork.step_end()
        forks.append(fork.finish())
    assert (tmp_path / "parent" / "run.json").read_bytes() == before  # the parent's record is untouched
    for name, summary in zip(("a", "b"), forks):
        assert summary["parent"] == {"run_id": state["run_id"], "run_dir": str(tmp_path.resolve() / "parent"),
                                     "steps": 5, "totals_include_parent": True}
        assert summary["steps"] == 6 and read_run(tmp_path / name)[0]["run_id"] != state["run_id"]
    assert "this run forks from run" in capsys.readouterr().out


def test_two_resumes_of_one_checkpoint_at_once_never_share_a_folder(tmp_path):
    state = _crashed_run(tmp_path / "parent")
    first, second = session(None, FixedMeter()), session(None, FixedMeter())
    for run in (first, second):
        run.load_state_dict(state)
    first.start()
    second.start(default_parent=tmp_path / "forks")
    assert first.run_dir == (tmp_path / "parent").resolve()  # it continues the run
    assert second.run_dir.parent == (tmp_path / "forks").resolve()  # the folder is being written: a fork
    first.finish()
    second.finish()


def test_a_resume_from_the_middle_of_a_finished_run_forks(tmp_path):
    run = session(tmp_path / "parent", FixedMeter())
    run.start()
    for step in range(1, 10):
        run.step_end()
        if step == 3:
            state = run.state_dict()
    run.finish()
    again = session(None, FixedMeter())
    again.load_state_dict(state)
    again.start(default_parent=tmp_path / "forks")
    assert again.run_dir.parent == (tmp_path / "forks").resolve()
    assert read_run(tmp_path / "parent")[0]["steps"] == 9
    again.finish()


@pytest.mark.parametrize("state", [{"schema_version": 99}, {"schema_version": 1, "steps": 3}, "not JSON: line 1"])
def test_a_state_that_cannot_be_read_starts_a_new_labelled_run(tmp_path, monkeypatch, state):
    monkeypatch.delenv(STRICT_ENV)
    run = session(tmp_path, FixedMeter())
    run.load_state_dict(state)
    with pytest.warns(CarbonCallbacksWarning, match="could not be read"):
        run.start()
    run.step_end()
    summary = run.finish()
    assert summary["steps"] == 1 and "could not be read" in summary["info"]["resume"]


# ------------------------------------------------------------------------------------------- memory
def test_a_run_of_unknown_length_keeps_nothing_per_interval(tmp_path):
    run = session(tmp_path, FixedMeter(), log_every_n_steps=1)
    run.start()
    for _ in range(1_000):  # warm up what is allocated once
        run.step_end()
    run.flush()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for step in range(1, 4_001):
        run.step_end()
        if step % 500 == 0:
            run.flush()  # what the flush policy does every 10 s
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    run.finish()
    assert grown < 500_000  # before: every record was kept for a projection that never came, ~1 KB each


def test_the_projection_sample_is_bounded_and_keeps_the_sums():
    sample = ProjectionSample(size=8)
    records = [{"num_steps": 2, "step_energy_kwh": 1.0 + (i % 3), "step_co2e_kg": 0.5, "seconds": 1.0,
                "energy_kwh": float(i), "co2e_kg": 0.0, "co2e_net_kg": 0.1 * i} for i in range(1, 1001)]
    for record in records:
        sample.add(record)
    kept = sample.records
    assert len(kept) <= 9 + 1 and sample.intervals == 1000
    assert sum(r["num_steps"] for r in kept) == 2000
    assert sum(r["step_energy_kwh"] for r in kept) == pytest.approx(sum(r["step_energy_kwh"] for r in records))
    whole, bounded = project(records, 4000), project(kept, 4000)
    assert bounded.energy_kwh == pytest.approx(whole.energy_kwh, rel=1e-3)
