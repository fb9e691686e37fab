"""Plots of run directories (extra `plot`, matplotlib): loss against cumulative CO2e and energy, what-if bars.

The curve a reader wants is the loss against the carbon spent so far: how much CO2e each step of accuracy cost.
matplotlib is imported inside `plot_runs` only, and through its object API (no pyplot, no global backend).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._record.reader import sample_records, steps_path
from carbon_callbacks._reports.report import read_report

#: Most what-if bars drawn (the lowest net CO2e first, the run itself always).
MAX_BARS = 16
#: Points drawn per curve: a long run's step log is read at this many evenly spaced places, not whole (the eye sees
#: no more; a million-record log is drawn in well under a second).
MAX_POINTS = 4000


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("carbon-callbacks plots need matplotlib: pip install 'carbon-callbacks[plot]'") from None
    return Figure


def _scaled_unit(max_value: float, units: tuple[str, str, str]) -> tuple[float, str]:
    """Scale and label so that an axis whose values are in units[1] reads in units[0] (x1000), units[1] or units[2]
    (/1000): ("g CO2e", "kg CO2e", "t CO2e") or ("Wh", "kWh", "MWh")."""
    if max_value < 1.0:
        return 1000.0, units[0]
    if max_value >= 1000.0:
        return 1e-3, units[2]
    return 1.0, units[1]


_CO2E_UNITS = ("g CO2e", "kg CO2e", "t CO2e")
_ENERGY_UNITS = ("Wh", "kWh", "MWh")


def _curves(records: list[dict]) -> tuple[list[float], list[float], list[float]]:
    """(cumulative gross kg CO2e, cumulative facility kWh, loss) at each interval that logged a loss."""
    co2, kwh, loss = [], [], []
    for r in records:
        if r.get("loss") is not None and r.get("co2e_kg") is not None and r.get("energy_kwh") is not None:
            co2.append(r["co2e_kg"])
            kwh.append(r["energy_kwh"])
            loss.append(r["loss"])
    return co2, kwh, loss


def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    scenarios: Sequence | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Draws the loss of each run against its cumulative CO2e and energy, and optionally what-if bars.

    Args:
        run_dirs: run directories; their curves share the axes (e.g. a dense run and its MoE twin).
        path: the image file to write; the format follows the suffix (`.png`, `.svg`, `.pdf`).
        labels: one legend label per run. Defaults to `None`: the directory names.
        scenarios: `Scenario`s from `whatif` for a bar panel of net (and gross) CO2e. Defaults to `None`.
        title: the figure's title. Defaults to `None`.
        dpi: resolution of raster formats. Defaults to `120`.

    Returns:
        The path written.

    Raises:
        InvalidInputError: for no run, a missing run directory, wrong number of labels, or runs that logged no
            loss and no scenarios to draw.
        ImportError: when matplotlib is not installed (extra `plot`).
    """
    if not run_dirs:
        raise InvalidInputError("plot_runs needs at least one run directory.")
    reports = [read_report(d) for d in run_dirs]
    for report in reports:
        report.warn_problems()
    if labels is None:
        labels = [Path(r.run_dir).resolve().name for r in reports]
    elif len(labels) != len(reports):
        raise InvalidInputError(f"labels must have one entry per run directory ({len(reports)}), got {len(labels)}.")
    columns = ("loss", "co2e_kg", "energy_kwh")
    curves = [_curves(sample_records(steps_path(Path(r.run_dir)), MAX_POINTS, columns)) for r in reports]
    if not any(c[0] for c in curves) and not scenarios:
        raise InvalidInputError(
            "nothing to plot: the runs' step logs hold no loss (did the adapter see a loss?) and no what-if was given."
        )
    Figure = _figure_class()
    panels = 3 if scenarios else 2
    fig = Figure(figsize=(5.0 * panels, 4.2), layout="constrained")
    axes = fig.subplots(1, panels)
    max_kg = max((max(c[0]) for c in curves if c[0]), default=0.0)
    scale, unit = _scaled_unit(max_kg, _CO2E_UNITS)
    e_scale, e_unit = _scaled_unit(max((max(c[1]) for c in curves if c[1]), default=0.0), _ENERGY_UNITS)
    for (co2, kwh, loss), label in zip(curves, labels):
        if co2:
            axes[0].plot([x * scale for x in co2], loss, marker=".", label=label)
            axes[1].plot([x * e_scale for x in kwh], loss, marker=".", label=label)
    axes[0].set(xlabel=f"cumulative {unit} (gross)", ylabel="training loss", title="loss vs carbon")
    axes[1].set(xlabel=f"cumulative energy, {e_unit} (facility)", ylabel="training loss", title="loss vs energy")
    for ax in axes[:2]:
        ax.grid(True, alpha=0.3)
        if any(c[0] for c in curves):
            ax.legend(fontsize="small")
    if scenarios:
        _bars(axes[2], scenarios)
    return _save(fig, path, title, dpi)


def _bars(ax, scenarios: Sequence) -> None:
    shown = list(scenarios[:MAX_BARS])
    actual = [s for s in scenarios if s.is_actual]
    if actual and actual[0] not in shown:
        shown[-1] = actual[0]
    scale, unit = _scaled_unit(max(s.gross_co2e_kg for s in shown), _CO2E_UNITS)
    names = [f"{s.model} | {s.chip} | {s.region} | PUE {s.pue:.3g}" for s in shown]
    positions = range(len(shown))
    ax.barh(positions, [s.gross_co2e_kg * scale for s in shown], color="0.85", label="gross")
    ax.barh(
        positions,
        [s.net_co2e_kg * scale for s in shown],
        height=0.5,
        color=["tab:red" if s.is_actual else "tab:green" for s in shown],
        label="net",
    )
    ax.set_yticks(list(positions), names, fontsize="x-small")
    ax.invert_yaxis()
    ax.set(xlabel=f"{unit} (chip and MoE-twin rows are estimates)", title="what-if (red: this run)")
    ax.legend(fontsize="small")


def plot_when(profile: Sequence[tuple[float, float, float]], trace, path: str | os.PathLike, *,
              start: float | None = None, best=None, title: str | None = None, dpi: int = 120) -> Path:
    """Draws a run's power and cumulative CO2e above the intensity trace it meets (the "when" lever).

    Args:
        profile: the run's `(start, end, facility kWh)` intervals (`when.power_profile`).
        trace: the `IntensityTrace`.
        path: the image file to write.
        start: where to place the run (UTC seconds). Defaults to `None`: where it ran.
        best: a `when.Shift` whose window is shaded. Defaults to `None`.
        title: the figure's title. Defaults to `None`.
        dpi: resolution of raster formats. Defaults to `120`.

    Returns:
        The path written.
    """
    import datetime as dt

    from carbon_callbacks._reports.when import interval_co2e, shifted
    from carbon_callbacks._site.trace import iso_time

    placed = shifted(profile, trace, profile[0][0] if start is None else start)
    offset = placed.start - profile[0][0]
    moments = [t + offset for t0, t1, _ in profile for t in (t0, t1)]

    def when(t: float):
        return dt.datetime.fromtimestamp(t, dt.timezone.utc)

    kw = [kwh / ((t1 - t0) / 3600.0) if t1 > t0 else 0.0 for t0, t1, kwh in profile for _ in (0, 1)]
    cumulative, co2 = [], 0.0
    for kg in interval_co2e(profile, trace, offset):
        cumulative.append(co2)
        co2 += kg
        cumulative.append(co2)
    low = min(moments[0], best.start if best is not None else moments[0]) - trace.resolution_s
    high = max(moments[-1], (best.start + moments[-1] - moments[0]) if best is not None else moments[-1])
    high += trace.resolution_s
    shown = [i for i, t in enumerate(trace.times) if low <= t <= high]
    Figure = _figure_class()
    fig = Figure(figsize=(9.0, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot([when(t) for t in moments], kw, color="tab:blue", label="facility power (kW)")
    top.set(ylabel="facility power, kW", title=f"the run from {iso_time(placed.start)}")
    scale, unit = _scaled_unit(co2, _CO2E_UNITS)
    twin = top.twinx()
    twin.plot([when(t) for t in moments], [c * scale for c in cumulative], color="tab:red",
              label=f"cumulative CO2e ({unit})")
    twin.set(ylabel=f"cumulative {unit} (gross)")
    top.legend(handles=[*top.get_lines(), *twin.get_lines()], fontsize="small", loc="upper left")
    steps = [when(trace.times[i]) for i in shown] + [when(min(trace.end, high))]
    values = [trace.kg_per_kwh[i] * 1000 for i in shown]
    bottom.stairs(values, steps, fill=True, color="0.8", label=f"grid intensity ({trace.source}, {trace.column})")
    bottom.axvspan(when(moments[0]), when(moments[-1]), color="tab:blue", alpha=0.15, label="the run")
    if best is not None:
        bottom.axvspan(when(best.start), when(best.start + moments[-1] - moments[0]), color="tab:green", alpha=0.3,
                       label=f"{best.label} {best.gross_co2e_kg * scale:.3g} {unit}")
    bottom.set(ylabel="g CO2e/kWh", xlabel="UTC")
    bottom.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    return _save(fig, path, title, dpi)


def _save(fig, path: str | os.PathLike, title: str | None, dpi: int) -> Path:
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
