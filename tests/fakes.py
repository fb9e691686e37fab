"""Every fake of the test suite, at the hardware's boundary: a clock, NVML's functions, a RAPL powercap tree on disk,
a /proc/cpuinfo, and meters that replay fixed energy or fail like an unplugged sensor.

Imported as `from fakes import ...` by tests/ and integrations/ alike (pytest puts tests/ on the path). `pynvml`
is imported only when an NVML fake is used, so the unit tests import no optional package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import threading
import types
from unittest import mock

from carbon_callbacks.meters import MeterBase, ReplayMeter

MAX_UJ = 262143328850


class FakeClock:
    """A clock the test moves by hand, in s."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeGpu:
    """One board as NVML reports it."""

    def __init__(self, uuid, *, energy_mj=0, power_mw=100_000, counter=True, limit_mw=400_000, name="NVIDIA H100"):
        self.uuid, self.energy_mj, self.power_mw = uuid, energy_mj, power_mw
        self.counter, self.limit_mw, self.name = counter, limit_mw, name
        self.error = None  # an NVML error code every call raises from now on


class FakeNvml:
    """Patches the pynvml functions the meter calls, each with autospec, over a list of fake GPUs."""

    def __init__(self, gpus, migs=None, init_error=None):
        self.gpus, self.migs, self.init_error = gpus, migs or {}, init_error
        self.by_handle = {f"handle-{i}": g for i, g in enumerate(gpus)}
        self.shutdowns = 0

    def _gpu(self, handle):
        import pynvml

        gpu = self.by_handle[handle]
        if gpu.error is not None:
            raise pynvml.NVMLError(gpu.error)
        return gpu

    def _init(self):
        import pynvml

        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def _shutdown(self):
        self.shutdowns += 1

    def _by_uuid(self, uuid):
        import pynvml

        if uuid in self.migs:
            return uuid
        for handle, gpu in self.by_handle.items():
            if gpu.uuid == uuid:
                return handle
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def _energy(self, handle):
        import pynvml

        gpu = self._gpu(handle)
        if not gpu.counter:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.energy_mj

    @contextlib.contextmanager
    def patched(self):
        import pynvml

        fakes = {
            "nvmlInit": self._init,
            "nvmlShutdown": self._shutdown,
            "nvmlDeviceGetCount": lambda: len(self.gpus),
            "nvmlDeviceGetHandleByIndex": lambda i: f"handle-{i}",
            "nvmlDeviceGetHandleByUUID": self._by_uuid,
            "nvmlDeviceGetUUID": lambda h: self.by_handle[h].uuid,
            "nvmlDeviceGetName": lambda h: self.by_handle[h].name,
            "nvmlDeviceGetTotalEnergyConsumption": self._energy,
            "nvmlDeviceGetPowerUsage": lambda h: self._gpu(h).power_mw,
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: self._gpu(h).limit_mw,
            "nvmlDeviceGetDeviceHandleFromMigDeviceHandle": lambda m: self.migs[m][0],
            "nvmlDeviceGetAttributes": lambda m: types.SimpleNamespace(gpuInstanceSliceCount=self.migs[m][1]),
            "nvmlDeviceGetMaxMigDeviceCount": lambda h: 7,
        }
        with contextlib.ExitStack() as stack:
            for name, fake in fakes.items():
                stack.enter_context(mock.patch.object(pynvml, name, autospec=True, side_effect=fake))
            yield self


def zone(root, name: str, label: str, energy_uj: int, max_uj: int = MAX_UJ) -> pathlib.Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "name").write_text(label + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def set_uj(root, name: str, energy_uj: int) -> None:
    (root / name / "energy_uj").write_text(f"{energy_uj}\n")


def two_socket_powercap(root: pathlib.Path) -> pathlib.Path:
    """The flat layout of /sys/class/powercap under `root`: packages, their sub-zones, and zones to skip."""
    root = root / "powercap"
    (root / "intel-rapl").mkdir(parents=True)  # the control type, no counter
    zone(root, "intel-rapl:0", "package-0", 1_000_000)
    zone(root, "intel-rapl:0:0", "core", 500_000)
    zone(root, "intel-rapl:0:1", "dram", 2_000_000)
    zone(root, "intel-rapl:1", "package-1", 3_000_000)
    zone(root, "intel-rapl:1:0", "dram", 4_000_000)
    zone(root, "intel-rapl:2", "psys", 9_000_000)
    zone(root, "intel-rapl-mmio:0", "package-0", 7_000_000)
    return root


#: A /proc/cpuinfo of two sockets with two logical CPUs each.
CPUINFO = """processor\t: 0
model name\t: Test CPU 9000 64-Core Processor
physical id\t: 0

processor\t: 1
model name\t: Test CPU 9000 64-Core Processor
physical id\t: 0

processor\t: 2
model name\t: Test CPU 9000 64-Core Processor
physical id\t: 1

processor\t: 3
model name\t: Test CPU 9000 64-Core Processor
physical id\t: 1
"""


class FixedMeter(ReplayMeter):
    """A fake sensor: every window holds `joules` of GPU energy over `seconds`, labelled measured.

    With `fail_after`, every window after the first `fail_after` raises, as an unplugged sensor's driver would.
    """

    def __init__(self, joules: float = 90.0, seconds: float = 3.0, fail_after: int | None = None) -> None:
        super().__init__(energy_j=joules, seconds=seconds, component="gpu", method="measured:nvml")
        self.fail_after = fail_after

    def end_window(self, key):
        measurement = super().end_window(key)
        if self.fail_after is not None and self.windows_ended > self.fail_after:
            raise OSError("sensor unplugged")
        return measurement


class BadReadingMeter(FixedMeter):
    """A sensor that hands back a bad number: windows listed in `bad` (1-based) read `value` joules instead."""

    def __init__(self, value: float, bad, joules: float = 90.0, seconds: float = 3.0) -> None:
        super().__init__(joules=joules, seconds=seconds)
        self.value, self.bad = value, set(bad)

    def end_window(self, key):
        measurement = super().end_window(key)
        if self.windows_ended in self.bad:
            return dataclasses.replace(measurement, energy_j={"gpu": self.value})
        return measurement


class CounterSensor(MeterBase):
    """A GPU energy counter the test drives: `joules` and the clock `now` move by hand; a read of a window listed in
    `block` (1-based, counting window ends) waits for `release` (or `block_s`), as a hung driver call would."""

    def __init__(self, block=(), block_s: float = 30.0) -> None:
        self.joules, self.now = 0.0, 0.0
        super().__init__(clock=lambda: self.now)
        self.block, self.block_s = set(block), block_s
        self.release = threading.Event()
        self.ends = 0

    def _read(self):
        return {"gpu:0": self.joules}

    def _component(self, device):
        return "gpu"

    def _method(self, device):
        return "measured:nvml"

    def end_window(self, key):
        self.ends += 1
        if self.ends in self.block:
            self.release.wait(self.block_s)
        return super().end_window(key)


class LivePowercap:
    """A host's RAPL powercap tree on disk whose counters advance at a known power, as real ones do: a thread
    rewrites each zone's `energy_uj` as watts x seconds since `start()`, every `period` s. One per simulated host;
    point a process at it with `CARBON_CALLBACKS_POWERCAP`.

    Args:
        root: the folder to make the tree in.
        package_w: the socket's package power, in W. Defaults to `40.0`.
        dram_w: its DRAM power, in W. Defaults to `10.0`.
        period: seconds between rewrites. Defaults to `0.005`.
    """

    def __init__(self, root: pathlib.Path, package_w: float = 40.0, dram_w: float = 10.0, period: float = 0.005):
        self.root = root
        self.watts = {"intel-rapl:0": package_w, "intel-rapl:0:0": dram_w}
        zone(root, "intel-rapl:0", "package-0", 0)
        zone(root, "intel-rapl:0:0", "dram", 0)
        self.period, self._stop, self._thread = period, threading.Event(), None

    @property
    def total_w(self) -> float:
        return sum(self.watts.values())

    def _run(self, start: float) -> None:
        import os
        import time

        # In place and of one width, as sysfs files are (the meter keeps them open and reads with pread).
        fds = {name: os.open(self.root / name / "energy_uj", os.O_WRONLY) for name in self.watts}
        try:
            while not self._stop.wait(self.period):
                seconds = time.monotonic() - start
                for name, watts in self.watts.items():
                    os.pwrite(fds[name], f"{int(watts * seconds * 1e6):020d}\n".encode(), 0)
        finally:
            for fd in fds.values():
                os.close(fd)

    def __enter__(self) -> LivePowercap:
        import time

        self._thread = threading.Thread(target=self._run, args=(time.monotonic(),), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
