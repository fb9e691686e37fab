"""The one reader of run folders: reports, `load_run`, the what-if and a resuming run all read through it.

The step log is read as a stream, one line at a time. A last line cut short by a crash (no newline) is skipped; any
other line that is not a JSON object is skipped and named (file, line, why) in `RunFiles.problems`, so one bad line
never costs the rest of the run.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._record.names import RUN_FILE, STEPS_FILE
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

    `record` is `None` for a line that is not a whole JSON object; `problem` then says why, and `torn` is true for
    a last line without its newline (a write cut short).
    """

    number: int
    end: int
    record: dict | None
    problem: str | None = None
    torn: bool = False


def scan_lines(path: Path) -> Iterator[Line]:
    """The lines of a step log, in order, each parsed (blank lines are skipped). A missing file has none."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            offset += len(raw)
            torn = not raw.endswith(b"\n")
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, ValueError, RecursionError):
                yield Line(number, offset, None, "not valid JSON", torn)
                continue
            if torn:
                yield Line(number, offset, None, "cut short (no newline)", True)
            elif not isinstance(record, dict):
                yield Line(number, offset, None, f"not a JSON object (a step record), got {json_kind(record)}")
            else:
                yield Line(number, offset, record)


@dataclass
class RunFiles:
    """What a run folder holds: the summary (`None` without `run.json`), the step records, and the lines skipped."""

    summary: dict | None
    records: list[dict]
    problems: list[str] = field(default_factory=list)


def read_summary(run_dir: Path) -> dict | None:
    """`run.json` as a dict, or `None` when it is missing.

    Raises:
        InvalidInputError: naming the file, when it is not a JSON object.
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
    except (ValueError, RecursionError) as err:
        raise InvalidInputError(f"{path}: not valid JSON ({err}).") from None
    if not isinstance(summary, dict):
        raise InvalidInputError(f"{path}: expected a JSON object (the run summary), got {json_kind(summary)}.")
    return summary


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


def read_run_files(run_dir: str | os.PathLike) -> RunFiles:
    """Reads a run folder: `run.json` and every whole record of `steps.jsonl`, naming the lines it skips.

    Raises:
        InvalidInputError: naming the file, when `run.json` is not a JSON object.
    """
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    steps_path = run_dir / STEPS_FILE
    records, problems = [], []
    for line in scan_lines(steps_path):
        if line.record is not None:
            records.append(line.record)
        elif line.torn:
            problems.append(f"{steps_path}: line {line.number} was cut short by a crash mid-write (skipped)")
        else:
            problems.append(f"{steps_path}: line {line.number} is {line.problem} (skipped)")
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
        if "cut short by a crash" not in problem:
            warnings.warn(f"carbon-callbacks: {problem}", CarbonCallbacksWarning, stacklevel=2)
    return files.summary, files.records
