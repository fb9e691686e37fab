"""An intensity that varies in time: the trace files users bring, integrated over each logging interval."""

from __future__ import annotations

import time

import pytest
from traces import HOUR, by_hand, daily_cycle, em_csv, hours_around, iso, plain_csv

from carbon_callbacks import InvalidInputError, RunSession, read_run, read_trace, resolve_site
from carbon_callbacks._reports.report import format_report
from carbon_callbacks._warnings import CarbonCallbacksWarning
from carbon_callbacks.meters import ReplayMeter


def test_the_exported_and_plain_formats_read_the_same_values(tmp_path):
    starts = hours_around(time.time())
    plain = read_trace(plain_csv(tmp_path / "plain.csv", starts))
    em = read_trace(em_csv(tmp_path / "em.csv", starts))
    assert plain.times == em.times == tuple(starts) and plain.resolution_s == HOUR
    assert plain.kg_per_kwh == pytest.approx(em.kg_per_kwh, rel=1e-15) and em.column == "direct"
    lifecycle = read_trace(tmp_path / "em.csv", column="lifecycle")
    assert lifecycle.kg_per_kwh[0] == pytest.approx(em.kg_per_kwh[0] + 0.05)
    older = read_trace(em_csv(tmp_path / "older.csv", starts, lifecycle_name="LCA"), column="lifecycle")
    assert older.kg_per_kwh == lifecycle.kg_per_kwh
    assert read_trace(plain_csv(tmp_path / "kg.csv", starts, unit="kg_per_kwh")).kg_per_kwh == pytest.approx(
        plain.kg_per_kwh, rel=1e-15)


@pytest.mark.parametrize("text, message", [
    ("timestamp,kg_per_kwh\n2026-06-01T02:00,0.3\n", "no UTC offset"),
    ("timestamp,kg_per_kwh\n2026-06-01T02:00Z,300\n", "looks like g CO2e/kWh"),
    ("timestamp,co2\n2026-06-01T02:00Z,0.3\n", "header 'timestamp,kg_per_kwh'"),
    ("timestamp,kg_per_kwh\n2026-06-01T02:00Z,nan\n", "row 2"),
    ("timestamp,kg_per_kwh\n2026-06-01T03:00Z,0.3\n2026-06-01T02:00Z,0.3\n", "must increase"),
])
def test_a_bad_trace_is_refused_naming_what(tmp_path, text, message):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(InvalidInputError, match=message):
        read_trace(tmp_path / "t.csv")


def test_an_unknown_column_is_refused(tmp_path):
    em_csv(tmp_path / "em.csv", hours_around(time.time()))
    with pytest.raises(InvalidInputError, match="column must be one of"):
        read_trace(tmp_path / "em.csv", column="marginal")


def test_a_run_integrates_the_trace_over_each_interval_exactly(tmp_path):
    starts = hours_around(time.time())
    trace = plain_csv(tmp_path / "de.csv", starts)
    # 700 s of replayed time per step: intervals of 1,400 s reach back across hour boundaries.
    session = RunSession(intensity=str(trace), region="de", pue=1.2, output_dir=tmp_path / "run",
                         log_every_n_steps=2, meter=ReplayMeter(energy_j=3.6e6, seconds=700.0))
    session.start()
    for _ in range(6):
        session.step_end()
    session.finish()
    summary, records = read_run(session.run_dir)
    expected = sum(r["step_energy_kwh"] * by_hand(starts, r["time"] - r["seconds"], r["time"]) for r in records)
    assert len(records) == 3 and summary["gross_co2e_kg"] == pytest.approx(expected, rel=1e-9)
    assert summary["net_co2e_kg"] == summary["gross_co2e_kg"]  # no carbon-free energy known beside a trace
    assert summary["gross_kg_per_kwh"] == pytest.approx(expected / summary["energy_kwh"], rel=1e-12)
    assert records[-1]["co2e_kg"] == pytest.approx(expected, rel=1e-9)
    facts = summary["info"]["intensity_trace"]
    assert facts["gross"]["source"] == "de.csv" and len(facts["gross"]["sha256"]) == 64
    assert facts["gross"]["resolution_s"] == HOUR and facts["gross"]["column"] == "g_per_kwh"
    assert facts["annual_kg_per_kwh"] == resolve_site(region="de").gross_kg_per_kwh
    assert "outside_kwh" not in facts
    card = format_report(summary)
    assert "energy-weighted over an hourly trace: de.csv (g_per_kwh)" in card and "annual gross" in card


def test_a_pandas_series_is_a_trace(tmp_path):
    pd = pytest.importorskip("pandas")
    starts = hours_around(time.time())
    series = pd.Series([daily_cycle(t) for t in starts], name="g_per_kwh",
                       index=pd.to_datetime(starts, unit="s", utc=True))
    site = resolve_site(intensity=series, pue=1.0)
    assert site.gross_trace.kg_per_kwh[0] == pytest.approx(daily_cycle(starts[0]) / 1000)
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        resolve_site(intensity=series.tz_localize(None), pue=1.0)


def test_a_run_outside_the_trace_is_refused_or_labelled_with_the_annual_figure(tmp_path):
    past = hours_around(time.time() - 10 * 24 * HOUR, after=24)
    trace = plain_csv(tmp_path / "old.csv", past)
    with pytest.raises(InvalidInputError, match="outside the trace old.csv"):
        RunSession(intensity=str(trace), pue=1.0, output_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="needs region="):
        RunSession(intensity=read_trace(trace, outside="annual"), pue=1.0, output_dir=tmp_path)
    session = RunSession(intensity=read_trace(trace, outside="annual"), region="fr", pue=1.0,
                         output_dir=tmp_path / "run", meter=ReplayMeter(energy_j=3.6e6, seconds=600.0))
    session.start()
    session.step_end()
    session.finish()
    summary, _ = read_run(session.run_dir)
    annual = resolve_site(region="fr").gross_kg_per_kwh
    assert summary["gross_co2e_kg"] == pytest.approx(summary["energy_kwh"] * annual, rel=1e-12)
    facts = summary["info"]["intensity_trace"]
    assert facts["outside_kwh"] == pytest.approx(summary["energy_kwh"])
    assert facts["outside_used"].startswith("the region's annual figure")


def test_steps_past_the_traces_end_warn_once_and_are_labelled(tmp_path):
    now = time.time()
    (tmp_path / "short.csv").write_text("timestamp,g_per_kwh\n" + "".join(
        f"{iso(now + 1.0 - k * HOUR)},300\n" for k in (2, 1)))  # ends 1 s from now
    session = RunSession(intensity=str(tmp_path / "short.csv"), pue=1.0, output_dir=tmp_path / "run",
                         meter=ReplayMeter(energy_j=3.6e6, seconds=600.0))
    session.start()
    time.sleep(1.2)
    with pytest.warns(CarbonCallbacksWarning, match="went past its intensity trace"):
        session.step_end(close=True)
    session.finish()
    summary, _ = read_run(session.run_dir)
    facts = summary["info"]["intensity_trace"]
    assert 0 < facts["outside_kwh"] < summary["energy_kwh"] and facts["outside_used"].startswith("the trace's average")


def test_a_resumed_run_carries_its_co2e_on_and_ranks_add_theirs(tmp_path):
    starts = hours_around(time.time())
    trace = str(plain_csv(tmp_path / "de.csv", starts))

    def session(folder):
        return RunSession(intensity=trace, pue=1.0, output_dir=tmp_path / folder, log_every_n_steps=1,
                          meter=ReplayMeter(energy_j=3.6e6, seconds=900.0))

    first = session("a")
    first.start()
    first.step_end()
    carried = first.summary()["gross_co2e_kg"]
    resumed = session("b")
    resumed.load_state_dict(first.state_dict())
    resumed.start(world_size=2, reduce_sum=lambda values: [2 * v for v in values])  # the other rank: the same
    resumed.step_end()
    summary = resumed.finish()
    _, records = read_run(resumed.run_dir)
    mine = records[-1]["step_co2e_kg"]
    assert mine == pytest.approx(1.0 * by_hand(starts, records[-1]["time"] - 900.0, records[-1]["time"]), rel=1e-9)
    assert summary["gross_co2e_kg"] == pytest.approx(2 * (carried + mine), rel=1e-12)  # this rank twice
