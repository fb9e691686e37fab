"""A meter whose readings are checked: a bad or late reading is a fault, counted and labelled, never a number.

`CheckedMeter` wraps the meter a run reads (NVML, RAPL, a model, or the user's `meter=`). A window's reading must
arrive within `READ_TIMEOUT_S` and hold, for every component, a finite, non-negative energy at a plausible power
(at most `MAX_W_PER_DEVICE` per device or chip) with a method label. A reading that does not (NaN, infinite,
negative, implausible, unlabelled, raised, or late) is replaced for its window by a labelled estimate: the last
good window's average power (`modeled:last-avg-power`), else the chip's TDP (`modeled:tdp-fallback(<chip>)`).
Each fault is counted by reason (`faults`, with the windows and seconds estimated), as Optax's `apply_if_finite`
counts the updates it skips, and warned about once.

A meter whose reads may block (NVML, any meter of the user's; see `MeterBase.reads_may_block`) is read on a worker
thread, so a sensor that hangs never stalls training: its window is estimated and the read goes on in the
background. When it answers, the next reading catches up from the counter: the late reading and the next one
together cover every window since the last good one, so the estimates booked for those windows are subtracted from
them (never below zero; what cannot be settled yet is carried to the next reading). A reading that raises, or holds
a bad value, settles nothing: the estimates stand. The bundled meters that read only clocks and counter files (RAPL,
the models, replays) are read in line, which saves the thread handoff (about 0.15 ms per interval on 2 cores).

Windows tile time: a window begun right after another ended starts where that one ended, with no gap.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._site.tables import Chip, get_chip
from carbon_callbacks.meters._base import COMPONENTS, Measurement, check_method

#: Longest wait for a meter reading at a window's end, in s; a later answer is caught up at the next window.
READ_TIMEOUT_S = 2.0
#: A reading above this average power per device (or chip) is implausible, in W: no chip, board or CPU socket
#: draws it (an NVIDIA GB200 superchip, CPU and two GPUs on one board, is rated 2.7 kW).
MAX_W_PER_DEVICE = 10_000.0
_INNER = "carbon-callbacks/checked"


class _Call:
    """One call run on the worker thread; `done` is set when it returned or raised."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn, self.done = fn, threading.Event()
        self.value: object = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None

    def run(self, clock: Callable[[], float]) -> None:
        try:
            self.value = self.fn()
        except BaseException as err:  # reported to the caller, never raised on the worker
            self.error = err
        finally:
            self.finished_at = clock()
            self.done.set()


class CheckedMeter:
    """Reads `meter` on a worker thread, checks every reading, and estimates the windows it cannot trust.

    Args:
        meter: the meter to read (any `carbon_callbacks.meters.Meter`).
        chip: the chip whose TDP stands in before any good reading (`None`: the table's CPU). Defaults to `None`.
        devices: devices or chips this process meters, for the plausibility bound. Defaults to `1`.
        warn: `(key, message)` callable that warns once per run. Defaults to `None`: no warning.
        timeout_s: see `READ_TIMEOUT_S`. Defaults to `None`: it.
        clock: the clock windows are timed with, in s. Defaults to `time.perf_counter`.

    Attributes:
        faults: windows estimated, by reason (`"NaN energy"`, `"read timed out"`, ...).
        fault_windows: windows estimated in all.
        fault_seconds: their length, in s.
    """

    def __init__(
        self,
        meter,
        *,
        chip: Chip | None = None,
        devices: int = 1,
        warn: Callable[[str, str], None] | None = None,
        timeout_s: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.inner = meter
        self.notes = list(getattr(meter, "notes", []))
        self._chip = chip or get_chip("cpu")
        self._devices = max(int(devices), 1)
        self._warn = warn or (lambda key, message: None)
        self._timeout = READ_TIMEOUT_S if timeout_s is None else timeout_s
        self._clock = clock or time.perf_counter
        self._inline = not getattr(meter, "reads_may_block", True)
        self._calls: queue.SimpleQueue[_Call | None] | None = None
        self._late: _Call | None = None  # an edge read that did not answer in time
        self._open = False  # whether the inner meter has a window open
        self._window_start = 0.0
        self._owed: dict[str, float] = {}  # estimates booked since the inner window began, to settle against it
        self._last_reason: tuple[str, str] = ("read raised", "")
        self._power: dict[str, float] = {}  # W per component of the last good window
        self.faults: Counter[str] = Counter()
        self.fault_windows = 0
        self.fault_seconds = 0.0

    # ------------------------------------------------------------------------------------------- the protocol
    def begin_window(self, key: str) -> None:
        """Starts a window now, or, right after another ended, where that one ended (the inner window runs on)."""
        if self._open or self._late is not None:
            return
        self._window_start = self._clock()
        call = self._submit(self._begin)
        if call.done.wait(self._timeout) and call.error is not None:
            self._fault("read raised", f"starting a window raised {type(call.error).__name__}: {call.error}")
        elif not call.done.is_set():
            self._late = call

    def end_window(self, key: str) -> Measurement:
        """Ends the window: the checked reading, caught up after a late one, or a labelled estimate."""
        now = self._clock()
        seconds, self._window_start = max(now - self._window_start, 0.0), now
        carried: Measurement | None = None
        if self._late is not None:
            if not self._late.done.is_set():
                return self._estimate(seconds, "read timed out", f"no answer after {self._timeout:g} s", owe=True)
            late, self._late = self._late, None
            carried = self._settled(late)
            if carried is None:  # the late read raised, or was bad: the booked estimates stand
                self._owed.clear()
        if not self._open:
            call = self._submit(self._begin)
            call.done.wait(self._timeout)
            if not call.done.is_set():
                self._late = call
            return self._estimate(seconds, "no window", "the meter had no open window after a failed read")
        call = self._submit(self._edge)
        if not call.done.wait(self._timeout):
            self._late = call
            if carried is not None:  # part of what was booked is settled; the rest waits for this read
                self._settle(carried)
            return self._estimate(seconds, "read timed out", f"no answer after {self._timeout:g} s", owe=True)
        reading = self._settled(call)
        if reading is None:
            self._owed.clear()
            return self._estimate(_own_seconds(call.value, seconds), *self._last_reason)
        if carried is not None:  # a catch-up: the window's length is the wall clock's
            return self._result(self._settle(carried + reading), seconds)
        return self._result(reading, reading.seconds)

    def close(self, close_inner: bool = True) -> None:
        """Stops the worker; closes the inner meter too unless `close_inner` is false (a user's meter). Waits at
        most the timeout for a sensor that does not answer."""
        if self._calls is None:
            if close_inner:
                self.inner.close()
            return
        if close_inner:
            self._submit(self.inner.close).done.wait(self._timeout)
        self._calls.put(None)
        self._calls = None

    # ------------------------------------------------------------------------------------------- reading
    def _begin(self) -> None:
        self.inner.begin_window(_INNER)
        self._open = True

    def _edge(self) -> Measurement:
        """Ends the inner window and opens the next at once (on the worker thread)."""
        try:
            return self.inner.end_window(_INNER)
        finally:
            self._open = False
            self.inner.begin_window(_INNER)
            self._open = True

    def _submit(self, fn: Callable[[], object]) -> _Call:
        if self._inline:
            call = _Call(fn)
            call.run(self._clock)
            return call
        if self._calls is None:
            self._calls = queue.SimpleQueue()
            threading.Thread(target=_work, args=(self._calls, self._clock), name="carbon-callbacks-meter",
                             daemon=True).start()
        call = _Call(fn)
        self._calls.put(call)
        return call

    def _settled(self, call: _Call) -> Measurement | None:
        """The call's measurement if it is usable, else `None` with the reason kept in `_last_reason`."""
        if call.error is not None:
            self._last_reason = ("read raised", f"{type(call.error).__name__}: {call.error}")
            return None
        reading = call.value
        bad = _problem(reading, self._devices)
        if bad is not None:
            self._last_reason = bad
            return None
        return reading

    def _settle(self, reading: Measurement) -> Measurement:
        """`reading` less the estimates booked for the windows it also covers (never below zero per component;
        what is left stays owed)."""
        if not self._owed:
            return reading
        energy = dict(reading.energy_j)
        for component, owed in list(self._owed.items()):
            if component not in energy:
                continue
            paid = min(owed, energy[component])
            energy[component] -= paid
            self._owed[component] = owed - paid
            if self._owed[component] <= 0:
                del self._owed[component]
        return Measurement(reading.seconds, energy, dict(reading.methods), dict(reading.devices), reading.warnings)

    def _result(self, reading: Measurement, seconds: float) -> Measurement:
        """A good window of `seconds`: its reading, remembered for later estimates."""
        if seconds > 0:
            self._power = {c: j / seconds for c, j in reading.energy_j.items()}
        return Measurement(seconds, dict(reading.energy_j), dict(reading.methods), dict(reading.devices),
                           reading.warnings)

    def _estimate(self, seconds: float, reason: str, detail: str, owe: bool = False) -> Measurement:
        """The window's labelled estimate, counted under `reason`; with `owe`, booked against a late reading."""
        self._fault(reason, detail)
        self.fault_windows += 1
        self.fault_seconds += seconds
        if self._power:
            energy = {c: w * seconds for c, w in self._power.items()}
            methods = dict.fromkeys(energy, "modeled:last-avg-power")
        else:
            component = {"gpu": "gpu", "tpu": "tpu"}.get(self._chip.kind, "cpu")
            energy = {component: (self._chip.tdp_w or 0.0) * seconds}
            methods = {component: f"modeled:tdp-fallback({self._chip.name})"}
        if owe:
            for component, joules in energy.items():
                self._owed[component] = self._owed.get(component, 0.0) + joules
        return Measurement(seconds, energy, methods)

    def _fault(self, reason: str, detail: str) -> None:
        self.faults[reason] += 1
        self._warn(f"meter-fault:{reason}", f"carbon-callbacks: the energy meter's reading was unusable ({reason}: "
                   f"{detail}); such windows are estimated ('modeled:last-avg-power', else the chip's TDP) and "
                   "counted in run.json's meter_faults. Training continues.")


def _own_seconds(reading: object, fallback: float) -> float:
    """A bad reading's own window length where it has a usable one (a replayed meter's clock), else `fallback`."""
    seconds = getattr(reading, "seconds", None)
    usable = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
    return float(seconds) if usable and seconds >= 0 else fallback


def _work(calls: queue.SimpleQueue, clock: Callable[[], float]) -> None:
    """The worker thread: runs calls in order until it gets `None`."""
    while (call := calls.get()) is not None:
        call.run(clock)


def _problem(reading: object, devices: int) -> tuple[str, str] | None:
    """Why a reading cannot be used, as (reason, detail), or `None` when it can."""
    if not isinstance(reading, Measurement):
        return "bad reading", f"expected a Measurement, got {type(reading).__name__}"
    seconds = reading.seconds
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "bad reading", f"window seconds {seconds!r}"
    total = 0.0
    for component, joules in reading.energy_j.items():
        if component not in COMPONENTS:
            return "bad reading", f"unknown component {component!r}"
        if isinstance(joules, bool) or not isinstance(joules, (int, float)):
            return "bad reading", f"{component} energy {joules!r}"
        if math.isnan(joules):
            return "NaN energy", f"{component}"
        if math.isinf(joules):
            return "infinite energy", f"{component}"
        if joules < 0:
            return "negative energy", f"{component}: {joules:g} J"
        try:
            check_method(component, reading.methods.get(component))
        except InvalidInputError:
            return "bad method label", f"{component}: {reading.methods.get(component)!r}"
        total += joules
    bound = MAX_W_PER_DEVICE * max(devices, len(reading.devices), 1)
    if seconds > 0 and total / seconds > bound:
        return "implausible power", f"{total / seconds:.4g} W over {seconds:.3g} s (at most {bound:g} W)"
    return None
