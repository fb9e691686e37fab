"""Projection of a run's total energy and CO2e from its first steps, and the run session logging it once."""

from __future__ import annotations

import logging

import pytest

from carbon_callbacks import InvalidInputError, RunSession, read_run
from carbon_callbacks._reports.projection import project, project_run
from carbon_callbacks._reports.report import projection_line, read_report
from carbon_callbacks.meters import ReplayMeter


def rec(n, kwh, seconds=1.0):
    return {"num_steps": n, "step_energy_kwh": kwh, "seconds": seconds, "step_co2e_kg": kwh * 0.5}


def cycling_meter():
    """Windows draw 90, 110, 100, 90, 110, 100, ... J of CPU energy over 1 s: steady, with a spread.

    The cycle covers 60 windows, more than any test here closes (then 100 J would repeat).
    """
    return ReplayMeter(energy_j=[90.0, 110.0, 100.0] * 20, seconds=1.0, component="cpu", method="given")


def test_steady_rate_with_interval():
    p = project([rec(10, 1.0), rec(10, 0.9), rec(10, 1.1)], 100)
    # first interval left out as warm-up: rate (0.9 + 1.1) / 20 = 0.1 kWh/step over the 70 remaining steps
    assert p.observed_energy_kwh == 3.0
    assert p.energy_kwh == pytest.approx(3.0 + 70 * 0.1)
    assert p.energy_kwh_low == pytest.approx(3.0 + 70 * 0.09)
    assert p.energy_kwh_high == pytest.approx(3.0 + 70 * 0.11)
    assert p.gross_co2e_kg == pytest.approx(10.0 * 0.5)  # intensity implied by the records
    assert p.net_co2e_kg is None  # the records carry no net figure: not guessed
    assert p.wall_time_s == pytest.approx(3.0 + 70 * 0.1)
    assert p.fraction_observed == 0.3
    assert "first interval left out as warm-up" in p.method


def test_warm_up_interval_does_not_skew_the_projection():
    slow_start = [rec(10, 5.0)] + [rec(10, 1.0)] * 3
    assert project(slow_start, 200).energy_kwh == pytest.approx(5.0 + 3.0 + 160 * 0.1)


def test_two_intervals_project_from_the_second_with_both_in_the_interval():
    p = project([rec(5, 1.0), rec(5, 2.0)], 20, gross_kg_per_kwh=0.4, net_kg_per_kwh=0.1)
    assert p.energy_kwh == pytest.approx(3.0 + 10 * 0.4)
    assert (p.energy_kwh_low, p.energy_kwh_high) == (pytest.approx(3.0 + 10 * 0.2), pytest.approx(3.0 + 10 * 0.4))
    assert p.net_co2e_kg_low == pytest.approx((3.0 + 10 * 0.2) * 0.1)
    single = project([rec(5, 1.0)], 20)
    assert single.energy_kwh == single.energy_kwh_low == single.energy_kwh_high == pytest.approx(4.0)


def test_percentiles_from_ten_intervals():
    records = [rec(1, 1.0)] + [rec(1, float(v)) for v in range(1, 12)]  # 11 rates after warm-up: 1..11
    p = project(records, 22)
    assert p.energy_kwh_low == pytest.approx(sum(r["step_energy_kwh"] for r in records) + 10 * 2.0)
    assert p.energy_kwh_high == pytest.approx(sum(r["step_energy_kwh"] for r in records) + 10 * 10.0)


def test_bad_input():
    with pytest.raises(InvalidInputError, match="records is empty"):
        project([], 10)
    with pytest.raises(InvalidInputError, match=r"total_steps \(5\) is less than the 10 steps"):
        project([rec(10, 1.0)], 5)
    with pytest.raises(InvalidInputError, match="has no step_energy_kwh"):
        project([{"num_steps": 1}], 5)


def test_tracker_logs_the_projection_once_after_a_fifth(tmp_path, caplog):
    session = RunSession(intensity=0.5, net_intensity=0.2, pue=1.5, meter=cycling_meter(), output_dir=tmp_path,
                      log_every_n_steps=4)
    session.start(total_steps=120)
    with caplog.at_level(logging.INFO, logger="carbon_callbacks._run.session"):
        for i in range(120):
            session.step_end(loss=1.0, step=i + 1)
    summary = session.finish()
    logged = [r for r in caplog.records if "projected after" in r.getMessage()]
    assert len(logged) == 1
    proj = summary["info"]["projection"]
    assert proj["steps_observed"] == 24 and proj["total_steps"] == 120  # first interval end at or past 20%
    # 6 intervals seen (90, 110, 100, 90, 110, 100 J); the rate leaves out the first: 510 J / 20 steps
    observed_kwh = 600.0 * 1.5 / 3.6e6
    assert proj["energy_kwh"] == pytest.approx(observed_kwh + 96 * 25.5 * 1.5 / 3.6e6)
    assert proj["energy_kwh_low"] == pytest.approx(observed_kwh + 96 * 22.5 * 1.5 / 3.6e6)
    final = summary["energy_kwh"]
    assert final == pytest.approx(30 * 100.0 * 1.5 / 3.6e6)
    assert abs(proj["energy_kwh"] / final - 1) < 0.10
    assert proj["energy_kwh_low"] <= final <= proj["energy_kwh_high"]
    assert proj["net_co2e_kg"] == pytest.approx(proj["energy_kwh"] * 0.2)
    line = projection_line(read_report(tmp_path).summary)
    assert line.startswith("projection after 24 of 120 steps:") and "off)" in line


def test_projection_from_a_run_directory_after_20_percent(tmp_path):
    session = RunSession(intensity=0.5, pue=1.0, meter=cycling_meter(), output_dir=tmp_path, log_every_n_steps=5)
    session.start()  # length unknown during the run: no projection logged
    for _ in range(100):
        session.step_end()
    summary = session.finish()
    assert "projection" not in summary["info"]
    p = project_run(tmp_path, total_steps=100, after_steps=20)
    assert p.steps_observed == 20
    assert p.energy_kwh / summary["energy_kwh"] == pytest.approx(1.0, abs=0.10)
    with pytest.raises(InvalidInputError, match="total_steps is unknown"):
        project_run(tmp_path)
    assert len(read_run(tmp_path)[1]) == 20


def test_no_projection_before_three_intervals(tmp_path):
    session = RunSession(intensity=0.5, pue=1.0, meter=cycling_meter(), output_dir=tmp_path, log_every_n_steps=5)
    session.start(total_steps=10)  # two intervals in all: a warm-up and one steady one are too few
    for _ in range(10):
        session.step_end()
    assert "projection" not in session.finish()["info"]
