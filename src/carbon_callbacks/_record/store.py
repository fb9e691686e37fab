"""Where a run's record goes: its claimed folder, the step log and `run.json`, written in batches; never raising.

The session hands the store one record per logging interval, serialized at once into a bounded buffer, and the
store writes the buffer, then `run.json`, when the flush policy says so:

- records wait in memory at most about `FLUSH_SECONDS`: they are written when the next interval would end more
  than 10 s after the last write. A process killed without warning (SIGKILL, power loss) therefore loses at most
  the last 10 seconds or the last logging interval, whichever is longer;
- and whenever the session asks: a run's start and end, an epoch end, a signal.

A write that fails (a full or read-only disk, a removed folder) warns once and keeps the records in memory, up to
`MAX_BUFFERED`; beyond that the oldest are dropped, and the gap is recorded. The next flush writes what is
waiting. `run.json` carries the run's id, its parent (a run forked or resumed from a checkpoint) and `step_log`:
the records the step log holds, the steps they cover and the gaps, so a short log is never mistaken for the run.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

from carbon_callbacks._record.folder import Claim, reclaim
from carbon_callbacks._record.names import REPORT_FILE, RUN_FILE, STEPS_FILE
from carbon_callbacks._record.schema import strict_json
from carbon_callbacks._record.steplog import StepLog, gaps

log = logging.getLogger(__name__)

#: About the longest records wait in memory before they are written, in s (see the module docstring).
FLUSH_SECONDS = 10.0
#: Records kept in memory while the disk refuses them; beyond this the oldest are dropped (and recorded as a gap).
MAX_BUFFERED = 10_000
#: Gaps listed in `run.json` (`step_log.gaps`), the first ones; their count is always given.
MAX_GAPS_LISTED = 100


def write_json_atomic(path: Path, payload: dict, staging: Path | None = None) -> None:
    """Writes `payload` to `path` so that readers see the old file or the new one, never a mix (a temporary file,
    synced, then renamed over it).

    Args:
        path: the file.
        payload: what it holds.
        staging: the folder of the temporary file, on the same file system; defaults to `path`'s own. Another folder
            keeps it out of sight of whatever copies `path`'s folder meanwhile (a checkpoint being uploaded).

    Raises:
        OSError: when it cannot be written; no temporary file is left behind.
    """
    tmp = (staging or path.parent) / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(strict_json(payload, indent=2, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def write_state(path: Path, state: dict, warn: Callable[[str, str], None]) -> bool:
    """A run's state (`RunSession.state_dict()`) into a checkpoint's folder, staged outside it so that whatever
    copies the checkpoint meanwhile never sees half a file; a missing folder or a failed write warns once (a run
    resumed from that checkpoint then starts its totals anew)."""
    if not path.parent.is_dir():
        warn("checkpoint", f"carbon-callbacks: the checkpoint folder {path.parent} was not found; the checkpoint does "
             "not carry the carbon totals, so a run resumed from it starts them anew.")
        return False
    try:
        write_json_atomic(path, state, staging=path.parent.parent)
    except OSError as err:
        warn("checkpoint-write", f"carbon-callbacks: cannot write {path} ({err}); a run resumed from this checkpoint "
             "starts its carbon totals anew.")
        return False
    return True


class RunStore:
    """One run's files, or nothing (`claim=None`: another rank's run, or a folder that could not be claimed).

    Args:
        claim: the folder this run holds. Defaults to `None`: nothing is written.
        steps: its step log, created or reopened by the caller. Defaults to `None`.
        warn: `(key, message)` callable that warns once per run. Defaults to `None`: log only.
        parent: what this run continues or forks from, for `run.json`. Defaults to `None`.
        flush_seconds: see `FLUSH_SECONDS`. Defaults to `None`: it.
        max_buffered: see `MAX_BUFFERED`. Defaults to `None`: it.
    """

    def __init__(
        self,
        claim: Claim | None = None,
        steps: StepLog | None = None,
        warn: Callable[[str, str], None] | None = None,
        *,
        parent: dict | None = None,
        flush_seconds: float | None = None,
        max_buffered: int | None = None,
    ) -> None:
        self.claim = claim
        self.log = steps if claim is not None else None
        self.run_id = claim.run_id if claim is not None else uuid.uuid4().hex
        self.parent = parent
        self._warn = warn or (lambda key, message: log_warning(message))
        self._flush_seconds = FLUSH_SECONDS if flush_seconds is None else flush_seconds
        self._buffer: deque[tuple[bytes, int, int]] = deque()
        self._max_buffered = MAX_BUFFERED if max_buffered is None else max_buffered
        self.dropped = 0
        self.lost = 0
        self._failing = False
        self._last_flush = time.monotonic()

    @property
    def folder(self) -> Path | None:
        """The run folder, or `None` when this store writes nothing."""
        return self.claim.folder if self.claim is not None else None

    @property
    def waiting(self) -> int:
        """Records in memory, not yet written."""
        return len(self._buffer)

    # ------------------------------------------------------------------------------------------- writing
    def add(self, record: dict, first_step: int, last_step: int) -> None:
        """Keeps one record (covering the run's steps `first_step`..`last_step`) until the next flush."""
        if self.log is None:
            return
        self._buffer.append((self.log.line(record), first_step, last_step))
        if len(self._buffer) > self._max_buffered:
            self._buffer.popleft()
            self.dropped += 1

    def due(self, interval_seconds: float) -> bool:
        """Whether to flush now, at an interval's end: when the next interval, as long as this one, would end more
        than `flush_seconds` after the last write."""
        if self.log is None or not self._buffer:
            return False
        return time.monotonic() - self._last_flush + interval_seconds >= self._flush_seconds

    def flush(self, summary: dict) -> bool:
        """Appends the waiting records, then rewrites `run.json` (`summary` with the record's own fields).

        Returns:
            Whether everything was written (always `True` for a store that writes nothing).
        """
        self._last_flush = time.monotonic()
        if self.claim is None:
            return True
        ok = self._write_steps()
        try:
            write_json_atomic(self.claim.folder / RUN_FILE, self.stamp(summary))
        except OSError as err:
            ok = self._failed(RUN_FILE, err)
        if ok and self._failing:
            self._failing = False
            log.info("carbon-callbacks: the run files are written again to %s", self.claim.folder)
        return ok

    def stamp(self, summary: dict) -> dict:
        """`summary` with the run's id, its parent and what the step log holds."""
        stamped = dict(summary)
        stamped["run_id"] = self.run_id
        stamped["parent"] = self.parent
        if self.log is not None:
            steps = int(summary.get("steps") or 0)
            start = int(self.parent["steps"]) + 1 if self.parent else 1  # a fork's log begins after its parent's
            missing = gaps(self.log.covered, steps, start)
            stamped["step_log"] = {
                "first_step": start,
                "records": self.log.records,
                "steps_covered": sum(max(min(b, steps) - max(a, start) + 1, 0) for a, b in self.log.covered),
                "gaps": missing[:MAX_GAPS_LISTED],
                "gap_count": len(missing),
                "waiting": len(self._buffer),
                "dropped": self.dropped,
                "lost": self.lost,
            }
        return stamped

    def write_report(self, text: str) -> bool:
        """Writes `report.md`; warns (once) instead of raising."""
        if self.claim is None:
            return False
        try:
            (self.claim.folder / REPORT_FILE).write_text(text, encoding="utf-8")
        except OSError as err:
            return self._failed(REPORT_FILE, err)
        return True

    def close(self) -> None:
        """Releases the folder's writer lock (the folder stays the run's)."""
        if self.claim is not None:
            self.claim.release()

    # ------------------------------------------------------------------------------------------- internals
    def _write_steps(self) -> bool:
        if not self._buffer:
            return True
        data = b"".join(line for line, _, _ in self._buffer)
        steps = [(first, last) for _, first, last in self._buffer]
        try:
            try:
                lost = self.log.append(data, steps)
            except FileNotFoundError:
                if self.claim.folder.exists():
                    raise
                self._recreate()
                lost = self.log.append(data, steps)
        except OSError as err:
            return self._failed(STEPS_FILE, err)
        if lost:
            self.lost += lost
            self._warn("step-log-lost", f"carbon-callbacks: {lost} records of {self.log.path} were removed by "
                       "something else during the run; run.json's step_log says which steps the log still covers.")
        self._buffer.clear()
        return True

    def _recreate(self) -> None:
        """Makes a run folder that was removed during the run again, and counts the records lost with it."""
        before = self.log.records
        reclaim(self.claim)
        self.log.reopen()
        self.lost += before
        self._warn("folder-removed", f"carbon-callbacks: the run folder {self.claim.folder} was removed during the "
                   f"run; it was created again, and the {before} records written before are lost (run.json's step_log "
                   "says which steps the log covers; the totals are whole).")

    def _failed(self, name: str, err: OSError) -> bool:
        self._failing = True
        self._warn("write", f"carbon-callbacks: cannot write {name} in {self.claim.folder} ({type(err).__name__}: "
                   f"{err}); the records are kept in memory (up to {self._max_buffered}) and written when it can be. "
                   "Training continues.")
        log.debug("carbon-callbacks: writing %s failed", name, exc_info=err)
        return False


def log_warning(message: str) -> None:
    log.warning("%s", message)
