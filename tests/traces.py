"""Intensity traces for the tests: a daily cycle (100 g CO2e/kWh at 3 am UTC, 400 at 3 pm), written in the formats
users bring, and its mean over an interval integrated by hand, hour by hour."""

from __future__ import annotations

import datetime as dt
import math

HOUR = 3600.0


def daily_cycle(hour_start: float) -> float:
    """g CO2e/kWh with a daily cycle: 100 at 3 am UTC, 400 at 3 pm."""
    hour = (hour_start / HOUR) % 24
    return 250.0 - 150.0 * math.cos(2 * math.pi * (hour - 3) / 24)


def hours_around(now: float, before: int = 3, after: int = 48) -> list[float]:
    first = math.floor(now / HOUR) * HOUR - before * HOUR
    return [first + i * HOUR for i in range(before + after)]


def iso(seconds: float, z: bool = True) -> str:
    text = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return text.replace(" ", "T") + "Z" if z else text


def plain_csv(path, starts, unit="g_per_kwh"):
    scale = 1.0 if unit == "g_per_kwh" else 1e-3
    path.write_text(f"timestamp,{unit}\n" + "".join(f"{iso(t)},{daily_cycle(t) * scale!r}\n" for t in starts))
    return path


def em_csv(path, starts, lifecycle_name="Life cycle"):
    """The Electricity Maps data portal's export: its columns, g CO2e/kWh, naive UTC datetimes."""
    header = ("Datetime (UTC),Country,Zone Name,Zone Id,Carbon intensity gCO₂eq/kWh (direct),"
              f"Carbon intensity gCO₂eq/kWh ({lifecycle_name}),Carbon-free energy percentage (CFE%),"
              "Renewable energy percentage (RE%),Data source,Data estimated,Data estimation method\n")
    rows = "".join(f"{iso(t, z=False)},Germany,Germany,DE,{daily_cycle(t)!r},{daily_cycle(t) + 50!r},40,45,x,false,\n"
                   for t in starts)
    path.write_text(header + rows, encoding="utf-8")
    return path


def by_hand(starts, t0, t1, grams=daily_cycle) -> float:
    """The hourly trace's mean over [t0, t1] in kg CO2e/kWh, hour by hour."""
    total, t = 0.0, t0
    while t < t1:
        hour = math.floor(t / HOUR) * HOUR
        assert starts[0] <= hour <= starts[-1]
        stop = min(hour + HOUR, t1)
        total += grams(hour) / 1000 * (stop - t)
        t = stop
    return total / (t1 - t0)
