"""Keras 3 adapter: `CarbonCallback` puts energy, CO2e, FLOPs and MFU into `model.fit`'s logs.

One callback for the TensorFlow, JAX and torch backends. It only translates Keras's hooks into calls on
`carbon_callbacks._run.session.Tracker`, which owns the meter windows, the sums and the run files.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections import deque
from pathlib import Path

try:
    import keras
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "carbon_callbacks.keras needs Keras 3 and a backend: pip install 'carbon-callbacks[keras]'"
    ) from _err

from carbon_callbacks._reports.report import format_report
from carbon_callbacks._run.files import default_output_dir
from carbon_callbacks._run.session import Tracker

log = logging.getLogger(__name__)

#: Steps per logging interval when `log_every_n_steps` is not given. Keras has no logging interval of its own (its
#: progress bar redraws every batch), so this is Lightning's `Trainer(log_every_n_steps=50)` default,
#: https://lightning.ai/docs/pytorch/stable/common/trainer.html#log-every-n-steps . Each epoch end also closes one.
DEFAULT_LOG_EVERY_N_STEPS = 50

#: Where runs go when `output_dir` is not given: `./carbon-runs/<timestamp>`.


def _guarded(hook):
    """Runs a hook body so that a failure in our code warns once and never stops the user's training."""

    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception as err:  # our bookkeeping must never end the user's fit
            self._warn_once(
                hook.__name__,
                f"carbon-callbacks: {hook.__name__} failed ({type(err).__name__}: {err}); training continues, "
                "but the carbon figures of this run may be incomplete.",
            )
            return None

    return wrapper




def _replicas(model) -> tuple[int, int]:
    """(replicas the step runs on, how many of them are accelerators) for this process.

    TensorFlow: the model's `tf.distribute` strategy. JAX: the devices of the active `keras.distribution`.
    Torch, or no distribution: one replica, counted as an accelerator only if it is not the CPU.
    """
    backend = keras.backend.backend()
    devices: list[str] = []
    if backend == "tensorflow":
        strategy = getattr(model, "distribute_strategy", None)
        if strategy is not None:
            try:
                devices = [str(d) for d in strategy.extended.worker_devices]
            except RuntimeError:  # the default (no-op) strategy has no device list: one replica
                devices = []
    elif backend == "jax":
        distribution = keras.distribution.distribution()
        if distribution is not None:
            devices = [str(d) for d in distribution.device_mesh.devices.flatten()]
        else:
            devices = [str(d) for d in keras.distribution.list_devices()[:1]]
    elif backend == "torch":
        import torch

        devices = ["cuda" if torch.cuda.is_available() else "cpu"]
    if not devices:
        import tensorflow as tf

        devices = ["gpu" if tf.config.list_logical_devices("GPU") else "cpu"]
    accelerators = sum(1 for d in devices if "cpu" not in d.lower())
    return max(len(devices), 1), accelerators


class CarbonCallback(keras.callbacks.Callback):
    """Energy, CO2e, FLOPs and MFU of `model.fit`, in the logs next to the loss.

    Every logging interval (`log_every_n_steps` steps) and at each epoch end, the callback reads the energy meter
    and puts `carbon/energy_kwh`, `carbon/co2e_kg`, `carbon/co2e_net_kg`, `carbon/flops`, `carbon/step_time_s` and
    (when the chip's peak is known) `carbon/mfu` into the `logs` dict, so `History`, `CSVLogger`, `TensorBoard` and
    the progress bar show them. Between intervals the last values are carried, so columns stay consistent. At
    the end of training it prints the report once and writes `run.json` and `steps.jsonl` to `output_dir`.

    Args:
        region: a name from the regions table. Defaults to `None`.
        intensity: gross grid intensity, kg CO2e/kWh. Defaults to `None`. One of `region`/`intensity` is required.
        net_intensity: net intensity, kg CO2e/kWh. Defaults to `None` (the region's, else the gross one).
        pue: power usage effectiveness. Defaults to `None` (the provider's, else the industry average, labelled).
        chip: the accelerator, a name from the chips table (for MFU and modeled power). Defaults to `None`.
        num_chips: chips in the run. Defaults to `None`: the accelerator replicas of the model's distribution
            strategy, else 1.
        output_dir: where `run.json` and `steps.jsonl` are written. Defaults to `None`:
            `./carbon-runs/<timestamp>`, a new one for every `fit`.
        log_every_n_steps: training steps per logging interval. Defaults to `None`: `DEFAULT_LOG_EVERY_N_STEPS`.
        flops: model FLOPs per training step; overrides counting. Defaults to `None`: a `flops_per_batch`
            attribute of the model if it has one, else counted once per batch shape with
            `carbon_callbacks.flops.count` through the backend's tracer.
        meter: a `carbon_callbacks.meters.Meter`. Defaults to `None`: the best available (`create_meter`).
        dtype: dtype whose dense peak defines MFU. Defaults to `"bf16"`.
        prog_bar: accepted for parity with the Lightning callback. Keras's progress bar shows every value in
            `logs`, so the metrics appear on it either way. Defaults to `False`.

    Raises:
        InvalidInputError: at construction, for a missing location or an unusable number.
        UnknownNameError: for a region or chip not in the tables.

    Example:
        >>> from carbon_callbacks.keras import CarbonCallback
        >>> history = model.fit(x, y, epochs=3, callbacks=[CarbonCallback(region="us-central1")])  # doctest: +SKIP
        >>> history.history["carbon/co2e_kg"]  # doctest: +SKIP

    Notes:
        - Order: put this callback before `CSVLogger` and `TensorBoard` in `callbacks=[...]`; Keras hands one
          `logs` dict to the callbacks in list order (`History` and the progress bar always come last).
        - Timing: Keras converts the logs to Python floats before it calls `on_train_batch_end`, and that
          conversion waits for the step to finish on the device, so an interval's clock stops after its last
          step finished. Overriding `on_train_batch_end` turns off Keras's asynchronous callback dispatch (JAX,
          torch): the train loop then waits for each step before dispatching the next. On JAX with steps of a
          few ms that costs the overlap of Python dispatch and compute (see `benchmarks/RESULTS.md`).
        - `steps_per_execution=N`: one `on_train_batch_end` per N steps; the callback counts the steps the
          batch index advanced by, the last execution of an epoch cut at the epoch's step count.
        - Validation inside `fit` is part of the run's energy: its time and joules go into the interval that
          closes at the epoch's end (that interval's `carbon/step_time_s` includes it).
        - Distribution: one process meters itself once. Under `tf.distribute.MirroredStrategy` the replicas
          are this process's devices: one meter, one report; `num_chips` defaults to the replicas that are
          accelerators (logical CPU devices share one CPU and count as none, hence 1), and `world_size` stays 1.
          Multi-process runs (`MultiWorkerMirroredStrategy`, multi-host JAX) are not reduced across processes.
        - Interruption: Keras has no exception hook, and `on_train_end` is not called when `fit` raises. The run
          files are written at `fit` start (`run.json`, status `running`) and again at each epoch end, so after
          a crash `run.json` agrees with `steps.jsonl` as of the last epoch end. For the status `interrupted`
          (KeyboardInterrupt) or `failed` (an exception), use the callback as a context manager around `fit`, or
          call `finish(status)` yourself; a later `fit` with the same callback also closes the stale run as
          `interrupted` first.
        - Several `fit` calls: without `output_dir`, each `fit` is a run of its own (a new timestamped
          directory). With an `output_dir`, a later `fit` with the same callback continues the totals in it
          (as `fit` continues training), so `run.json` always covers the whole `steps.jsonl`.
        - FLOPs: traced with `carbon_callbacks.flops.count(model, x)` once per distinct batch shape and dtype
          per callback instance (a one-time trace, then a dict lookup), never per step. The traced count is what
          ran (hardware FLOPs); a model whose `config` is a `TransformerConfig` (the reference GPTs) gets its
          model FLOPs (top-k experts, no padding) from `transformer_flops`. JAX and torch: the shapes come from
          the batches the train function receives (the model's `train_function` is wrapped for the `fit` and
          put back at its end). TensorFlow, whose step is a graph fed by an iterator: shapes from the iterator's
          element spec, batch size from the growth of the loss metric's sample count (Keras's private
          `model._loss_tracker`) over the first execution; every later step is counted at that size (a smaller
          last batch is counted as a full one). Under a strategy, one replica's share is counted and multiplied
          by the replicas.
    """

    def __init__(
        self,
        *,
        region: str | None = None,
        intensity: float | None = None,
        net_intensity: float | None = None,
        pue: float | None = None,
        chip: str | None = None,
        num_chips: int | None = None,
        output_dir: str | Path | None = None,
        log_every_n_steps: int | None = None,
        flops: float | None = None,
        meter=None,
        dtype: str = "bf16",
        prog_bar: bool = False,
    ) -> None:
        super().__init__()
        self.tracker = Tracker(
            region=region,
            intensity=intensity,
            net_intensity=net_intensity,
            pue=pue,
            chip=chip,
            num_chips=num_chips,
            output_dir=output_dir,
            log_every_n_steps=log_every_n_steps,
            flops=flops,
            meter=meter,
            dtype=dtype,
        )
        self.prog_bar = prog_bar
        self.summary: dict | None = None
        self._warned: set[str] = set()
        self._running = False
        self._continued_state: dict | None = None
        self._flops_cache: dict[tuple, float | None] = {}
        self._reset_run_state()

    # ------------------------------------------------------------------------------------------- public
    @property
    def run_dir(self) -> Path | None:
        """The directory of the current (or last) run's files."""
        return self.tracker.run_dir

    def finish(self, status: str = "finished") -> dict | None:
        """Closes the run: the last interval, `run.json` with `status`, the meter, and the printed report.

        Called by `on_train_end`; call it yourself after a `fit` that raised (or use the callback as a context
        manager). Does nothing when no run is open.

        Args:
            status: `"finished"`, `"interrupted"` or `"failed"`. Defaults to `"finished"`.

        Returns:
            The run's summary (the content of `run.json`), or `None` when no run was open.
        """
        if not self._running:
            return None
        self._running = False
        self._restore_train_function()
        try:
            self.summary = self.tracker.finish(status=status)
        finally:
            self.tracker.close_meter()
        if self.tracker.output_dir is not None:  # a later fit into the same directory continues these totals
            self._continued_state = self.tracker.accountant.state_dict()
        if self.summary is not None and self.tracker.rank == 0:
            print(format_report(self.summary))
        return self.summary

    def __enter__(self) -> CarbonCallback:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            status = "finished"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "interrupted"
        else:
            status = "failed"
        try:
            self.finish(status)
        except Exception as err:  # closing must not hide the user's own exception
            log.warning("carbon-callbacks: closing the run failed: %s", err)
        return False

    # ------------------------------------------------------------------------------------------- hooks
    @_guarded
    def on_train_begin(self, logs=None):
        if self._running:  # the previous fit raised before on_train_end
            self.finish("interrupted")
        self._reset_run_state()
        continued = self._continued_state
        replicas, accelerators = _replicas(self.model)
        self._replicas = replicas
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        info = {
            "framework": f"keras {keras.__version__} ({keras.backend.backend()})",
            "replicas": replicas,
        }
        try:
            info["params_total"] = int(self.model.count_params())
            info["params_source"] = "counted: keras Model.count_params"
        except Exception:  # an unbuilt model has no parameter count yet
            pass
        self.tracker.start(
            output_dir=default_output_dir(),
            log_every_n_steps=DEFAULT_LOG_EVERY_N_STEPS,
            info=info,
            total_steps=steps * epochs if steps and epochs and continued is None else None,
            num_chips=accelerators or None,
        )
        if continued is not None:
            self.tracker.load_state_dict(continued)
        self._running = True
        self.tracker.accountant.flush()  # run.json exists (status running) from the first step on
        given = getattr(self.model, "flops_per_batch", None)
        if self.tracker.flops is None and given is not None:
            self._fixed_flops = float(given)
            self.tracker.accountant.annotate(flops_method="given: model.flops_per_batch")
        elif self.tracker.flops is None:
            self._install_spy()

    @_guarded
    def on_epoch_begin(self, epoch, logs=None):
        self._seen_in_epoch = 0

    @_guarded
    def on_train_batch_end(self, batch, logs=None):
        if not self._running:
            return
        limit = self.params.get("steps")
        end = batch + 1 if not limit else min(batch + 1, limit)
        num_steps = end - self._seen_in_epoch
        if num_steps > 0:
            self._seen_in_epoch = end
            self._record(num_steps, logs.get("loss") if logs else None)
        if logs is not None and self._metrics:
            logs.update(self._metrics)

    def _record(self, num_steps: int, loss) -> None:
        model_flops, hardware_flops = self._step_flops(num_steps)
        self._global_step += num_steps
        closed = self.tracker.step_end(
            model_flops=model_flops,
            hardware_flops=hardware_flops,
            loss=loss if isinstance(loss, float) else None,
            step=self._global_step,
            num_steps=num_steps,
            sync=_waiter(loss),
        )
        if closed:
            self._metrics = self.tracker.metrics()

    @_guarded
    def on_epoch_end(self, epoch, logs=None):
        if not self._running:
            return
        self.tracker.close_interval()
        self._metrics = self.tracker.metrics()
        if logs is not None:
            logs.update(self._metrics)
        self.tracker.accountant.flush()  # a crash later leaves run.json and steps.jsonl as of this epoch

    @_guarded
    def on_train_end(self, logs=None):
        self.finish("finished")

    # ------------------------------------------------------------------------------------------- FLOPs
    def _step_flops(self, num_steps: int) -> tuple[float | None, float | None]:
        """(model, hardware) FLOPs of the `num_steps` steps of the execution that just ended (`None`: unknown)."""
        if self.tracker.flops is not None:
            return None, None  # the tracker applies `flops=` itself
        if self._fixed_flops is not None:
            return self._fixed_flops * num_steps, None
        if self._spy_installed:
            counts = []
            while self._pending:
                key, x = self._pending.popleft()
                counts.append(self._count(key, x))
            if not counts or None in counts:
                return None, None
            return sum(c[0] for c in counts), sum(c[1] for c in counts)
        if keras.backend.backend() == "tensorflow":
            if self._tf_step_flops is None and not self._tf_tried:
                self._tf_tried = True
                self._tf_step_flops = self._count_tf(num_steps)
            if self._tf_step_flops is not None:
                return self._tf_step_flops[0] * num_steps, self._tf_step_flops[1] * num_steps
        return None, None

    def _count(self, key: tuple, x) -> tuple[float, float] | None:
        """(model, hardware) FLOPs of one training step on the inputs `x` (shapes and dtypes `key`), once per key.

        The traced count is what ran: the hardware FLOPs. For a model with a `config` that is a
        `carbon_callbacks.flops.TransformerConfig` (the reference models) and token inputs `(batch, seq)`, the
        model FLOPs (top-k experts, no padding) come from `transformer_flops` at that shape.
        """
        if key in self._flops_cache:
            return self._flops_cache[key]
        self._flops_cache[key] = None  # a failed count is not retried every step
        try:
            from carbon_callbacks import flops as flops_module

            result = flops_module.count(self.model, x, framework="keras")
        except Exception as err:
            self._warn_once(
                "flops",
                f"carbon-callbacks: counting the FLOPs of a training step failed ({type(err).__name__}: {err}); "
                "carbon/flops and MFU are not reported. Pass CarbonCallback(flops=...) to give them.",
            )
            return None
        for message in result.warnings:
            self._warn_once(f"flops:{message}", f"carbon-callbacks: {message}")
        hardware = model = float(result.total)
        info = {"flops_method": result.method}
        config = getattr(self.model, "config", None)
        shapes = [shape for shape, _ in key]
        if isinstance(config, flops_module.TransformerConfig) and len(shapes) == 1 and len(shapes[0]) == 2:
            import dataclasses

            batch, seq = shapes[0]
            exact = flops_module.transformer_flops(dataclasses.replace(config, batch_size=batch, seq_len=seq))
            model = float(exact.model_flops)
            info.update(
                flops_method=f"{result.method}; model FLOPs: transformer_flops (top-k experts, no padding)",
                params_total=exact.params_total,
                params_source="counted: transformer_flops(model.config)",
                percent_active=exact.percent_active,
            )
        self.tracker.accountant.annotate(**info)
        self._flops_cache[key] = (model, hardware)
        log.info("carbon-callbacks: %s model / %s hardware FLOPs per step for inputs %s (%s)", model, hardware, key,
                 info["flops_method"])
        return self._flops_cache[key]

    def _observe_batch(self, batch) -> None:
        """Notes one batch of the execution in progress (JAX and torch); it is counted after the step ran.

        Counting inside the step would trace the model while Keras's JAX trainer holds its variables.
        """
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        key = _spec(x)
        self._pending.append((key, None if key in self._flops_cache else x))

    def _count_tf(self, num_steps: int) -> tuple[float, float] | None:
        """(model, hardware) FLOPs of one TensorFlow step: the batch size from the loss metric's sample count, the shapes from
        the dataset's element spec."""
        import numpy as np
        import tensorflow as tf

        spec = self._tf_element_spec
        tracker = getattr(self.model, "_loss_tracker", None)
        if spec is None or tracker is None:
            self._warn_once(
                "flops",
                "carbon-callbacks: the batch shape of this TensorFlow fit is unknown; carbon/flops and MFU are not "
                "reported. Pass CarbonCallback(flops=...) or set model.flops_per_batch.",
            )
            return None
        samples = float(keras.ops.convert_to_numpy(tracker.count))
        per_replica = max(round(samples / num_steps) // self._replicas, 1)
        x_spec = spec[0] if isinstance(spec, tuple) else spec
        leaves = tf.nest.flatten(x_spec, expand_composites=True)
        if self._replicas > 1:  # PerReplicaSpec(x_0, x_1) flattens to one spec per replica
            leaves = leaves[:: self._replicas]
        arrays = [np.zeros((per_replica, *s.shape[1:]), dtype=s.dtype.as_numpy_dtype) for s in leaves]
        if self._replicas == 1:
            x = tf.nest.pack_sequence_as(x_spec, arrays)
        else:
            x = arrays[0] if len(arrays) == 1 else tuple(arrays)
        flops = self._count(_spec(x), x)
        return None if flops is None else (flops[0] * self._replicas, flops[1] * self._replicas)

    # ------------------------------------------------------------------------------------------- spy
    def _install_spy(self) -> None:
        """Wraps `model.train_function` for this fit so that each batch's shape reaches `_count`.

        JAX and torch hand the train function the batches (a list, or an iterator over them): each is shown to
        `_observe_batch` on its way in. TensorFlow hands it a dataset iterator consumed inside the graph: the
        wrapper keeps its element spec on the first call and removes itself.
        """
        original = getattr(self.model, "train_function", None)
        if original is None:
            return
        observe = self._observe_batch

        if keras.backend.backend() == "tensorflow":

            def train_function(iterator):
                self._tf_element_spec = getattr(iterator, "element_spec", None)
                self._restore_train_function()
                return original(iterator)

        else:

            def train_function(*args):
                data = args[-1]
                if isinstance(data, (list, tuple)):
                    for batch in data:
                        observe(batch)
                else:
                    args = (*args[:-1], _ObservedIterator(data, observe))
                return original(*args)

            self._spy_installed = True
        self._original_train_function = original
        self.model.train_function = train_function

    def _restore_train_function(self) -> None:
        """Puts back the model's own train function (the next `fit` must not see our wrapper)."""
        if self._original_train_function is not None:
            self.model.train_function = self._original_train_function
            self._original_train_function = None
        self._spy_installed = False

    # ------------------------------------------------------------------------------------------- state
    def _reset_run_state(self) -> None:
        self._seen_in_epoch = 0
        self._global_step = 0
        self._metrics: dict[str, float] = {}
        self._replicas = 1
        self._fixed_flops: float | None = None
        self._spy_installed = False
        self._original_train_function = None
        self._pending: deque[tuple[tuple, object]] = deque()
        self._tf_step_flops: tuple[float, float] | None = None
        self._tf_tried = False
        self._tf_element_spec = None

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class _ObservedIterator:
    """An iterator that shows each item to `observe` before the train step gets it."""

    def __init__(self, inner, observe) -> None:
        self._inner = iter(inner)
        self._observe = observe

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._inner)
        self._observe(item)
        return item


def _spec(x) -> tuple:
    """The shapes and dtypes of the arrays in `x`: the key FLOP counts are cached under."""
    return tuple((tuple(a.shape), str(a.dtype)) for a in keras.tree.flatten(x))


def _waiter(loss):
    """A `sync` for the tracker: waits for the step that produced `loss` (a no-op once Keras made it a float)."""
    if loss is None or isinstance(loss, float):
        return None
    return lambda: float(loss)
