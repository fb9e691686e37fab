"""The step log (`steps.csv`): an append-only log that holds whole records only.

Appending is not atomic: a write can stop part-way (a full disk) and leave part of a record. The log keeps the size
of its whole records. An append that fails is cut back to that size before the error goes up, and an append that
finds more bytes than that (a cut that itself failed) trims them first; so nothing is written twice and the records
not written stay with the caller, to be written when the disk returns. The log also keeps which of the run's steps
its records cover (`covered`), so the run can say where it is short.

Each record carries `cum_steps`, the run's step count at its end (logs of older versions: the running sum of
`num_steps`), so a resume can trim what came after its checkpoint. A run of an older version, resumed, goes on
writing its `steps.jsonl` in that format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from carbon_callbacks._record.reader import scan_lines
from carbon_callbacks._record.schema import HEADER, step_line, strict_json


def record_end(record: dict, previous_end: int) -> int:
    """The run's step count at the end of a record: its `cum_steps`, else the previous end plus its `num_steps`."""
    cum = record.get("cum_steps")
    if isinstance(cum, int) and not isinstance(cum, bool) and cum >= 0:
        return cum
    steps = record.get("num_steps", 1)
    return previous_end + (steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else 1)


def add_range(ranges: list[list[int]], first: int, last: int) -> None:
    """Adds the steps `first`..`last` to sorted, disjoint ranges, merging where they touch (appends are in order)."""
    if last < first:
        return
    if ranges and first <= ranges[-1][1] + 1:
        ranges[-1][1] = max(ranges[-1][1], last)
    else:
        ranges.append([first, last])


def gaps(covered: list[list[int]], steps: int, start: int = 1) -> list[list[int]]:
    """The ranges of steps `start..steps` that `covered` leaves out."""
    out = []
    for first, last in covered:
        if first > start:
            out.append([start, min(first - 1, steps)])
        start = max(start, last + 1)
        if start > steps:
            break
    if start <= steps:
        out.append([start, steps])
    return [g for g in out if g[0] <= g[1]]


@dataclass(frozen=True)
class Trimmed:
    """What reopening a log cut off: records past the checkpoint (work lost to the crash) and a torn tail."""

    records: int = 0
    steps: int = 0
    seconds: float = 0.0
    energy_kwh: float = 0.0
    torn_tail: bool = False


#: Columns a resume reads to trim the log (the rest are not parsed).
_TRIM_COLUMNS = ("num_steps", "cum_steps", "seconds", "step_energy_kwh")


class StepLog:
    """The step log at `path`: whole records only, and which steps they cover.

    Args:
        path: the `steps.csv` file (or an older version's `steps.jsonl`, continued in its format).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.legacy = path.suffix == ".jsonl"
        self.size = 0  # bytes of the header and the whole records in the file
        self.records = 0
        self.covered: list[list[int]] = []

    def line(self, record: dict) -> bytes:
        """One record as a line of this log."""
        if self.legacy:
            return (strict_json(record, separators=(",", ":")) + "\n").encode()
        return step_line(record).encode()

    def create(self) -> None:
        """Starts an empty log (a new run): the CSV header alone.

        Raises:
            OSError: when the file cannot be written.
        """
        header = b"" if self.legacy else HEADER.encode()
        with open(self.path, "wb") as handle:
            handle.write(header)
        self.size, self.records, self.covered = len(header), 0, []

    def reopen(self, keep_steps: int | None = None) -> Trimmed:
        """Continues the log of a run: trims a torn last line and, with `keep_steps`, every record that ends past
        that step (steps run after the checkpoint a run resumes from), and learns what the rest covers.

        Returns:
            What was trimmed.

        Raises:
            OSError: when the file cannot be read or cut.
        """
        cut, end, torn, header = 0, 0, False, self.legacy
        covered: list[list[int]] = []
        kept = trimmed = trimmed_steps = 0
        seconds = energy = 0.0
        for line in scan_lines(self.path, _TRIM_COLUMNS):
            if line.torn:
                torn = True
                break
            if line.header:
                cut, header = line.end, True
                continue
            if line.record is None:  # a bad line in the middle is kept, and named by the readers
                cut = line.end if not trimmed else cut
                continue
            record = line.record
            first, end = end + 1, record_end(record, end)
            if keep_steps is not None and end > keep_steps:
                trimmed += 1
                trimmed_steps += end - first + 1
                seconds += number(record.get("seconds"))
                energy += number(record.get("step_energy_kwh"))
                continue
            if trimmed:  # a record back within the checkpoint after one past it: the log is not in order
                continue
            kept += 1
            add_range(covered, first, end)
            cut = line.end
        if not header:  # a CSV log that lost its header (or never had one): it starts again
            self.create()
            return Trimmed(trimmed, trimmed_steps, seconds, energy, torn)
        if self.path.exists() and self.path.stat().st_size != cut:
            os.truncate(self.path, cut)
        self.size, self.records, self.covered = cut, kept, covered
        return Trimmed(trimmed, trimmed_steps, seconds, energy, torn)

    def append(self, data: bytes, steps: list[tuple[int, int]]) -> int:
        """Appends whole records (`data`, each line ending in a newline) covering the step ranges `steps`.

        Returns:
            The records that were in the log and are gone (something else cut or removed the file since the last
            append), so the caller can say so; usually 0.

        Raises:
            OSError: when the write fails (a full or read-only disk, a removed folder); the file is cut back to its
                whole records first, where it can be.
        """
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        lost = 0
        try:
            size = os.fstat(fd).st_size
            if size < self.size:  # cut or replaced by something else: learn what is left
                before = self.records
                os.close(fd)
                fd = -1
                self.reopen()
                lost = max(before - self.records, 0)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            elif size > self.size:  # a torn tail our own failed append could not cut
                os.ftruncate(fd, self.size)
            done = 0
            try:
                while done < len(data):
                    done += os.pwrite(fd, data[done:], self.size + done)
                os.fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, self.size)
                except OSError:
                    pass  # cut at the next append
                raise
        finally:
            if fd >= 0:
                os.close(fd)
        self.size += len(data)
        self.records += data.count(b"\n")
        for first, last in steps:
            add_range(self.covered, first, last)
        return lost


def number(value: object) -> float:
    """A record's number, or 0 where it holds none."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
