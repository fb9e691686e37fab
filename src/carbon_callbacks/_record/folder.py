"""One run, one folder: claiming a run folder is a single atomic step, so two jobs started together never share.

A new timestamped folder is created with `os.mkdir` (no `exist_ok`): of two processes, one gets it and the other
tries the next name. A folder the user or the framework named is claimed by creating its claim file with
`O_CREAT | O_EXCL`; a folder whose claim file (or, from older versions, `run.json`) exists holds another run. While
a process writes a run it holds an advisory lock on the claim file (`fcntl.flock`, released by the kernel when the
process dies, however it dies), so a resume can tell a folder whose writer is gone, which it may continue, from one
that another process is writing, which it must leave alone.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from carbon_callbacks._record.names import CLAIM_FILE, RUN_FILE

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the O_EXCL claim still holds; only the writer lock is missing
    fcntl = None


@dataclass
class Claim:
    """A run folder this process holds: its path and the run's id, with the claim file locked until `release`."""

    folder: Path
    run_id: str
    _fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        """Unlocks the claim file (the folder stays the run's). Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases its lock


def _locked(fd: int) -> bool:
    """Takes the writer lock on an open claim file without waiting; `False` when another process holds it."""
    if fcntl is None:  # pragma: no cover - no advisory locks on this platform
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks: the O_EXCL claim still holds
        return True
    return True


def claim_new(folder: Path) -> Claim | None:
    """Claims `folder` for a new run, creating it if needed.

    Returns:
        The claim, or `None` when the folder already holds a run (or another process claimed it first).

    Raises:
        OSError: when the folder cannot be created or written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / RUN_FILE).exists():  # a run written by a version without claim files
        return None
    try:
        fd = os.open(folder / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    except FileExistsError:
        return None
    run_id = uuid.uuid4().hex
    try:
        os.write(fd, run_id.encode())
    except OSError:
        os.close(fd)
        raise
    _locked(fd)
    return Claim(folder.resolve(), run_id, fd)


def claim_fresh(parent: Path) -> Claim:
    """A new folder under `parent` named after the UTC time, `-1`, `-2`, ... when taken, created with an exclusive
    `mkdir`, and claimed.

    Raises:
        OSError: when `parent` cannot be created or written.
    """
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    parent.mkdir(parents=True, exist_ok=True)
    suffix = 0
    while True:
        path = parent / (stamp if suffix == 0 else f"{stamp}-{suffix}")
        suffix += 1
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        claim = claim_new(path)
        if claim is not None:
            return claim


def claim_for_new_run(folder: Path) -> tuple[Claim, bool]:
    """`folder` if it holds no run, else a fresh folder under it: the claim, and whether it is a subfolder."""
    claim = claim_new(folder)
    if claim is not None:
        return claim, False
    return claim_fresh(folder), True


def claim_existing(folder: Path) -> Claim | None:
    """Takes over the run in `folder` to continue it (its claim file is created for a run of an older version).

    Returns:
        The claim with the run's id, or `None` when another live process is writing the folder.

    Raises:
        OSError: when the folder cannot be opened for writing.
    """
    fd = os.open(folder / CLAIM_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    if not _locked(fd):
        os.close(fd)
        return None
    try:
        run_id = os.read(fd, 256).decode("ascii", "replace").strip()
        if not run_id:
            run_id = uuid.uuid4().hex
            os.write(fd, run_id.encode())
    except OSError:
        os.close(fd)
        raise
    return Claim(folder.resolve(), run_id, fd)


def reclaim(claim: Claim) -> None:
    """Recreates a claimed folder that was removed while its run was writing it, with the same run id.

    Raises:
        OSError: when it cannot be created.
    """
    claim.release()
    claim.folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(claim.folder / CLAIM_FILE, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    try:
        os.write(fd, claim.run_id.encode())
    except OSError:
        os.close(fd)
        raise
    _locked(fd)
    claim._fd = fd


def safe_name(name: object) -> str:
    """`name` as one folder name that stays where it is put: path separators, `..` and characters outside
    letters, digits, `.`, `_` and `-` become `_` (a logger's name, version or run id can hold any of them)."""
    text = re.sub(r"[^A-Za-z0-9._-]", "_", str(name))
    text = re.sub(r"\.{2,}", "_", text)
    return text if text.strip("._") else "_"


def is_within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or inside it (both resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents
