"""JAX/Flax: wrap a training step so every step's metrics carry its energy, CO2e, FLOPs and MFU.

`track(train_step, ...)` returns a callable with `train_step`'s signature. It calls the step as it is (jitted or
not, Linen or NNX, with its donation and sharding) and maps each call onto `carbon_callbacks.RunSession`: per step
a few additions in memory; when an interval closes (every `log_every_n_steps` steps) the session waits for the
step's outputs, reads the meter and, with several processes, sums the totals across them. Nothing runs inside
`jit`. The README shows the loop with a writer; `track`'s docstring the arguments.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from carbon_callbacks._errors import InvalidInputError, check_count
from carbon_callbacks._run.session import RunSession, guarded
from carbon_callbacks._run.step_flops import (
    SequenceProbe,
    StepFlops,
    attention_mask,
    find_model_config,
    sequence_lengths,
    token_layout,
    token_shape,
)
from carbon_callbacks._run.step_output import add_metrics, find_loss
from carbon_callbacks._site.trace import IntensityTrace

try:
    import jax
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError("carbon_callbacks.flax needs JAX: pip install 'carbon-callbacks[jax]'") from err

from carbon_callbacks._compat import jax as _jax

#: Steps per logging interval when the user gives none: JAX has no trainer with a default of its own, so we take
#: the one Lightning uses (`Trainer(log_every_n_steps=50)`).
DEFAULT_LOG_EVERY_N_STEPS = 50


class StepCounters(NamedTuple):
    """What the wrapper has seen so far; replaced, never mutated (read it with `TrackedStep.counters`).

    Attributes:
        steps: calls of the step since the run began (the step number of each `steps.csv` record).
        signatures: distinct input shapes/dtypes seen, i.e. FLOP counts made.
    """

    steps: int = 0
    signatures: int = 0


class TrackedStep:
    """A training step that reports its energy, CO2e, FLOPs and MFU; made by `track`.

    Call it exactly like the step it wraps. Use it as a context manager, or call `close()`, to write the run
    files, print the report and get the run's final metrics; otherwise that happens when the interpreter exits.

    Attributes:
        session: the `RunSession` doing the accounting (shared logic of every adapter).
        counters: a `StepCounters` of steps and FLOP counts.
    """

    def __init__(self, train_step: Callable, session: RunSession, total_steps: int | None = None) -> None:
        if not callable(train_step):
            raise InvalidInputError(
                f"train_step must be the training step function, got {type(train_step).__name__}: {train_step!r}."
            )
        self.__wrapped__ = train_step
        for name in ("__module__", "__name__", "__qualname__", "__doc__"):
            try:
                setattr(self, name, getattr(train_step, name))
            except AttributeError:
                pass
        self.session = session
        self._total_steps = total_steps
        self._seen: set[tuple] = set()
        self._only: StepFlops | None = None  # the FLOPs of the one signature seen, while it is the only one
        self._last_cache_size: int | None = None
        self._cache_was_empty = False
        self._started = self._closed = False
        self._exception: BaseException | None = None
        self.counters = StepCounters()

    # ------------------------------------------------------------------------------------------- the step
    def __call__(self, *args, **kwargs):
        if self._closed:
            self.session.warn("closed", "carbon-callbacks: this tracked step was closed; further steps are not "
                              "tracked. Call track(train_step, ...) again for a new run.")
            return self.__wrapped__(*args, **kwargs)
        if not self._started:
            self._start(args)
        try:
            out = self.__wrapped__(*args, **kwargs)
        except BaseException as err:
            self._exception = err
            raise
        self._exception = None
        # Everything below runs while the device works on the step just dispatched.
        tracked = self._after_step(out, args, kwargs)
        return out if tracked is None else tracked

    @guarded
    def _after_step(self, out: Any, args: tuple, kwargs: dict) -> Any:
        session = self.session
        if not session.running:
            return None
        flops, lengths = self._flops_for(args, kwargs)
        self.counters = self.counters._replace(steps=self.counters.steps + 1)
        session.step_end(flops=flops, real_tokens=lengths, loss=find_loss(out), step=self.counters.steps,
                         outputs=out)
        return add_metrics(out, session.metrics)

    # ------------------------------------------------------------------------------------------- lifecycle
    @guarded
    def _start(self, args: tuple) -> None:
        """Begins the run at the first call, after the user's `jax.distributed.initialize`."""
        self._started = True
        info = {"framework": f"jax {jax.__version__}", "step_function": getattr(self, "__qualname__", None)}
        params = _jax.count_params(args)
        if params:
            info.update(params_total=params, params_source="counted: the step's parameter arrays")
        self.session.start(
            model=self.__wrapped__,
            config=find_model_config(*args),
            log_every_n_steps=DEFAULT_LOG_EVERY_N_STEPS,
            world_size=jax.process_count(),
            rank=jax.process_index(),
            info=info,
            total_steps=self._total_steps,
            num_chips=_jax.chips_of(args),
            device_sync=_jax.block,
            reduce_sum=_jax.process_sum if jax.process_count() > 1 else None,
            end=lambda signum: self.close("interrupted" if signum is not None else None),
            host=_jax.process_host(),
        )
        # Only entries compiled while we watch can be attributed to a signature we saw.
        self._cache_was_empty = _jax.jit_cache_size(self.__wrapped__) == 0
        self._only, self._last_cache_size = None, None

    def _flops_for(self, args: tuple, kwargs: dict) -> tuple[StepFlops | None, Any]:
        """This step's FLOPs and tokens, counted once per distinct input signature, and the real tokens of its
        sequences (`sequence_lengths` of the argument that says where they are, or `None`).

        Called after the step was dispatched: tracing needs only shapes and dtypes, which donated (deleted)
        arrays keep. The signature (a tree flatten, tens of microseconds for a large state) and the search for the
        argument with the mask are skipped while the jitted step's own cache shows that it ran a computation
        compiled for the one signature seen so far.
        """
        size = _jax.jit_cache_size(self.__wrapped__)
        if self._only is not None and size is not None and size == self._last_cache_size:
            flops, index = self._only
            return flops, None if index is None else sequence_lengths(args[index])
        index = next((i for i, arg in enumerate(args) if token_layout(arg) is not None), None)
        key = _jax.step_signature(args, kwargs)
        if key not in self._seen:
            self._seen.add(key)
            self.counters = self.counters._replace(signatures=self.counters.signatures + 1)
        probe = None
        mask = None if index is None else attention_mask(args[index])
        if mask is not None:  # the model FLOPs of one sequence by its length: the batch argument cut to one sequence
            probe = SequenceProbe(args[index], mask, lambda cut: self._count(
                (*args[:index], cut, *args[index + 1:]), kwargs))
        flops = self.session.count(key, lambda: self._count(args, kwargs),
                                   lambda: token_shape(_jax.token_leaves(args)), probe=probe)
        self._last_cache_size = size
        self._only = (flops, index) if len(self._seen) == 1 and self._cache_was_empty else None
        return flops, None if index is None else sequence_lengths(args[index])

    def _count(self, args: tuple, kwargs: dict):
        """The traced step's FLOPs; a mesh over several processes is traced whole by each: this one's share."""
        from carbon_callbacks.flops._jax import count_placed

        fn = functools.partial(self.__wrapped__, **kwargs) if kwargs else self.__wrapped__
        counted, placement = count_placed(fn, *args)
        if placement.processes == 1:
            return counted
        return dataclasses.replace(counted, total=counted.total / placement.processes,
                                   executed=counted.executed / placement.processes,
                                   recomputed=counted.recomputed / placement.processes)

    def close(self, status: str | None = None) -> dict[str, float]:
        """Ends the run and hands back its final `carbon/*` metrics, equal to `run.json`, for the user's writer.

        Waits for the last step, sums over processes, writes the run files and prints the report. Call it on
        every process (it takes part in a collective when there are several). Safe to call twice.

        Args:
            status: `"finished"`, `"interrupted"` or `"failed"`. Defaults to `None`: from the exception the last
                call of the step raised, if any (see `carbon_callbacks._run.session.status_for`).

        Returns:
            The final metrics (empty when the step was never called); `summary()` gives the whole `run.json`.
        """
        if not self._closed:
            self._closed = True
            self.session.finish(status or self.session.ending_status(self._exception))
        return self.session.metrics

    def summary(self) -> dict | None:
        """The `run.json` content up to the last completed step (the final one after `close()`)."""
        return self.session.summary()

    def metrics(self) -> dict[str, float]:
        """The `carbon/*` values of the last step (after `close()`, the run's final ones)."""
        return self.session.metrics

    def state_dict(self) -> dict:
        """The run's totals for a checkpoint (call on every process), so a resumed run continues them."""
        return self.session.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continues the totals of `state_dict()` from the first call of the step."""
        self.session.load_state_dict(state)

    @property
    def run_dir(self) -> Path | None:
        """Where the run files are written (`None` on processes other than 0 and before the first step)."""
        return self.session.run_dir

    def __enter__(self) -> TrackedStep:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(status=self.session.ending_status(exc) if exc_type is not None else None)

    def __getattr__(self, name: str):
        # Only reached for names this object lacks: the jitted step's own API (`lower`, `trace`, ...).
        wrapped = self.__dict__.get("__wrapped__")
        if wrapped is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(wrapped, name)

    def __repr__(self) -> str:
        return f"TrackedStep({self.__wrapped__!r})"


def track(
    train_step: Callable,
    *,
    region: str | None = None,
    intensity: float | str | IntensityTrace | None = None,
    net_intensity: float | str | IntensityTrace | None = None,
    pue: float | None = None,
    chip: str | None = None,
    num_chips: int | None = None,
    output_dir: str | Path | None = None,
    log_every_n_steps: int | None = None,
    flops: float | None = None,
    meter=None,
    nvml: bool = True,
    rapl: bool = True,
    dtype: str = "bf16",
    training_type: str | None = None,
    total_steps: int | None = None,
) -> TrackedStep:
    """Wraps a JAX/Flax training step so its metrics carry `carbon/*` values and the run is written to disk.

    Where the step returns a dict of metrics, or a tuple ending in one (`state, metrics = train_step(state,
    batch)`), the `carbon/*` keys are added to that dict on every step: fresh values when a logging interval
    closes, the last known ones in between (NaN before the first interval closes). Every other output is returned
    untouched.

    Args:
        train_step: the step, jitted (`jax.jit`, `nnx.jit`) or not. Its donation and sharding are kept.
        region, intensity, net_intensity, pue, chip, dtype, flops, meter, nvml, rapl, training_type: as every
            adapter takes them (see `carbon_callbacks.RunSession`); one of `region`/`intensity` is required. A
            `flops_per_batch` attribute on the step function works like `flops=`.
        num_chips: chips in the whole run. Defaults to `None`: the devices the step's arguments are placed on (all
            of a mesh's), in every process.
        output_dir: where process 0 writes the run files. Defaults to `None`: `./carbon-runs/<UTC timestamp>`.
        log_every_n_steps: steps per interval (one device sync and one meter reading each). Defaults to `None`:
            50.
        total_steps: the run's length in steps, when known: after 20% of it the projected total is logged once
            and stored in `run.json`. Defaults to `None`: no projection.

    Returns:
        A `TrackedStep`: call it like `train_step`; `.close()` (or leaving the `with` block, then `.metrics()`)
        gives the final metrics for your writer, `.summary()` the `run.json` content.

    Raises:
        InvalidInputError: for no region and no intensity, or an unusable number.
        UnknownNameError: for a region or chip not in the tables.

    Example:
        >>> with track(train_step, region="us-central1", chip="a100-40gb") as step:  # doctest: +SKIP
        ...     for batch in batches:
        ...         state, metrics = step(state, batch)  # metrics now holds carbon/co2e_kg, carbon/flops, ...
        >>> writer.write_scalars(step.counters.steps, step.metrics())  # doctest: +SKIP  (the totals of run.json)

    Notes:
        Timing per interval, several processes, and how FLOPs are counted: `docs/adapters.md`.
    """
    session = RunSession(
        region=region, intensity=intensity, net_intensity=net_intensity, pue=pue, chip=chip, num_chips=num_chips,
        output_dir=output_dir, log_every_n_steps=log_every_n_steps, flops=flops, meter=meter, nvml=nvml, rapl=rapl,
        dtype=dtype, training_type=training_type,
    )
    if total_steps is not None:
        total_steps = check_count("total_steps", total_steps)
    return TrackedStep(train_step, session, total_steps)


__all__ = ["StepCounters", "StepFlops", "TrackedStep", "track"]
