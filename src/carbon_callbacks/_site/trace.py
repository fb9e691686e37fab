"""A grid carbon intensity that varies in time: an hourly (or finer) trace the user brings, never fetched.

A trace is a step function: each value holds from its timestamp until the next one, the last for one resolution
(the most common spacing). An interval's intensity is the trace integrated over it and divided by its length, so
CO2e = energy x that mean is exact for the trace when power is even over the interval (the logging interval: a
few seconds to minutes, against an hour's resolution).

Three inputs, all read in UTC:

- the CSV the Electricity Maps data portal exports: `Datetime (UTC)` and two intensity columns in g CO2e/kWh,
  direct (`... (direct)`) and life-cycle (`... (Life cycle)`, `... (LCA)` in older exports); `column="direct"`
  (the default: operational emissions, as the paper counts them) or `"lifecycle"`;
- a plain two-column CSV, `timestamp,kg_per_kwh` or `timestamp,g_per_kwh` (the unit is the header), timestamps
  in ISO 8601 with their offset (`2026-06-01T02:00Z`);
- a pandas Series with a timezone-aware DatetimeIndex, in kg CO2e/kWh (`g_per_kwh` as its name for grams).
"""

from __future__ import annotations

import bisect
import csv
import datetime as _dt
import hashlib
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError, check_intensity

#: The Electricity Maps export's columns: its UTC time and its two intensities (g CO2e/kWh), as the header says.
EM_TIME = "datetime (utc)"
EM_COLUMNS = {"direct": ("(direct)",), "lifecycle": ("(life cycle)", "(lca)")}
COLUMNS = tuple(EM_COLUMNS)
_UNITS = {"kg_per_kwh": 1.0, "g_per_kwh": 1e-3}
#: What a run outside a trace's span may use (`IntensityTrace.outside`).
OUTSIDE = ("error", "annual")


@dataclass(frozen=True)
class IntensityTrace:
    """Gross (or net) carbon intensity through time.

    Attributes:
        times: UTC start of each value, seconds since the epoch, increasing.
        kg_per_kwh: the intensity from each time to the next, kg CO2e/kWh.
        source: where it came from (the file's name, or "pandas Series").
        column: the column used (`direct`, `lifecycle`, `kg_per_kwh`, `g_per_kwh`, or the Series's name).
        sha256: the file's SHA-256, or `None` for a Series.
        outside: what a run outside the trace's span uses: `"error"` (a run that starts outside it is refused;
            steps past its end use the fallback, labelled in `run.json`) or `"annual"` (the region's annual
            figure, labelled). Defaults to `"error"`.
    """

    times: tuple[float, ...]
    kg_per_kwh: tuple[float, ...]
    source: str
    column: str
    sha256: str | None = None
    outside: str = "error"

    def __post_init__(self) -> None:
        if self.outside not in OUTSIDE:
            raise InvalidInputError(f"outside must be one of {OUTSIDE}, got {self.outside!r}.")
        if not self.times or len(self.times) != len(self.kg_per_kwh):
            raise InvalidInputError(f"intensity trace {self.source}: no rows, or times and values differ in count.")
        if any(b <= a for a, b in zip(self.times, self.times[1:])):
            raise InvalidInputError(f"intensity trace {self.source}: timestamps must increase, without repeats.")
        cumulative = [0.0]
        for i in range(len(self.times) - 1):
            cumulative.append(cumulative[-1] + self.kg_per_kwh[i] * (self.times[i + 1] - self.times[i]))
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        object.__setattr__(self, "_cumulative", tuple(cumulative))
        object.__setattr__(self, "_resolution", statistics.mode(gaps) if gaps else 3600.0)

    @property
    def resolution_s(self) -> float:
        """The most common spacing between values (an hour for hourly data; an hour for a single value)."""
        return self._resolution

    @property
    def start(self) -> float:
        return self.times[0]

    @property
    def end(self) -> float:
        """Where the last value stops holding: one resolution after it."""
        return self.times[-1] + self.resolution_s

    def covers(self, t0: float, t1: float) -> bool:
        return self.start <= t0 and t1 <= self.end

    def integral(self, t0: float, t1: float) -> tuple[float, float]:
        """(the trace integrated over `[t0, t1]` within its span, in kg CO2e/kWh x s; the seconds it covers)."""
        a, b = max(t0, self.start), min(t1, self.end)
        if b <= a:
            return 0.0, 0.0
        return self._primitive(b) - self._primitive(a), b - a

    def mean(self) -> float:
        """The time-average over the whole span."""
        total, seconds = self.integral(self.start, self.end)
        return total / seconds

    def describe(self) -> dict:
        """What `run.json` records of the trace: where it came from and what it spans."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "column": self.column,
            "start": iso_time(self.start),
            "end": iso_time(self.end),
            "resolution_s": self.resolution_s,
            "points": len(self.times),
            "mean_kg_per_kwh": self.mean(),
        }

    def _primitive(self, t: float) -> float:
        """The integral from the trace's start to `t` (within the span)."""
        i = bisect.bisect_right(self.times, t) - 1
        return self._cumulative[i] + self.kg_per_kwh[i] * (t - self.times[i])


def iso_time(seconds: float) -> str:
    """UTC seconds since the epoch as ISO 8601 (`2026-06-01T02:00:00Z`)."""
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(text: str, field: str, naive_is_utc: bool = False) -> float:
    """An ISO 8601 time as seconds since the epoch; one without an offset is refused unless `naive_is_utc`."""
    try:
        moment = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"{field}: {text!r} is not an ISO 8601 time (e.g. 2026-06-01T02:00Z).") from None
    if moment.tzinfo is None:
        if not naive_is_utc:
            raise InvalidInputError(f"{field}: {text!r} has no UTC offset; write it as {text.strip()}Z (UTC) or "
                                    "with its offset (+02:00).")
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.timestamp()


def read_trace(path: str | os.PathLike, column: str | None = None, outside: str = "error") -> IntensityTrace:
    """A trace from a CSV file: an Electricity Maps export or a plain `timestamp,kg_per_kwh|g_per_kwh` file.

    Args:
        path: the CSV file.
        column: for an Electricity Maps export, `"direct"` or `"lifecycle"`. Defaults to `None`: direct.
        outside: see `IntensityTrace.outside`. Defaults to `"error"`.

    Raises:
        InvalidInputError: for a file that is missing or in neither format, a column it lacks, or a bad value
            (naming the row).
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as err:
        raise InvalidInputError(f"intensity trace {str(path)!r} cannot be read ({err.strerror or err}).") from None
    rows = list(csv.reader(data.decode("utf-8-sig").splitlines()))
    if not rows:
        raise InvalidInputError(f"intensity trace {file.name}: the file is empty.")
    header = [name.strip().lower() for name in rows[0]]
    if EM_TIME in header:
        time_at, value_at, used, scale = _em_columns(file.name, header, column)
        naive_is_utc = True
    else:
        if column is not None:
            raise InvalidInputError(f"intensity trace {file.name}: column={column!r} applies to Electricity Maps "
                                    "exports only; this file is a plain timestamp,kg_per_kwh CSV.")
        if len(header) != 2 or header[0] != "timestamp" or header[1] not in _UNITS:
            raise InvalidInputError(
                f"intensity trace {file.name}: expected an Electricity Maps export ('Datetime (UTC)' and carbon "
                f"intensity columns) or a header 'timestamp,kg_per_kwh' or 'timestamp,g_per_kwh', got {rows[0]}.")
        time_at, value_at, used, scale, naive_is_utc = 0, 1, header[1], _UNITS[header[1]], False
    times, values = [], []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        field = f"intensity trace {file.name} row {number}"
        try:
            raw = float(row[value_at])
        except (ValueError, IndexError):
            raise InvalidInputError(f"{field}: {used} is not a number ({row}).") from None
        times.append(parse_time(row[time_at], field, naive_is_utc))
        values.append(check_intensity(f"{field} ({used})", raw * scale))
    return IntensityTrace(tuple(times), tuple(values), source=file.name, column=used,
                          sha256=hashlib.sha256(data).hexdigest(), outside=outside)


def _em_columns(name: str, header: list[str], column: str | None) -> tuple[int, int, str, float]:
    wanted = "direct" if column is None else column
    if wanted not in EM_COLUMNS:
        raise InvalidInputError(f"intensity trace column must be one of {COLUMNS}, got {column!r}.")
    for at, title in enumerate(header):
        if title.startswith("carbon intensity") and title.endswith(EM_COLUMNS[wanted]):
            if "gco" not in title.replace("₂", "2"):
                raise InvalidInputError(f"intensity trace {name}: column {title!r} is not in g CO2e/kWh.")
            return header.index(EM_TIME), at, wanted, 1e-3
    raise InvalidInputError(f"intensity trace {name}: no {wanted} carbon intensity column in {header}.")


def from_series(series, outside: str = "error") -> IntensityTrace:
    """A trace from a pandas Series with a timezone-aware DatetimeIndex, in kg CO2e/kWh (g if named `g_per_kwh`)."""
    index = getattr(series, "index", None)
    if getattr(index, "tz", None) is None:
        raise InvalidInputError("intensity Series: its index must be a timezone-aware DatetimeIndex "
                                "(series.tz_localize('UTC') if its times are UTC).")
    name = str(series.name) if series.name is not None else "kg_per_kwh"
    scale = _UNITS.get(name, 1.0)
    times = tuple(moment.timestamp() for moment in index.to_pydatetime())
    values = tuple(check_intensity(f"intensity Series at {index[i]}", float(v) * scale)
                   for i, v in enumerate(series.tolist()))
    order = sorted(range(len(times)), key=times.__getitem__)
    return IntensityTrace(tuple(times[i] for i in order), tuple(values[i] for i in order), source="pandas Series",
                          column=name, outside=outside)


def as_trace(value, field: str) -> IntensityTrace | None:
    """`value` as a trace when it is one (a trace, a CSV file's path, a pandas Series), else `None` (a number).

    Raises:
        InvalidInputError: for text that names no file (naming `field`).
    """
    if isinstance(value, IntensityTrace):
        return value
    if isinstance(value, (str, os.PathLike)):
        if not Path(value).is_file():
            raise InvalidInputError(f"{field} must be a number (kg CO2e/kWh) or an intensity trace file, got "
                                    f"{str(value)!r}: no such file.")
        return read_trace(value)
    if hasattr(value, "index") and hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        return from_series(value)
    return None
