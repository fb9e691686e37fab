"""RAPL through the Linux powercap sysfs: package and DRAM energy of every socket, with counter wrap-around.

Each socket is a zone `intel-rapl:<socket>` (name `package-<socket>`) with sub-zones `intel-rapl:<socket>:<n>`
(names `core`, `uncore`, `dram`). The package zone already includes `core` and `uncore`, so this meter reads the
package and DRAM zones only; `psys` (the whole platform) is skipped to avoid counting twice. AMD processors expose
the same `intel-rapl` names (package only). See https://www.kernel.org/doc/html/latest/power/powercap/powercap.html.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from carbon_callbacks._errors import check_number
from carbon_callbacks.meters._base import CounterMeter, SensorUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "/sys/class/powercap"
#: Names another powercap directory for the meters `create_meter` builds (sysfs mounted elsewhere; a test's tree).
POWERCAP_ENV = "CARBON_CALLBACKS_POWERCAP"
_ZONE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")

#: What to say when the counters exist but are root-only (the default since the PLATYPUS side channel,
#: CVE-2020-8694: https://platypusattack.com/ and https://nvd.nist.gov/vuln/detail/CVE-2020-8694).
PERMISSION_FIX = (
    "RAPL energy counters under {root} are readable by root only (since CVE-2020-8694). To measure CPU and DRAM "
    "energy, make them readable, e.g. `sudo chmod a+r {root}/intel-rapl:*/energy_uj "
    "{root}/intel-rapl:*/intel-rapl:*/energy_uj` (again after each reboot), or pass rapl=False to the callback, "
    "track(...) or create_meter (CLI: --no-rapl) to use the modeled CPU estimate without this warning."
)


class RaplMeter(CounterMeter):
    """CPU package and DRAM energy from RAPL counters (`measured:rapl`).

    Args:
        root: the powercap directory. Defaults to `"/sys/class/powercap"` (tests pass a tree on disk).
        poll_s: read every counter this often in a background thread so that no wrap-around is missed between
            window edges far apart; `None` or 0 reads at window edges only. Defaults to `30.0` (one read costs
            tens of microseconds).
        clock: the clock windows are timed with, in s. Defaults to `time.perf_counter`.

    Raises:
        SensorUnavailableError: when there is no RAPL zone under `root`, or its counters cannot be read (the
            message names the fix).

    Notes:
        Counters are microjoules that wrap around at `max_energy_range_uj`; a decrease between two reads is taken
        as one wrap. Two wraps between reads cannot be told apart, hence the poll: a 262 kJ range (a common
        value) wraps after about 20 minutes at 200 W, far above a 30 s poll. RAPL updates about every
        millisecond, so short windows need no correction. A read that fails mid-run (permission revoked, zone
        gone) switches that domain to its average power so far (`modeled:last-avg-power`), with one warning.
    """

    reads_may_block = False  # clock and counter-file reads only

    def __init__(
        self,
        root: str | os.PathLike = DEFAULT_ROOT,
        *,
        poll_s: float | None = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(clock=clock)
        self.root = Path(root)
        self._files: dict[str, Path] = {}
        self._fds: dict[str, int] = {}
        self._max_uj: dict[str, int] = {}
        self._last_uj: dict[str, int] = {}
        self._total_uj: dict[str, int] = {}
        self._lock = threading.Lock()
        self._discover()
        self.notes = [f"{d}: {self._files[d].parent} (measured:rapl)" for d in self._files]
        logger.info("RAPL meter: %s", ", ".join(self._files))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if poll_s:
            self._poll_s = check_number("poll_s", poll_s, positive=True)
            self._thread = threading.Thread(target=self._poll, name="carbon-callbacks-rapl", daemon=True)
            self._thread.start()

    def _discover(self) -> None:
        try:
            entries = sorted(os.listdir(self.root))
        except OSError as err:
            raise SensorUnavailableError(f"No RAPL powercap directory at {self.root} ({err.strerror}).") from None
        zones = []
        for entry in entries:
            match = _ZONE.match(entry)
            if not match:
                continue
            try:
                name = (self.root / entry / "name").read_text().strip()
            except OSError:
                continue
            socket = match.group(1)
            if match.group(2) is None and name.startswith("package"):
                zones.append((f"cpu:{name}", "cpu", entry))
            elif match.group(2) is not None and name == "dram":
                zones.append((f"dram:package-{socket}", "dram", entry))
        if not zones:
            raise SensorUnavailableError(f"No RAPL package zone under {self.root}.")
        denied = []
        for device, component, entry in zones:
            path = self.root / entry / "energy_uj"
            try:
                raw = int(path.read_text())
                max_uj = int((self.root / entry / "max_energy_range_uj").read_text())
                fd = os.open(path, os.O_RDONLY)
            except PermissionError:
                denied.append(str(path))
                continue
            except (OSError, ValueError) as err:
                logger.info("RAPL zone %s skipped: %s", entry, err)
                continue
            self._files[device] = path
            self._fds[device] = fd  # kept open: one pread per edge costs microseconds, an open() tens of them
            self._max_uj[device] = max_uj
            self._last_uj[device] = raw
            self._total_uj[device] = 0
            self._devices[device] = component
            self._labels[device] = "measured:rapl"
        if denied and not self._files:
            raise SensorUnavailableError(PERMISSION_FIX.format(root=self.root))
        if denied:
            self._warn("denied", f"Some RAPL counters are unreadable ({', '.join(denied)}). "
                                 + PERMISSION_FIX.format(root=self.root))
        if not self._files:
            raise SensorUnavailableError(f"No readable RAPL counter under {self.root}.")

    def _read_device(self, device: str) -> float:
        raw = int(os.pread(self._fds[device], 32, 0))
        delta = raw - self._last_uj[device]
        if delta < 0:  # wrapped around once
            delta += self._max_uj[device]
        self._last_uj[device] = raw
        self._total_uj[device] += delta
        return self._total_uj[device] / 1e6

    def _read(self) -> dict[str, float]:
        with self._lock:  # the poll thread reads too
            return super()._read()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_s):
            self._read()

    def close(self) -> None:
        """Stops the poll thread. Safe to call twice."""
        super().close()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
