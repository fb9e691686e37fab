"""The "when" lever: a finished run's measured power profile moved to another start on an intensity trace.

The profile is the step log's intervals, each `(start, end, facility kWh)`, its energy spent evenly through it, as
the run itself counted it. Moved by `offset` seconds, its gross CO2e is `sum kWh x (the trace's mean over the moved
interval)`, exact for the trace (its primitive is piecewise linear). `best_start` tries every start from `earliest`
in steps of the trace's resolution up to `within` seconds later, keeping those the trace covers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._site.trace import IntensityTrace, iso_time


@dataclass(frozen=True)
class Shift:
    """The run moved to another start.

    Attributes:
        start: UTC start of the moved run, seconds since the epoch.
        energy_kwh: its facility energy (the run's).
        gross_co2e_kg: its CO2e on the trace.
        kg_per_kwh: the energy-weighted intensity it met (`gross_co2e_kg / energy_kwh`).
        trace: the trace's source and column.
        chosen: how the start was chosen (`"start"`, or `"best start within 48 h"`).
    """

    start: float
    energy_kwh: float
    gross_co2e_kg: float
    kg_per_kwh: float
    trace: str
    chosen: str = "start"

    @property
    def label(self) -> str:
        return f"{self.chosen} {iso_time(self.start)}"


def power_profile(records: Sequence[dict]) -> list[tuple[float, float, float]]:
    """`(start, end, facility kWh)` of each logged interval, in time order (the step log's `time`, `seconds` and
    `step_energy_kwh`).

    Raises:
        InvalidInputError: for a run whose step log holds no interval with its time and energy.
    """
    profile = sorted((r["time"] - r["seconds"], r["time"], r["step_energy_kwh"]) for r in records
                     if r.get("time") is not None and r.get("seconds") is not None
                     and r.get("step_energy_kwh") is not None)
    if not profile:
        raise InvalidInputError("the run's step log has no interval with its time and energy: nothing to move.")
    return profile


def shifted(profile: Sequence[tuple[float, float, float]], trace: IntensityTrace, start: float) -> Shift:
    """The run's profile moved to begin at `start`, on `trace`.

    Raises:
        InvalidInputError: when the moved run leaves the trace's span (naming `--start` and the span).
    """
    offset = start - profile[0][0]
    end = max(t1 for _, t1, _ in profile) + offset
    if not trace.covers(start, end):
        span = trace.describe()
        raise InvalidInputError(
            f"--start {iso_time(start)}: the run would last until {iso_time(end)}, outside the trace {trace.source} "
            f"({span['start']} to {span['end']}).")
    return _shift(profile, trace, offset)


def best_start(profile: Sequence[tuple[float, float, float]], trace: IntensityTrace, earliest: float,
               within: float) -> Shift:
    """The start in `[earliest, earliest + within]`, in steps of the trace's resolution, with the least CO2e.

    Raises:
        InvalidInputError: when no such start keeps the run inside the trace.
    """
    duration = max(t1 for _, t1, _ in profile) - profile[0][0]
    step = trace.resolution_s
    starts = [earliest + k * step for k in range(int(within // step) + 1)]
    fits = [s for s in starts if trace.covers(s, s + duration)]
    if not fits:
        raise InvalidInputError(
            f"--best-start-within: no start from {iso_time(earliest)} within {within / 3600:g} h keeps the run "
            f"({duration / 3600:.3g} h) inside the trace {trace.source} ({trace.describe()['start']} to "
            f"{trace.describe()['end']}).")
    best = min((_shift(profile, trace, s - profile[0][0]) for s in fits), key=lambda shift: shift.gross_co2e_kg)
    return dataclasses.replace(best, chosen=f"best start within {within / 3600:g} h:")


def interval_co2e(profile, trace: IntensityTrace, offset: float) -> list[float]:
    """Each interval's gross CO2e, moved by `offset` seconds (its energy x the trace's mean over it)."""
    co2e = []
    for t0, t1, kwh in profile:
        total, covered = trace.integral(t0 + offset, t1 + offset)
        co2e.append(kwh * (total / covered if covered > 0 else _value_at(trace, t0 + offset)))
    return co2e


def _shift(profile, trace: IntensityTrace, offset: float) -> Shift:
    energy, co2e = sum(kwh for _, _, kwh in profile), sum(interval_co2e(profile, trace, offset))
    return Shift(start=profile[0][0] + offset, energy_kwh=energy, gross_co2e_kg=co2e,
                 kg_per_kwh=co2e / energy if energy > 0 else 0.0, trace=f"{trace.source} ({trace.column})")


def _value_at(trace: IntensityTrace, t: float) -> float:
    """The trace's value at `t` (an interval of no length)."""
    total, covered = trace.integral(t, t + 1e-6)
    return total / covered


def parse_duration(text: str) -> float:
    """`48h`, `2d`, `90m` or `3600s` (or a number of hours) as seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "h")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        raise InvalidInputError(f"--best-start-within: {text!r} is not a duration (48h, 2d, 90m).") from None
    if not seconds > 0 or seconds != seconds:
        raise InvalidInputError(f"--best-start-within: {text!r} must be a positive duration.")
    return seconds
