"""A meter that replays given energy, for tests without hardware (after Zeus's `ReplayZeusMonitor`).

Two forms, one class:

- `ReplayMeter(energy_j, seconds)`: each window that ends gets the next entry of a per-window series of joules and
  seconds, whatever the clock says. For testing code that consumes measurements (callbacks, reports).
- `ReplayMeter.from_power_trace(times_s, watts, clock=...)`: a recorded power trace, integrated over each window's
  span on the given clock, as a real sensor would. For testing code that depends on when windows open and close.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

from carbon_callbacks._errors import InvalidInputError, check_number
from carbon_callbacks.meters._base import COMPONENTS, Measurement, MeterBase, check_method

_INTERPOLATIONS = ("previous", "linear")


def _series(field: str, value: object) -> tuple[float, ...]:
    """One non-negative number, or a non-empty sequence of them, as a tuple (`field` names them in errors)."""
    if isinstance(value, Mapping):
        raise InvalidInputError(
            f"{field} must be a number or a sequence of numbers (one per window), got a mapping {dict(value)!r}; "
            "name the component with `component=` instead."
        )
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return (check_number(field, value, non_negative=True),)
    try:
        items = tuple(value)
    except TypeError:  # e.g. a 0-d array: iterable in type only
        return (check_number(field, value, non_negative=True),)
    if not items:
        raise InvalidInputError(f"{field} must hold at least one value, got an empty sequence.")
    return tuple(check_number(f"{field}[{i}]", item, non_negative=True) for i, item in enumerate(items))


class _PowerTrace:
    """Cumulative energy of a power trace at any time, in J since its first sample (negative before it)."""

    def __init__(self, times_s: object, watts: object, interpolation: str) -> None:
        if interpolation not in _INTERPOLATIONS:
            raise InvalidInputError(
                f"interpolation must be one of {', '.join(map(repr, _INTERPOLATIONS))}, got {interpolation!r}."
            )
        self.times = _floats("times_s", times_s, non_negative=False)
        self.watts = _floats("watts", watts, non_negative=True)
        if len(self.times) != len(self.watts):
            raise InvalidInputError(
                f"times_s and watts must have the same length, got {len(self.times)} and {len(self.watts)}."
            )
        for i in range(1, len(self.times)):
            if self.times[i] <= self.times[i - 1]:
                raise InvalidInputError(
                    f"times_s must be strictly increasing, got times_s[{i - 1}] = {self.times[i - 1]!r} and "
                    f"times_s[{i}] = {self.times[i]!r}."
                )
        self.linear = interpolation == "linear"
        self._prefix = [0.0]  # energy from the first sample to each sample, in J
        for i in range(1, len(self.times)):
            self._prefix.append(self._prefix[-1] + self._segment(i - 1, self.times[i] - self.times[i - 1]))

    def _segment(self, k: int, dt: float) -> float:
        """Energy from sample `k` to `dt` seconds after it (within the segment to sample `k + 1`)."""
        w0 = self.watts[k]
        if not self.linear:
            return w0 * dt
        slope = (self.watts[k + 1] - w0) / (self.times[k + 1] - self.times[k])
        return w0 * dt + slope * dt * dt / 2

    def energy_at(self, t: float) -> float:
        first, last = self.times[0], self.times[-1]
        if t <= first:
            return self.watts[0] * (t - first)
        if t >= last:
            return self._prefix[-1] + self.watts[-1] * (t - last)
        k = bisect.bisect_right(self.times, t) - 1
        return self._prefix[k] + self._segment(k, t - self.times[k])


def _floats(field: str, value: object, *, non_negative: bool) -> tuple[float, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidInputError(f"{field} must be a sequence of numbers, got {value!r}.")
    items = tuple(value)
    if not items:
        raise InvalidInputError(f"{field} must hold at least one value, got an empty sequence.")
    return tuple(check_number(f"{field}[{i}]", item, non_negative=non_negative) for i, item in enumerate(items))


class ReplayMeter(MeterBase):
    """A meter that replays given data: deterministic measurements for tests, without hardware.

    Each window that ends (in the order windows end, whatever their keys) gets the next entry of `energy_j` and
    `seconds`; once a sequence is exhausted its last entry repeats, and a number repeats for every window. The
    measurement's `seconds` are the replayed seconds, never the clock's. Windows are keyed and may overlap or nest
    as with any `Meter`; ending a key that is not open raises. For energy that depends on when windows open and
    close, use `ReplayMeter.from_power_trace`.

    Args:
        energy_j: energy of each window, in J: a number (every window) or a sequence (window `i` gets entry `i`).
        seconds: length of each window, in s: a number or a sequence, as `energy_j`.
        component: the component the energy is reported under (`"gpu"`, `"tpu"`, `"cpu"`, `"dram"`, `"host"`).
            Defaults to `"cpu"`.
        method: the method label: `"measured:<sensor>"`, `"modeled:<assumption>"` or `"given"`. Defaults to
            `"given"`.

    Raises:
        InvalidInputError: for a negative, NaN or infinite value, an empty sequence, an unknown component or a bad
            method label.

    Example:
        >>> meter = ReplayMeter(energy_j=[90.0, 110.0], seconds=2.0, component="gpu", method="measured:nvml")
        >>> meter.begin_window("step")
        >>> m = meter.end_window("step")
        >>> m.seconds, m.energy_j, m.methods
        (2.0, {'gpu': 90.0}, {'gpu': 'measured:nvml'})
        >>> for _ in range(2):
        ...     meter.begin_window("step")
        ...     print(meter.end_window("step").energy_j)
        {'gpu': 110.0}
        {'gpu': 110.0}
        >>> meter.windows_ended
        3
    """

    reads_may_block = False  # clock and counter-file reads only

    def __init__(
        self,
        energy_j: float | Sequence[float],
        seconds: float | Sequence[float],
        component: str = "cpu",
        method: str = "given",
    ) -> None:
        super().__init__()
        if component not in COMPONENTS:
            raise InvalidInputError(f"component must be one of {', '.join(COMPONENTS)}, got {component!r}.")
        self._component_name = component
        self._method_label = check_method("method", method)
        self._energy_j = _series("energy_j", energy_j)
        self._seconds = _series("seconds", seconds)
        self._trace: _PowerTrace | None = None
        self._device = f"{component}:replay"
        self._ended = 0
        self._closed = False
        self.notes = [f"{component}: replayed per-window energy ({method})"]

    @classmethod
    def from_power_trace(
        cls,
        times_s: Sequence[float],
        watts: Sequence[float],
        *,
        clock: Callable[[], float],
        component: str = "cpu",
        method: str = "given",
        interpolation: str = "previous",
    ) -> ReplayMeter:
        """A meter whose energy over a window is the integral of a power trace over the window's span on `clock`.

        The window's seconds are its span on `clock` (end minus begin). Between samples the power is each
        sample's until the next (`"previous"`) or a straight line between them (`"linear"`, the trapezoid rule);
        before the first sample and after the last, the nearest sample's power holds.

        Args:
            times_s: the samples' times on `clock`, in s, strictly increasing.
            watts: the power at each sample, in W.
            clock: the clock windows are timed with, in s (a fake one the test moves).
            component: as in `ReplayMeter`. Defaults to `"cpu"`.
            method: as in `ReplayMeter`. Defaults to `"given"`.
            interpolation: `"previous"` or `"linear"`. Defaults to `"previous"`.

        Raises:
            InvalidInputError: for empty, unequal-length, non-increasing, negative or non-finite samples, an
                unknown interpolation, component or method label, or a `clock` that is not callable.

        Example:
            >>> ticks = iter([5.0, 15.0])
            >>> meter = ReplayMeter.from_power_trace([0.0, 10.0], [200.0, 300.0], clock=lambda: next(ticks))
            >>> meter.begin_window("step")
            >>> m = meter.end_window("step")
            >>> m.seconds, m.energy_j
            (10.0, {'cpu': 2500.0})
        """
        if not callable(clock):
            raise InvalidInputError(f"clock must be a callable returning seconds, got {clock!r}.")
        trace = _PowerTrace(times_s, watts, interpolation)
        meter = cls(0.0, 0.0, component=component, method=method)
        meter._clock = clock
        meter._trace = trace
        meter.notes = [
            f"{component}: replayed power trace of {len(trace.times)} sample(s), {interpolation} interpolation "
            f"({method})"
        ]
        return meter

    # ------------------------------------------------------------------------------------------- Meter API
    def _read(self) -> dict[str, float]:
        return {self._device: 0.0 if self._trace is None else self._trace.energy_at(self._now())}

    def _component(self, device: str) -> str:
        return self._component_name

    def _method(self, device: str) -> str:
        return self._method_label

    @property
    def component(self) -> str:
        """The component the energy is reported under."""
        return self._component_name

    @property
    def method(self) -> str:
        """The method label of every measurement."""
        return self._method_label

    @property
    def devices(self) -> tuple[str, ...]:
        """The one replayed device, `"<component>:replay"` (listing it reads no clock)."""
        return (self._device,)

    @property
    def windows_ended(self) -> int:
        """How many windows have ended so far (the entry the next window to end replays, before clamping)."""
        return self._ended

    @property
    def closed(self) -> bool:
        """Whether `close()` was called since the last `begin_window` (a test's check that a meter was released)."""
        return self._closed

    def begin_window(self, key: str) -> None:
        """Starts the window `key`; see `Meter.begin_window`."""
        self._closed = False
        super().begin_window(key)

    def end_window(self, key: str) -> Measurement:
        """Ends the window `key` and returns the replayed measurement; see `Meter.end_window`.

        Raises:
            InvalidInputError: when no window `key` is open.
        """
        measured = super().end_window(key)
        index = self._ended
        self._ended += 1
        if self._trace is not None:
            return measured
        joules = self._energy_j[min(index, len(self._energy_j) - 1)]
        return dataclasses.replace(
            measured,
            seconds=self._seconds[min(index, len(self._seconds) - 1)],
            energy_j={self._component_name: joules},
            methods={self._component_name: self._method_label},
            devices={self._device: joules},
        )

    def close(self) -> None:
        """Forgets the open windows. Safe to call twice."""
        super().close()
        self._closed = True
