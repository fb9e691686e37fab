"""The whole run's energy and CO2e, projected from its first steps.

The projection assumes the remaining steps run at the observed energy per step. The central figure uses the
steps observed after the first logging interval (its warm-up: compilation, FLOP counting, caches, allocator growth)
whenever there are two intervals or more; the interval applies the lowest and highest observed per-interval rates
(the 10th and 90th percentiles when there are ten or more; the warm-up's too when only one interval follows it)
to the remaining steps. The run session logs it once, at the first interval end past `PROJECT_AFTER` of a run of
known length with at least three intervals seen, from a `ProjectionSample` of bounded size. It is a statement about
a steady run, not a guarantee: a schedule that changes the batch size or sequence length later breaks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError, check_count, check_number


@dataclass(frozen=True)
class Projection:
    """A whole run's facility energy and CO2e, projected from its first `steps_observed` steps.

    Attributes:
        steps_observed: steps the projection is based on.
        total_steps: the run's total length, in steps.
        observed_energy_kwh: facility energy of the observed steps, in kWh.
        energy_kwh: projected facility energy of the whole run, in kWh.
        energy_kwh_low / energy_kwh_high: the interval, in kWh.
        gross_co2e_kg / net_co2e_kg (and `_low` / `_high`): projected CO2e, in kg (`None` without an intensity).
        wall_time_s: projected training time, in s (`None` if the records have no time).
        method: how the figure was obtained, in words.
    """

    steps_observed: int
    total_steps: int
    observed_energy_kwh: float
    energy_kwh: float
    energy_kwh_low: float
    energy_kwh_high: float
    gross_co2e_kg: float | None
    gross_co2e_kg_low: float | None
    gross_co2e_kg_high: float | None
    net_co2e_kg: float | None
    net_co2e_kg_low: float | None
    net_co2e_kg_high: float | None
    wall_time_s: float | None
    method: str

    @property
    def fraction_observed(self) -> float:
        """Share of the run the projection saw."""
        return self.steps_observed / self.total_steps

    def to_dict(self) -> dict:
        return {**asdict(self), "fraction_observed": self.fraction_observed}


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile of `values` (0 <= q <= 1)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _intensities(records: Sequence[dict]) -> tuple[float | None, float | None]:
    """Gross and net kg CO2e/kWh implied by the records (`step_co2e_kg / step_energy_kwh`, cumulative net)."""
    energy = sum(r.get("step_energy_kwh") or 0.0 for r in records)
    gross_kg = [r.get("step_co2e_kg") for r in records]
    gross = sum(gross_kg) / energy if energy > 0 and None not in gross_kg else None
    last = records[-1]
    net = None
    if last.get("co2e_net_kg") is not None and last.get("energy_kwh"):
        net = last["co2e_net_kg"] / last["energy_kwh"]
    return gross, net


#: The record fields a projection reads: summed per interval, or (the cumulative ones) taken from the last.
_SUMMED = ("num_steps", "step_energy_kwh", "step_co2e_kg", "seconds")
_LAST = ("energy_kwh", "co2e_kg", "co2e_net_kg")


def _merged(a: dict, b: dict) -> dict:
    """Two consecutive records as one interval: the sums add, the running totals are the later one's."""
    merged = {k: (a.get(k) or 0) + (b.get(k) or 0) for k in _SUMMED}
    for key in ("step_co2e_kg", "seconds"):
        if a.get(key) is None or b.get(key) is None:
            merged[key] = None
    merged.update({k: b.get(k) for k in _LAST})
    return merged


class ProjectionSample:
    """The records a projection needs, in memory that does not grow with the run.

    Keeps the first record (the warm-up) and at most `size` bins of the later ones. When the bins are full,
    neighbours are merged in pairs and each later bin takes twice as many records, so every bin covers the same
    number of intervals. The sums of steps, energy, CO2e and time stay exact (so does the central projection); the
    spread is then over merged intervals, which narrows it a little. Lightning's `_MonotonicWindow` bounds its
    throughput window the same way, with a `maxlen`.

    Args:
        size: the most bins kept. Defaults to `1024`.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = check_count("size", size, minimum=2)
        self._first: dict | None = None
        self._bins: list[dict] = []
        self._open: dict | None = None
        self._open_count = 0
        self._stride = 1
        self.intervals = 0

    def add(self, record: dict) -> None:
        """Adds one interval's record (`steps.csv` fields)."""
        part = {k: record.get(k) for k in (*_SUMMED, *_LAST)}
        part["num_steps"] = part["num_steps"] or 1
        self.intervals += 1
        if self._first is None:
            self._first = part
            return
        self._open = part if self._open is None else _merged(self._open, part)
        self._open_count += 1
        if self._open_count < self._stride:
            return
        self._bins.append(self._open)
        self._open, self._open_count = None, 0
        if len(self._bins) >= self._size:
            pairs = zip(self._bins[0::2], self._bins[1::2])
            self._bins = [_merged(a, b) for a, b in pairs] + (self._bins[-1:] if len(self._bins) % 2 else [])
            self._stride *= 2

    @property
    def records(self) -> list[dict]:
        """The records to project from, in order (merged bins after the first)."""
        head = [] if self._first is None else [self._first]
        return head + self._bins + ([self._open] if self._open is not None else [])


def project(
    records: Sequence[dict],
    total_steps: int,
    *,
    gross_kg_per_kwh: float | None = None,
    net_kg_per_kwh: float | None = None,
) -> Projection:
    """Projects a run's total facility energy and CO2e from the step records of its first steps.

    Args:
        records: step records as in `steps.csv` (`num_steps`, `step_energy_kwh`, `seconds`), in order.
        total_steps: the run's total length in steps (Lightning: `trainer.estimated_stepping_batches`; Keras:
            epochs x steps per epoch).
        gross_kg_per_kwh: gross intensity for the CO2e. Defaults to `None`: the one the records imply.
        net_kg_per_kwh: net intensity. Defaults to `None`: the one the records imply.

    Returns:
        The `Projection`.

    Raises:
        InvalidInputError: for no records, a record without energy, or `total_steps` below the observed steps.

    Example:
        >>> recs = [{"num_steps": 10, "step_energy_kwh": 1.0, "seconds": 5.0}] * 4
        >>> project(recs, 200).energy_kwh
        20.0
    """
    total_steps = check_count("total_steps", total_steps)
    if not records:
        raise InvalidInputError("records is empty: a projection needs at least one logged interval.")
    steps, energies = [], []
    for index, record in enumerate(records):
        n = check_count(f"records[{index}]['num_steps']", record.get("num_steps", 1))
        if record.get("step_energy_kwh") is None:
            raise InvalidInputError(f"records[{index}] has no step_energy_kwh.")
        steps.append(n)
        field = f"records[{index}]['step_energy_kwh']"
        energies.append(check_number(field, record["step_energy_kwh"], non_negative=True))
    observed_steps = sum(steps)
    if total_steps < observed_steps:
        raise InvalidInputError(
            f"total_steps ({total_steps}) is less than the {observed_steps} steps already observed."
        )
    observed_energy = sum(energies)
    rates = [e / n for e, n in zip(energies, steps)]
    skip = 1 if len(records) >= 2 else 0
    rate = sum(energies[skip:]) / sum(steps[skip:])
    spread = rates[skip:] if len(rates) - skip >= 2 else rates
    if len(spread) >= 10:
        rate_low, rate_high = _percentile(spread, 0.1), _percentile(spread, 0.9)
        spread_text = "10th-90th percentile"
    else:
        rate_low, rate_high = min(spread), max(spread)
        spread_text = "slowest-fastest"
    rate_low, rate_high = min(rate_low, rate), max(rate_high, rate)
    remaining = total_steps - observed_steps
    energy = observed_energy + remaining * rate
    low, high = observed_energy + remaining * rate_low, observed_energy + remaining * rate_high

    implied_gross, implied_net = _intensities(records)
    gross = gross_kg_per_kwh if gross_kg_per_kwh is not None else implied_gross
    net = net_kg_per_kwh if net_kg_per_kwh is not None else implied_net

    def co2(intensity: float | None) -> tuple[float | None, float | None, float | None]:
        if intensity is None:
            return None, None, None
        return energy * intensity, low * intensity, high * intensity

    seconds = [r.get("seconds") for r in records]
    wall = None
    if None not in seconds:
        seconds_rate = sum(seconds[skip:]) / sum(steps[skip:])
        wall = sum(seconds) + remaining * seconds_rate
    method = (
        f"observed {observed_energy:.6g} kWh over {observed_steps} steps + {remaining} remaining steps x "
        f"{rate:.6g} kWh/step (mean over {len(steps) - skip} interval(s)"
        + (", first interval left out as warm-up" if skip else "")
        + f"); interval: {spread_text} of {len(spread)} per-interval rates"
    )
    g, g_low, g_high = co2(gross)
    n_, n_low, n_high = co2(net)
    return Projection(
        steps_observed=observed_steps,
        total_steps=total_steps,
        observed_energy_kwh=observed_energy,
        energy_kwh=energy,
        energy_kwh_low=low,
        energy_kwh_high=high,
        gross_co2e_kg=g,
        gross_co2e_kg_low=g_low,
        gross_co2e_kg_high=g_high,
        net_co2e_kg=n_,
        net_co2e_kg_low=n_low,
        net_co2e_kg_high=n_high,
        wall_time_s=wall,
        method=method,
    )


def project_run(run_dir, total_steps: int | None = None, *, after_steps: int | None = None) -> Projection:
    """Projects a run directory's total from its step log (all of it, or its first `after_steps` steps).

    Args:
        run_dir: the run directory.
        total_steps: the run's length. Defaults to `None`: the one logged in `run.json` with the projection.
        after_steps: use only the records covering the first `after_steps` steps. Defaults to `None`: all.

    Raises:
        InvalidInputError: when the total length is unknown or the log has no records.
    """
    from carbon_callbacks._record.reader import scan_lines, steps_path
    from carbon_callbacks._reports.report import read_report

    report = read_report(run_dir)
    if total_steps is None:
        total_steps = ((report.summary.get("info") or {}).get("projection") or {}).get("total_steps")
        if total_steps is None:
            raise InvalidInputError(
                f"total_steps is unknown for {report.run_dir}: pass it (the run logged no projection)."
            )
    if after_steps is not None:
        after_steps = check_count("after_steps", after_steps)
    sample, seen = ProjectionSample(), 0  # in bounded memory, however long the log
    for line in scan_lines(steps_path(Path(run_dir)), (*_SUMMED, *_LAST)):
        if line.record is None:
            continue
        if after_steps is not None and seen >= after_steps:
            break
        sample.add(line.record)
        seen += line.record.get("num_steps") or 1
    return project(
        sample.records,
        total_steps,
        gross_kg_per_kwh=report.summary.get("gross_kg_per_kwh"),
        net_kg_per_kwh=report.summary.get("net_kg_per_kwh"),
    )
