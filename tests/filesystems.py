"""A real, small file system for the tests of full and read-only disks: a tmpfs mounted under the test's folder.

Mounting needs root (CI runs as root); elsewhere the tests that need it are skipped, and the same faults are faked
at the `os` boundary by the tests beside them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest


class SmallFilesystem:
    """A tmpfs of `size_kb` at `path` that a test can fill, free, and make read-only or writable again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / ".filler"
        self._frozen = False

    @classmethod
    @contextlib.contextmanager
    def mounted(cls, path: Path, size_kb: int = 64):
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"a real small file system needs mount (root): {done.stderr.strip()}")
        fs = cls(path)
        try:
            yield fs
        finally:
            if fs._frozen:
                fs.writable()
            subprocess.run(["umount", "-l", str(path)], check=False)

    def fill(self) -> None:
        """Writes a filler file until the file system is full (ENOSPC)."""
        with open(self._filler, "ab", buffering=0) as handle:
            for chunk in (4096, 512, 64, 1):
                try:
                    while True:
                        handle.write(b"\0" * chunk)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise

    def free(self) -> None:
        """Removes the filler: the disk has room again."""
        os.unlink(self._filler)

    def read_only(self) -> None:
        """Puts a read-only view over the file system (a bind mount): every new write fails with EROFS, while the
        files a process already holds open stay as they are, as on a disk remounted read-only after an error."""
        subprocess.run(["mount", "--bind", str(self.path), str(self.path)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(self.path)], check=True)
        self._frozen = True

    def writable(self) -> None:
        subprocess.run(["umount", str(self.path)], check=True)
        self._frozen = False
