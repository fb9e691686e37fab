"""The one reader of run folders: reports, `load_run`, the what-if and a resuming run all read through it.

The step log is read as a stream, one line at a time, each value checked against its field's kind
(`schema`). A last line cut short by a crash (no newline) is skipped; any other line that is not a valid record is
skipped and named (file, line, field, why) in `RunFiles.problems`, so one bad line never costs the rest of the run.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._record.names import LEGACY_STEPS_FILE, RUN_FILE, STEPS_FILE
from carbon_callbacks._record.schema import STEP_COLUMNS, TEXT, check_summary, parse_value, value_problem
from carbon_callbacks._warnings import CarbonCallbacksWarning


def json_kind(value: object) -> str:
    """What a parsed JSON value is, in JSON's words ("an array", "a number", ...), for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


@dataclass(frozen=True)
class Line:
    """One line of a step log: its number (1-based), the byte offset where it ends, and the record it holds.

    `record` is `None` for the CSV header (`header`) and for a line that is not a whole, valid record; `problem`
    then says why, and `torn` is true for a last line without its newline (a write cut short).
    """

    number: int
    end: int
    record: dict | None
    problem: str | None = None
    torn: bool = False
    header: bool = False


def steps_path(run_dir: Path) -> Path:
    """The step log of a run folder: `steps.csv`, or the `steps.jsonl` of an older version's run."""
    csv_path, legacy = Path(run_dir) / STEPS_FILE, Path(run_dir) / LEGACY_STEPS_FILE
    return legacy if legacy.exists() and not csv_path.exists() else csv_path


class _Parser:
    """Turns the lines of one step log into records: CSV under its header line, or (older versions) JSON lines."""

    def __init__(self, path: Path, columns: Collection[str] | None) -> None:
        self.legacy = Path(path).suffix == ".jsonl"
        self.columns = columns
        self.names: list[str] | None = None

    def header(self, raw: bytes) -> bool:
        """Takes `raw` as the CSV header if none was read yet; whether it was."""
        if self.legacy or self.names is not None:
            return False
        self.names = _cells(raw.decode("utf-8", "replace"))
        return True

    def record(self, raw: bytes) -> dict:
        """The record of one whole line. Raises `ValueError` saying what is wrong with it."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not UTF-8 text") from None
        if self.legacy:
            return _json_record(text, self.columns)
        return _csv_record(self.names, _cells(text), self.columns)


def scan_lines(path: Path, columns: Collection[str] | None = None) -> Iterator[Line]:
    """The lines of a step log, in order, each parsed and checked (blank lines are skipped). A missing file has none.

    Args:
        path: a `steps.csv` or (older versions) `steps.jsonl`.
        columns: the fields to read; the rest are left out of each record, unchecked. Defaults to `None`: all.
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    parser = _Parser(path, columns)
    with handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            offset += len(raw)
            if not raw.strip():
                continue
            if not raw.endswith(b"\n"):
                yield Line(number, offset, None, "cut short (no newline)", True)
            elif parser.header(raw):
                yield Line(number, offset, None, header=True)
            else:
                try:
                    yield Line(number, offset, parser.record(raw))
                except ValueError as err:
                    yield Line(number, offset, None, str(err))


def sample_records(path: Path, points: int, columns: Collection[str] | None = None) -> list[dict]:
    """About `points` valid records spread evenly over a step log, the last one included, without reading the rest:
    the log is read at evenly spaced offsets (a plot draws no more points than that). A log of fewer lines is read
    whole. Lines that are not valid records are left out.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return []
    if size <= points * 1024:
        return [line.record for line in scan_lines(path, columns) if line.record is not None]
    parser = _Parser(path, columns)
    records, seen = [], set()
    with open(path, "rb") as handle:
        first = handle.readline()
        start = len(first) if parser.header(first) else 0
        end = size - len(_last_line_tail(handle, size))  # the end of the last whole line
        for i in range(points + 1):
            handle.seek(start + (end - start) * i // points)
            if i:
                handle.readline()  # the rest of the line the offset fell in
            at = handle.tell()
            raw = handle.readline()
            if at >= end or at in seen or not raw.endswith(b"\n"):
                continue
            seen.add(at)
            try:
                records.append(parser.record(raw))
            except ValueError:
                continue
        handle.seek(max(end - 65536, start))
        tail = handle.read(end - handle.tell()).splitlines(keepends=True)
        if tail and (end - len(tail[-1])) not in seen:
            try:
                records.append(parser.record(tail[-1]))
            except ValueError:
                pass
    return records


def _last_line_tail(handle, size: int) -> bytes:
    """The bytes after a log's last newline (a torn line, or nothing)."""
    handle.seek(max(size - 65536, 0))
    block = handle.read()
    return block[block.rfind(b"\n") + 1:]


def _cells(text: str) -> list[str]:
    text = text.rstrip("\r\n")
    return text.split(",") if '"' not in text else next(csv.reader([text]))


def _csv_record(names: list[str], cells: list[str], columns: Collection[str] | None) -> dict:
    if len(cells) != len(names):
        raise ValueError(f"has {len(cells)} fields where the header names {len(names)}")
    record = {}
    for name, cell in zip(names, cells):
        if columns is not None and name not in columns:
            continue
        try:
            record[name] = parse_value(STEP_COLUMNS.get(name, TEXT), cell)
        except ValueError as err:
            raise ValueError(f"field {name!r}: {err}") from None
    return record


def _json_record(text: str, columns: Collection[str] | None) -> dict:
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("not valid JSON") from None
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object (a step record), got {json_kind(record)}")
    for name, kind in STEP_COLUMNS.items():
        if (problem := value_problem(kind, record.get(name))) is not None:
            raise ValueError(f"field {name!r}: {problem}")
    return record if columns is None else {k: v for k, v in record.items() if k in columns}


#: In the `RunFiles.problems` that a crash leaves and readers skip silently.
CRASH = "by a crash"


@dataclass
class RunFiles:
    """What a run folder holds: the summary (`None` without `run.json`), the step records, and the lines skipped."""

    summary: dict | None
    records: list[dict]
    problems: list[str] = field(default_factory=list)


def read_summary(run_dir: Path) -> dict | None:
    """`run.json` as a dict, or `None` when it is missing.

    Raises:
        InvalidInputError: one line naming the file (and the field), when it is not a JSON object, nests too
            deeply, or holds a field of the wrong kind (a string for a number, NaN, a negative energy).
    """
    path = Path(run_dir) / RUN_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not UTF-8 text.") from None
    try:
        summary = json.loads(text)
    except RecursionError:
        raise InvalidInputError(f"{path}: nested too deeply; not a run summary.") from None
    except ValueError as err:
        raise InvalidInputError(f"{path}: not valid JSON ({err}).") from None
    if not isinstance(summary, dict):
        raise InvalidInputError(f"{path}: expected a JSON object (the run summary), got {json_kind(summary)}.")
    return check_summary(summary, str(path))


def read_state(path: Path) -> dict | str | None:
    """A checkpoint's saved run state (a JSON file): the dict, `None` when the file is missing, or a string saying
    why it cannot be read (`RunSession.load_state_dict` then starts a new, labelled run)."""
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as err:
        return f"{path} could not be read ({type(err).__name__}: {err})"
    return state if isinstance(state, dict) else f"{path} holds {json_kind(state)}, not a run state"


def read_run_files(run_dir: str | os.PathLike, columns: Collection[str] | None = None) -> RunFiles:
    """Reads a run folder: `run.json` and every valid record of its step log, naming the lines it skips.

    Args:
        run_dir: the run folder.
        columns: the step records' fields to read. Defaults to `None`: all.

    Raises:
        InvalidInputError: naming the file and field, when `run.json` cannot be used (see `read_summary`).
    """
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    path = steps_path(run_dir)
    # A run left `running` may have been killed after appending to the step log and before rewriting run.json:
    # the records past run.json's steps are left out, so that the records add up to run.json.
    last_step = summary.get("steps") if summary is not None and summary.get("status") == "running" else None
    if last_step is not None and columns is not None:
        columns = {*columns, "cum_steps"}
    records, problems, ahead = [], [], 0
    for line in scan_lines(path, columns):
        if line.record is not None:
            if last_step is not None and (line.record.get("cum_steps") or 0) > last_step:
                ahead += 1
            else:
                records.append(line.record)
        elif line.torn:
            problems.append(f"{path}: line {line.number} was cut short {CRASH} mid-write (skipped)")
        elif not line.header:
            problems.append(f"{path}: line {line.number}: {line.problem} (skipped)")
    if ahead:
        problems.append(f"{path}: {ahead} records past run.json's last update, stopped {CRASH} between the two "
                        "writes (skipped: the records add up to run.json)")
    return RunFiles(summary, records, problems)


def read_run(run_dir: str | os.PathLike) -> tuple[dict | None, list[dict]]:
    """Reads a run directory: its summary (`None` if `run.json` is missing) and its step records.

    A last line cut short by a crash is skipped silently; any other line that is not a step record is skipped
    with a warning naming the file and line.

    Raises:
        InvalidInputError: (a `ValueError`) naming the file, when `run.json` is not a JSON object.
    """
    files = read_run_files(run_dir)
    for problem in files.problems:
        if CRASH not in problem:
            warnings.warn(f"carbon-callbacks: {problem}", CarbonCallbacksWarning, stacklevel=2)
    return files.summary, files.records
