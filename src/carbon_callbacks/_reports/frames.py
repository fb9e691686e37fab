"""Step logs as pandas DataFrames: one run, or several in one frame for comparison.

pandas is imported inside `load_run` only, so `import carbon_callbacks` never pays for it (extra `reports`). A
`steps.csv` is read by `pandas.read_csv` with each column's dtype (a million records in about a second), then
checked as every reader checks it (finite, not negative where a field cannot be); a log with a bad line, or an older
version's `steps.jsonl`, is read line by line instead, and each bad line is named in a warning.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._record.reader import CRASH, read_run_files, steps_path
from carbon_callbacks._record.schema import AMOUNT, COUNT, SIGNED, STEP_COLUMNS, TEXT
from carbon_callbacks._reports.report import read_report
from carbon_callbacks._warnings import CarbonCallbacksWarning

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
        *run_dirs: run directories (each with `run.json` and/or a step log).
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
        summaries[label] = report.summary
        frame = _step_frame(pd, path)
        for column in COLUMNS:
            if column not in frame.columns:
                frame[column] = None
        frame["run"] = label
        if len(frame):
            if frame["cum_steps"].isna().any():  # an older version's log: the running sum of its steps
                frame["cum_steps"] = frame["num_steps"].fillna(1).astype("int64").cumsum()
            frame["elapsed_s"] = frame["seconds"].astype("float64").cumsum()
        extra = [c for c in frame.columns if c not in COLUMNS]
        frames.append(frame[list(COLUMNS) + extra])
    result = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    result.attrs["runs"] = summaries
    return result


#: pandas dtypes of the step log's kinds of field (counts may be empty: pandas' nullable integer).
_DTYPES = {COUNT: "Int64", AMOUNT: "float64", SIGNED: "float64", TEXT: "object"}


def _step_frame(pd, run_dir: Path):
    """The run's step records as a DataFrame: `read_csv` where the log is a clean `steps.csv`, else line by line."""
    path = steps_path(run_dir)
    if path.suffix == ".csv" and path.exists():
        frame = _read_csv(pd, path)
        if frame is not None:
            return frame
    files = read_run_files(run_dir)
    for problem in files.problems:
        if CRASH not in problem:
            warnings.warn(f"carbon-callbacks: {problem}", CarbonCallbacksWarning, stacklevel=4)
    names = list(dict.fromkeys(key for record in files.records for key in record))
    return pd.DataFrame({name: [record.get(name) for record in files.records] for name in names})


def _read_csv(pd, path: Path):
    """`steps.csv` read whole by pandas, or `None` when a line needs the careful reader (a bad cell, a negative
    energy, a field too many)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(size - 65536, 0))
        tail = handle.read()
    whole = size - (len(tail) - tail.rfind(b"\n") - 1)  # up to the last newline: a torn last line is left out
    try:
        with open(path, "rb") as handle:
            source = handle if whole == size else io.BytesIO(handle.read(whole))
            frame = pd.read_csv(source, dtype={c: _DTYPES[k] for c, k in STEP_COLUMNS.items()},
                                keep_default_na=False, na_values=[""])
    except (ValueError, pd.errors.ParserError):
        return None
    import numpy

    for column, kind in STEP_COLUMNS.items():
        if column not in frame.columns or kind == TEXT:
            continue
        values = frame[column].astype("float64").to_numpy()
        values = values[~numpy.isnan(values)]  # the empty cells
        if not numpy.isfinite(values).all() or (kind != SIGNED and (values < 0).any()):
            return None
    return frame
