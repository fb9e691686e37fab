"""The open logging interval: the steps since the last one closed, and the energy measured for them so far.

Per step it adds a few numbers in memory. The meter is read only by `measure`, which the session calls when the
interval closes, or when the run is read mid-interval (a summary, a checkpoint's state): each reading ends the
meter's window and opens the next at once, and the interval adds the readings up, so reading never splits it. The
meter is the run's `CheckedMeter`, which never raises and turns a failed, bad or late reading into a labelled
estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from carbon_callbacks._run.step_flops import BatchPass
from carbon_callbacks.meters._base import Measurement

_WINDOW = "carbon-callbacks/interval"


class OpenInterval:
    """The steps of the interval not yet closed, and the meter windows that measure them."""

    def __init__(self) -> None:
        self._meter = None
        self._last: tuple[Sequence[BatchPass], int] | None = None
        #: `(passes, steps they cover, logger step)` of each step or call, in order.
        self.entries: list[tuple[Sequence[BatchPass], int, int | None]] = []
        self.reset()

    def reset(self) -> None:
        """Forgets the steps (the interval was recorded); the meter's window stays open."""
        self._last = self.last_step()  # for carbon/flops until the next step
        self.entries.clear()  # the same list for the run: `RunSession.add_step` is its append
        self._extra_steps = 0  # steps beyond one per entry (`add` with `num_steps` other than 1)
        self._generation: list[tuple[float | None, float]] = []
        self._loss: Any = None
        self.outputs: Any = None
        self._measured: Measurement | None = None

    @property
    def steps(self) -> int:
        return len(self.entries) + self._extra_steps

    def begin(self, meter) -> None:
        """Starts measuring with `meter` (a run's start)."""
        self._meter = meter
        self.reset()
        self._last = None
        meter.begin_window(_WINDOW)

    def add(self, batches: Sequence[BatchPass], generation: tuple[float | None, float] | None, loss: Any,
            step: int | None, outputs: Any, num_steps: int) -> None:
        """Adds `num_steps` finished steps (see `RunSession.step_end`): references only, nothing is read."""
        self.entries.append((batches, num_steps, step))
        self._extra_steps += num_steps - 1
        if generation is not None:
            self._generation.append(generation)
        self._loss, self.outputs = loss, outputs

    def last_step(self) -> tuple[Sequence[BatchPass], int] | None:
        """`(passes, steps they cover)` of the last step that brought passes, this interval's or the one before's."""
        if self.entries:  # per step: the last entry, in most runs
            passes, steps, _ = self.entries[-1]
            if passes:
                return passes, steps
        return next(((passes, n) for passes, n, _ in reversed(self.entries) if passes), self._last)

    def measure(self, device_sync: Callable[[Any], None] | None) -> None:
        """Adds the energy since the last reading (after `device_sync` of the last outputs), and reads on."""
        if device_sync is not None:
            device_sync(self.outputs)
        measurement = self._meter.end_window(_WINDOW)
        self._measured = measurement if self._measured is None else self._measured + measurement
        self._meter.begin_window(_WINDOW)

    def observation(self) -> dict:
        """The interval as `Accountant.update` arguments (after `measure`): model FLOPs and tokens of the real
        tokens where the batches say which are padding, generation beside them."""
        measured = self._measured
        totals = _Totals()
        for passes, _, _ in self.entries:
            for batch in passes:
                totals.add(batch)
        generation_flops, generation_tokens = None, None
        for flops, tokens in self._generation:
            generation_flops = _plus(generation_flops, flops)
            generation_tokens = _plus(generation_tokens, tokens)
        try:
            loss = None if self._loss is None else float(self._loss)
        except (TypeError, ValueError):
            loss = None
        return dict(seconds=measured.seconds, energy_j=measured.energy_j, energy_method=measured.methods,
                    model_flops=totals.model, hardware_flops=_plus(totals.hardware, generation_flops),
                    tokens=totals.tokens, padding_tokens=totals.padding, generation_flops=generation_flops,
                    generation_tokens=generation_tokens, loss=loss,
                    step=self.entries[-1][2] if self.entries else None, num_steps=self.steps)


class _Totals:
    """The sums of an interval's passes, where each pass's lengths (read here, once) set its real tokens and, with
    a per-sequence polynomial, its model FLOPs."""

    def __init__(self) -> None:
        self.model = self.hardware = self.tokens = self.padding = None

    def add(self, batch: BatchPass) -> None:
        figures, lengths = batch.figures, _host(batch.lengths)
        real = None if lengths is None else batch.scale * (sum(lengths) if isinstance(lengths, list) else lengths)
        if figures is None:
            self.tokens = _plus(self.tokens, real)  # tokens known, FLOPs not
            return
        model = figures.model_flops
        labelled = _host(batch.labelled)
        if isinstance(lengths, list) and figures.per_sequence is not None:
            c0, c1, c2, c3 = figures.per_sequence
            if not c3 or labelled is not None:  # the labelled term is linear: its total is enough
                model = sum(c0 + c1 * n + c2 * n * n for n in lengths if n > 0)
                model += c3 * (sum(labelled) if isinstance(labelled, list) else labelled or 0.0)
        self.model = _plus(self.model, model)
        self.hardware = _plus(self.hardware, figures.hardware_flops)
        if not figures.trains:
            return
        positions = figures.tokens
        self.tokens = _plus(self.tokens, positions if real is None else real)
        if real is not None and positions is not None:
            self.padding = _plus(self.padding, max(positions - real, 0.0))


def _host(lengths: Any) -> list[float] | float | None:
    """Lengths as host numbers: a list per sequence, or one total (a scalar given), or `None`."""
    if lengths is None:
        return None
    values = lengths.tolist() if callable(getattr(lengths, "tolist", None)) else lengths
    if isinstance(values, (list, tuple)):
        return [float(v) for v in values]
    return float(values)


def _plus(total: float | None, value: float | None) -> float | None:
    """`total + value`, where `None` is "not known" (never 0)."""
    if value is None:
        return total
    return (total or 0.0) + value
