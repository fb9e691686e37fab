"""The "when" lever through the real CLI: a run's measured power profile moved on a trace with a daily cycle."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys

import pytest
from traces import HOUR, by_hand, daily_cycle, em_csv

from carbon_callbacks import RunSession, read_run
from carbon_callbacks._site.trace import parse_time
from carbon_callbacks.meters import ReplayMeter

JUNE = parse_time("2026-06-01T00:00Z", "test")
TRACE_HOURS = [JUNE + i * HOUR for i in range(4 * 24)]  # four days, hourly


def cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("carbon-callbacks") or ""
    command = [exe] if exe else [sys.executable, "-m", "carbon_callbacks.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of three 20-minute intervals at rising power, its clock (the accountant's `time.time`) stepped 20 min
    per interval: the step log a one-hour job leaves."""
    folder = tmp_path_factory.mktemp("when")
    clock = itertools.count(1_800_000_000, 1200)
    patch = pytest.MonkeyPatch()
    patch.setattr("carbon_callbacks._run.accountant.time.time", lambda: float(next(clock)))
    try:
        session = RunSession(intensity=0.3, pue=1.1, output_dir=folder / "run", log_every_n_steps=1,
                             meter=ReplayMeter(energy_j=[2.4e6, 3.6e6, 4.8e6], seconds=1200.0))
        session.start()
        for _ in range(3):
            session.step_end()
        session.finish()
    finally:
        patch.undo()
    _, records = read_run(session.run_dir)
    trace = em_csv(folder / "DE_2026_hourly.csv", TRACE_HOURS)
    return session.run_dir, records, trace


def co2e_from(records, start: float) -> float:
    """The run moved to `start`, by hand: each interval's energy x the hourly trace's mean over it."""
    first = min(r["time"] - r["seconds"] for r in records)
    return sum(r["step_energy_kwh"] * by_hand(TRACE_HOURS, r["time"] - r["seconds"] - first + start,
                                              r["time"] - first + start) for r in records)


def whatif_rows(*args) -> list[dict]:
    result = cli("whatif", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_moving_the_run_changes_its_co2e_by_the_trace(run):
    run_dir, records, trace = run
    night, day = (parse_time(t, "t") for t in ("2026-06-01T02:30Z", "2026-06-01T14:30Z"))
    assert [r["seconds"] for r in records] == [1200.0] * 3 and len({r["time"] for r in records}) == 3
    rows = whatif_rows(str(run_dir), "--intensity-trace", str(trace), "--start", "2026-06-01T02:30Z")
    moved = next(r for r in rows if "start 2026-06-01T02:30:00Z" in r["region"])
    assert moved["gross_co2e_kg"] == pytest.approx(co2e_from(records, night), rel=1e-9)
    rows = whatif_rows(str(run_dir), "--intensity-trace", str(trace), "--start", "2026-06-01T14:30Z")
    moved_day = next(r for r in rows if "start 2026-06-01T14:30:00Z" in r["region"])
    assert moved_day["gross_co2e_kg"] == pytest.approx(co2e_from(records, day), rel=1e-9)
    # The cycle swings 100 to 400 g/kWh: the same hour of work costs about 3.5x more at 3 pm than at 3 am.
    assert 3.0 < moved_day["gross_co2e_kg"] / moved["gross_co2e_kg"] < 4.0


def test_the_best_start_is_the_least_co2e_of_every_hourly_start(run):
    run_dir, records, trace = run
    rows = whatif_rows(str(run_dir), "--intensity-trace", str(trace), "--start", "2026-06-01T12:00Z",
                       "--best-start-within", "24h")
    moved = [r for r in rows if "start " in r["region"]]
    assert len(moved) == 2
    candidates = {JUNE + (12 + k) * HOUR: co2e_from(records, JUNE + (12 + k) * HOUR) for k in range(25)}
    best = min(candidates, key=candidates.get)
    assert JUNE + 25 * HOUR <= best <= JUNE + 27 * HOUR  # the hours around 3 am
    assert min(r["gross_co2e_kg"] for r in moved) == pytest.approx(candidates[best], rel=1e-9)
    assert rows[0]["gross_co2e_kg"] == pytest.approx(candidates[best], rel=1e-9)  # sorted: the best first


def test_a_start_outside_the_trace_is_refused(run):
    run_dir, _, trace = run
    result = cli("whatif", str(run_dir), "--intensity-trace", str(trace), "--start", "2026-07-01T00:00Z")
    assert result.returncode != 0 and "outside the trace DE_2026_hourly.csv" in result.stderr


def test_estimate_integrates_the_trace_over_the_run(run):
    _, _, trace = run
    result = cli("estimate", "--chips", "8", "--hours", "10", "--watts", "400", "--pue", "1.1",
                 "--intensity-trace", str(trace), "--start", "2026-06-01T00:00Z", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    energy = 8 * 10 * 400 * 1.1 / 1000
    expected = energy * by_hand(TRACE_HOURS, JUNE, JUNE + 10 * HOUR)
    assert out["gross_tco2e"] * 1000 == pytest.approx(expected, rel=1e-9)
    assert "trace DE_2026_hourly.csv (direct)" in out["sources"]["gross_kg_per_kwh"]


def test_the_plot_draws_the_trace_under_the_run(run, tmp_path):
    pytest.importorskip("matplotlib")
    run_dir, _, trace = run
    image = tmp_path / "when.png"
    result = cli("plot", str(run_dir), "-o", str(image), "--intensity-trace", str(trace), "--start",
                 "2026-06-01T12:00Z", "--best-start-within", "24h")
    assert result.returncode == 0, result.stderr
    assert image.stat().st_size > 20_000


def test_daily_cycle_is_what_the_tests_assume():
    assert daily_cycle(JUNE + 3 * HOUR) == 100.0 and daily_cycle(JUNE + 15 * HOUR) == 400.0
