"""A run directory on disk: `steps.jsonl` (one record per step, appended in batches) and `run.json` (the summary).

`run.json` is replaced atomically (write a temporary file, then rename) so a reader never sees half a file, and it
is rewritten right after each batch of steps is appended, so after a crash it agrees with the step log up to the
last flushed batch.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError

RUN_FILE = "run.json"
STEPS_FILE = "steps.jsonl"
#: The report card in Markdown (`carbon-callbacks report RUN_DIR --markdown`), written at a run's end.
REPORT_FILE = "report.md"


def new_run_dir(parent: Path) -> Path:
    """A folder for a new run under `parent`: its UTC start time, with a suffix when two runs start in one second."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = parent / stamp
    suffix = 1
    while path.exists():
        path = parent / f"{stamp}-{suffix}"
        suffix += 1
    return path


def write_json_atomic(path: Path, payload: dict) -> None:
    """Writes `payload` to `path` so that readers see either the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def append_steps(path: Path, records: list[dict]) -> None:
    """Appends step records, one JSON object per line."""
    if not records:
        return
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))


def _json_kind(value: object) -> str:
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


def read_run(run_dir: str | os.PathLike) -> tuple[dict | None, list[dict]]:
    """Reads a run directory: its summary (`None` if `run.json` is missing) and its step records.

    A last line cut short by a crash is skipped.

    Raises:
        InvalidInputError: (a `ValueError`) naming the file, when `run.json` is not a JSON object or a line of
            `steps.jsonl` other than a cut-short last one is not.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / RUN_FILE
    summary = None
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise InvalidInputError(f"{summary_path}: not valid JSON ({err}).") from None
        if not isinstance(summary, dict):
            raise InvalidInputError(
                f"{summary_path}: expected a JSON object (the run summary), got {_json_kind(summary)}."
            )
    records: list[dict] = []
    steps_path = run_dir / STEPS_FILE
    if steps_path.exists():
        lines = steps_path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break  # cut short by a crash mid-write
                raise InvalidInputError(f"{steps_path}: line {number} is not valid JSON.") from None
            if not isinstance(record, dict):
                raise InvalidInputError(
                    f"{steps_path}: line {number} is not a JSON object (a step record), got {_json_kind(record)}."
                )
            records.append(record)
    return summary, records
