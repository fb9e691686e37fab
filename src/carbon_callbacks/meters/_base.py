"""One interface for every energy meter: open a window, close it, get joules per component and how they were obtained.

`Meter` is the protocol (what the run session calls); `MeterBase` the one implementation base the bundled meters
share. Windows are keyed (Zeus's `begin_window` / `end_window`), so several can be open at once (a whole run and
the current logging interval). Meters never raise into a training loop from a sensor failure: a meter whose
sensor fails warns once, falls back to a labelled estimate for that device, and says so in
`Measurement.warnings`. This package depends on nothing of the run session.
"""

from __future__ import annotations

import abc
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from carbon_callbacks._errors import CarbonCallbacksError, InvalidInputError
from carbon_callbacks._warnings import warn_once

#: Energy components a measurement may carry. `host` is an accelerator's modeled share of the host (CPU, memory,
#: network, fans), as the paper's "system power" includes it.
COMPONENTS = ("gpu", "tpu", "cpu", "dram", "host")
_METHOD = re.compile(r"^(measured|modeled):\S+$|^given$")


def check_method(field: str, method: str) -> str:
    """`method` if it is a method label (`measured:<sensor>`, `modeled:<assumption>`, `given`), else an error."""
    if not isinstance(method, str) or not _METHOD.match(method):
        raise InvalidInputError(
            f"{field} must be 'measured:<sensor>', 'modeled:<assumption>' or 'given', got {method!r}."
        )
    return method


class SensorUnavailableError(CarbonCallbacksError):
    """A sensor that cannot be used on this machine (no driver, no device, no permission); the message says why."""


def join_methods(*labels: str) -> str:
    """Joins method labels with `+`, each once, `"given"` last, so the result still reads `measured:...` or
    `modeled:...`."""
    parts = {part for label in labels for part in label.split("+")}
    return "+".join(sorted(parts, key=lambda part: (part == "given", part)))


@dataclass(frozen=True)
class Measurement:
    """Energy drawn during one window.

    Attributes:
        seconds: the window's wall-clock length, in s.
        energy_j: energy by component (`"gpu"`, `"tpu"`, `"cpu"`, `"dram"`, `"host"`), in J. A component that is
            absent was not measured (never read as 0).
        methods: how each component was obtained: `"measured:nvml"`, `"measured:rapl"`, `"modeled:<assumption>"`
            or `"given"`. A component whose devices used several methods gets them joined with `+`.
        devices: energy by device, in J (e.g. `{"gpu:0": 12.0, "cpu:package-0": 30.0}`), for reports.
        warnings: anything the user should know about this window (a sensor that failed, a short window).
    """

    seconds: float
    energy_j: dict[str, float]
    methods: dict[str, str]
    devices: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def total_energy_j(self) -> float:
        """The sum over all components, in J."""
        return sum(self.energy_j.values())

    def __add__(self, later: Measurement) -> Measurement:
        """This window followed by `later`: seconds and joules added, methods joined (a window read in parts)."""
        energy, devices = dict(self.energy_j), dict(self.devices)
        for component, joules in later.energy_j.items():
            energy[component] = energy.get(component, 0.0) + joules
        for device, joules in later.devices.items():
            devices[device] = devices.get(device, 0.0) + joules
        methods = dict(self.methods)
        for component, method in later.methods.items():
            methods[component] = join_methods(methods[component], method) if component in methods else method
        return Measurement(self.seconds + later.seconds, energy, methods, devices, self.warnings + later.warnings)


@runtime_checkable
class Meter(Protocol):
    """What the run session needs of a meter: keyed windows of energy, and a way to release the sensor.

    Implement these three methods (or subclass `MeterBase`, which implements them over cumulative per-device
    readings) to bring your own sensor.
    """

    def begin_window(self, key: str) -> None:
        """Starts the window `key` (restarting it if already open)."""

    def end_window(self, key: str) -> Measurement:
        """Ends the window `key` and returns what was drawn since `begin_window(key)`."""

    def close(self) -> None:
        """Releases the sensor. Safe to call twice."""


class MeterBase(abc.ABC):
    """The implementation base of the bundled meters: keyed windows over cumulative per-device energy.

    Subclasses implement `_read()` (cumulative joules per device since an arbitrary origin), `_component(device)`
    and `_method(device)`; they may override `_window_energy` to correct a counter's coarse resolution.

    Args:
        clock: the clock windows are timed with, in s. Defaults to `time.perf_counter`.

    Attributes:
        notes: what the meter detected and assumed (device names, TDP and its source), for logs and reports.
        reads_may_block: whether a reading can hang (a driver call); the run then reads it on a worker thread with a
            timeout (`CheckedMeter`). `True` unless a subclass knows better (file and clock reads only).
    """

    reads_may_block = True

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._clock: Callable[[], float] = clock or time.perf_counter
        self._windows: dict[str, tuple[float, dict[str, float], int]] = {}
        self._warning_log: list[str] = []
        self._warned_keys: set[str] = set()
        self._reported = 0  # warnings before this index were already returned by an ended window
        self._edge_time: float | None = None  # the clock reading of the window edge being read
        self.notes: list[str] = []

    # ------------------------------------------------------------------------------------------- subclass API
    @abc.abstractmethod
    def _read(self) -> dict[str, float]:
        """Cumulative energy per device since an arbitrary origin, in J. Must not raise for a sensor failure."""

    @abc.abstractmethod
    def _component(self, device: str) -> str:
        """The component (`"gpu"`, `"cpu"`, ...) a device belongs to."""

    @abc.abstractmethod
    def _method(self, device: str) -> str:
        """The method label of a device's readings (it may change after a sensor failure)."""

    def _window_energy(self, device: str, start_j: float, end_j: float, seconds: float, end_time: float) -> float:
        """Energy of one device over a window; counters with coarse updates override this."""
        return max(end_j - start_j, 0.0)

    def _now(self) -> float:
        """The time of the window edge being read (one clock reading per edge), else the clock."""
        edge = self._edge_time
        return self._clock() if edge is None else edge

    def _timed_read(self) -> tuple[float, dict[str, float]]:
        now = self._edge_time = self._clock()
        try:
            return now, self._read()
        finally:
            self._edge_time = None

    def _warn(self, key: str, message: str) -> None:
        """Warns once per meter (and once per process for the same key), and records it for open windows."""
        if key in self._warned_keys:
            return
        self._warned_keys.add(key)
        self._warning_log.append(message)
        warn_once(f"{type(self).__name__}:{key}", message)

    # ------------------------------------------------------------------------------------------- public API
    @property
    def devices(self) -> tuple[str, ...]:
        """The devices this meter reads (e.g. `("gpu:0", "gpu:1")`)."""
        return tuple(self._read())

    def begin_window(self, key: str) -> None:
        """Starts the window `key` (restarting it if already open).

        Args:
            key: any name; windows with different keys may overlap.
        """
        now, readings = self._timed_read()
        self._windows[key] = (now, readings, self._reported)

    def end_window(self, key: str) -> Measurement:
        """Ends the window `key` and returns what was drawn since `begin_window(key)`.

        The measurement's warnings are those raised while the window was open, plus any that no window had
        reported yet when it opened (e.g. from the meter's construction).

        Args:
            key: the name given to `begin_window`.

        Raises:
            InvalidInputError: when no window `key` is open (a programming error, never a sensor failure).
        """
        try:
            start_time, start, first_warning = self._windows.pop(key)
        except KeyError:
            raise InvalidInputError(
                f"end_window({key!r}) has no matching begin_window; open windows: {sorted(self._windows) or 'none'}."
            ) from None
        end_time, end = self._timed_read()
        seconds = max(end_time - start_time, 0.0)
        energy: dict[str, float] = {}
        methods: dict[str, str] = {}
        devices: dict[str, float] = {}
        for device, end_j in end.items():
            start_j = start.get(device)
            if start_j is None:  # a device that appeared mid-window: not measured for this window.
                continue
            joules = self._window_energy(device, start_j, end_j, seconds, end_time)
            devices[device] = joules
            component = self._component(device)
            energy[component] = energy.get(component, 0.0) + joules
            method = self._method(device)
            known = methods.get(component)
            if known is None:
                methods[component] = method
            elif method not in known.split("+"):
                methods[component] = join_methods(known, method)
        self._reported = len(self._warning_log)
        return Measurement(
            seconds=seconds,
            energy_j=energy,
            methods=methods,
            devices=devices,
            warnings=tuple(self._warning_log[first_warning:]),
        )

    def close(self) -> None:
        """Releases the sensor (stops a sampler thread, shuts NVML down). Safe to call twice."""
        self._windows.clear()

    def __enter__(self) -> MeterBase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CounterMeter(MeterBase):
    """A meter over per-device cumulative counters that falls back to a labelled estimate when a read fails.

    Subclasses implement `_read_device(device)` (cumulative J, may raise) and list their devices in `self._devices`
    (device -> component) and measured labels in `self._labels` (device -> method).

    Notes:
        After the first failed read of a device, its energy continues at the average power measured on it so
        far (`modeled:last-avg-power`), or at `_static_fallback_w(device)` when nothing was measured yet
        (`modeled:<that label>`); the meter warns once and never reads that device again.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        super().__init__(clock=clock)
        self._devices: dict[str, str] = {}
        self._labels: dict[str, str] = {}
        # device -> [first_t, first_j, last_t, last_j]; and failed devices -> fallback power in W.
        self._history: dict[str, list[float]] = {}
        self._failed_w: dict[str, float] = {}

    @abc.abstractmethod
    def _read_device(self, device: str) -> float:
        """Cumulative energy of `device`, in J; may raise on a sensor failure."""

    def _static_fallback_w(self, device: str) -> tuple[float, str] | None:
        """Power to assume for a device that fails before any measurement, in W, and its label."""
        return None

    def _component(self, device: str) -> str:
        return self._devices[device]

    def _method(self, device: str) -> str:
        return self._labels[device]

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        now = self._now()
        for device in self._devices:
            history = self._history.get(device)
            if device in self._failed_w:
                out[device] = history[3] + self._failed_w[device] * (now - history[2])
                continue
            try:
                joules = self._read_device(device)
            except Exception as err:  # a sensor failure must never reach the training loop
                out[device] = self._fail(device, err, now)
                continue
            if history is None:
                self._history[device] = [now, joules, now, joules]
            else:
                history[2], history[3] = now, joules
            out[device] = joules
        return out

    def _fail(self, device: str, err: Exception, now: float) -> float:
        history = self._history.get(device)
        if history is not None and history[2] > history[0]:
            watts = (history[3] - history[1]) / (history[2] - history[0])
            label = "modeled:last-avg-power"
        else:
            static = self._static_fallback_w(device)
            watts, label = static if static is not None else (0.0, "modeled:unknown-power")
        if history is None:
            history = self._history[device] = [now, 0.0, now, 0.0]
        self._failed_w[device] = max(watts, 0.0)
        self._labels[device] = label
        self._warn(
            f"fail:{device}",
            f"{type(self).__name__}: reading {device} failed ({type(err).__name__}: {err}); from now on its energy "
            f"is estimated at {watts:.1f} W ({label}) for the rest of the run.",
        )
        return history[3] + self._failed_w[device] * (now - history[2])
