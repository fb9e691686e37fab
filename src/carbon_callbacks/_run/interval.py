"""The open logging interval: the steps since the last one closed, and the energy measured for them so far.

Per step it adds a few numbers in memory. The meter is read only by `measure`, which the session calls when the
interval closes, or when the run is read mid-interval (a summary, a checkpoint's state): each reading ends the
meter's window and opens the next at once, and the interval adds the readings up, so reading never splits it. The
meter is the run's `CheckedMeter`, which never raises and turns a failed, bad or late reading into a labelled
estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from carbon_callbacks._run.step_flops import StepFlops
from carbon_callbacks.meters._base import Measurement

_WINDOW = "carbon-callbacks/interval"


class OpenInterval:
    """The steps of the interval not yet closed, and the meter windows that measure them."""

    def __init__(self) -> None:
        self._meter = None
        self.reset()

    def reset(self) -> None:
        """Forgets the steps (the interval was recorded); the meter's window stays open."""
        self.steps = 0
        self._model_flops: float | None = None
        self._hardware_flops: float | None = None
        self._positions: float | None = None
        self._real_tokens: list[Any] = []
        self._loss: Any = None
        self._step: int | None = None
        self.outputs: Any = None
        self._measured: Measurement | None = None

    def begin(self, meter) -> None:
        """Starts measuring with `meter` (a run's start)."""
        self._meter = meter
        self.reset()
        meter.begin_window(_WINDOW)

    def add(self, flops: StepFlops | None, real_tokens: Any, loss: Any, step: int | None, outputs: Any,
            num_steps: int) -> None:
        """Adds `num_steps` finished steps (see `RunSession.step_end`)."""
        self.steps += num_steps
        if flops is not None:
            self._model_flops = _plus(self._model_flops, flops.model_flops)
            self._hardware_flops = _plus(self._hardware_flops, flops.hardware_flops)
            self._positions = _plus(self._positions, flops.tokens)
        if real_tokens is not None:
            self._real_tokens.append(real_tokens)
        self._loss, self._step, self.outputs = loss, step, outputs

    def measure(self, device_sync: Callable[[Any], None] | None) -> None:
        """Adds the energy since the last reading (after `device_sync` of the last outputs), and reads on."""
        if device_sync is not None:
            device_sync(self.outputs)
        measurement = self._meter.end_window(_WINDOW)
        self._measured = measurement if self._measured is None else self._measured + measurement
        self._meter.begin_window(_WINDOW)

    def observation(self) -> dict:
        """The interval as `Accountant.update` arguments (after `measure`); tokens without padding when known."""
        measured = self._measured
        tokens, padding = self._positions, None
        if self._real_tokens and tokens is not None:
            real = float(sum(float(t) for t in self._real_tokens))
            tokens, padding = real, max(tokens - real, 0.0)
        try:
            loss = None if self._loss is None else float(self._loss)
        except (TypeError, ValueError):
            loss = None
        return dict(seconds=measured.seconds, energy_j=measured.energy_j, energy_method=measured.methods,
                    model_flops=self._model_flops, hardware_flops=self._hardware_flops, tokens=tokens,
                    padding_tokens=padding, loss=loss, step=self._step, num_steps=self.steps)


def _plus(total: float | None, value: float | None) -> float | None:
    """`total + value`, where `None` is "not known" (never 0)."""
    if value is None:
        return total
    return (total or 0.0) + value
