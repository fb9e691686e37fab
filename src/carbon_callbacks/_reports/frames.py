"""Step logs as pandas DataFrames: one run, or several in one frame for comparison.

pandas is imported inside `load_run` only, so `import carbon_callbacks` never pays for it (extra `reports`).
"""

from __future__ import annotations

import os
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._reports.report import read_report

#: Columns every frame has, in this order, even when a run logged none of them.
COLUMNS = (
    "run", "step", "num_steps", "cum_steps", "elapsed_s", "seconds", "loss", "model_flops", "hardware_flops",
    "tokens", "it_energy_j", "step_energy_kwh", "step_co2e_kg", "energy_kwh", "co2e_kg", "co2e_net_kg", "mfu",
    "energy_method",
)


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError(
            "carbon_callbacks.load_run needs pandas: pip install 'carbon-callbacks[reports]'"
        ) from None
    return pandas


def load_run(*run_dirs: str | os.PathLike, labels: list[str] | None = None):
    """Reads the step logs of one or more run directories into one pandas DataFrame.

    Args:
        *run_dirs: run directories (each with `run.json` and/or `steps.jsonl`).
        labels: the `run` column's value for each directory. Defaults to `None`: the directory names (the full
            paths when two names clash).

    Returns:
        A DataFrame with one row per logged interval and the columns of `COLUMNS` first (`cum_steps` and
        `elapsed_s` are cumulative within each run), then any other record keys. `frame.attrs["runs"]` maps each
        label to that run's summary (`run.json`, or what the step log supports when it is missing). A line of a step
        log that is not a record is skipped with a warning naming it (a torn last line, silently).

    Raises:
        InvalidInputError: for no directory, a directory that is missing or holds no run files, or a
            `labels` list of the wrong length.
        ImportError: when pandas is not installed (extra `reports`).

    Example:
        >>> frame = load_run("runs/dense", "runs/switch")  # doctest: +SKIP
        >>> frame.groupby("run")["co2e_kg"].last()  # doctest: +SKIP
    """
    if not run_dirs:
        raise InvalidInputError("load_run needs at least one run directory.")
    pd = _pandas()
    paths = [Path(d) for d in run_dirs]
    if labels is None:
        names = [p.resolve().name or str(p) for p in paths]
        labels = names if len(set(names)) == len(names) else [str(p) for p in paths]
    elif len(labels) != len(paths):
        raise InvalidInputError(f"labels must have one entry per run directory ({len(paths)}), got {len(labels)}.")
    frames, summaries = [], {}
    for label, path in zip(labels, paths):
        report = read_report(path)
        report.warn_problems()
        summaries[label] = report.summary
        frame = pd.DataFrame.from_records(report.records)
        for column in COLUMNS:
            if column not in frame.columns:
                frame[column] = None
        frame["run"] = label
        if len(frame):
            frame["cum_steps"] = frame["num_steps"].fillna(1).astype("int64").cumsum()
            frame["elapsed_s"] = frame["seconds"].astype("float64").cumsum()
        extra = [c for c in frame.columns if c not in COLUMNS]
        frames.append(frame[list(COLUMNS) + extra])
    result = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    result.attrs["runs"] = summaries
    return result
