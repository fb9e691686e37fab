"""Keras 3 adapter: `CarbonCallback` puts energy, CO2e, FLOPs and MFU into `model.fit`'s logs.

One callback for the TensorFlow, JAX and torch backends. It only maps Keras's hooks onto
`carbon_callbacks.RunSession`: here are Keras's hooks, how a batch's shape reaches us on each backend, and the
`logs` dict. What it reads from inside Keras is in `carbon_callbacks._compat.keras`.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

try:
    import keras
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError("carbon_callbacks.keras needs Keras 3 and a backend: pip install 'carbon-callbacks[keras]'"
                      ) from _err

from carbon_callbacks._compat import keras as _keras
from carbon_callbacks._run.session import RunSession, guarded, status_at_exit
from carbon_callbacks._run.step_flops import (
    BatchPass,
    SequenceProbe,
    array_leaves,
    attention_mask,
    batch_key,
    token_shape,
)
from carbon_callbacks._site.trace import IntensityTrace
from carbon_callbacks.flops import count

#: Steps per logging interval when `log_every_n_steps` is not given. Keras has no logging interval of its own (its
#: progress bar redraws every batch), so this is Lightning's `Trainer(log_every_n_steps=50)` default,
#: https://lightning.ai/docs/pytorch/stable/common/trainer.html#log-every-n-steps . Each epoch end also closes one.
DEFAULT_LOG_EVERY_N_STEPS = 50
#: Longest wait, in s, for a batch end Keras has queued but not yet run (each waits for its step only): at
#: `finish`, and for the batch end before one that came out of order.
PENDING_WAIT_S = 30.0
#: The pass of a batch whose FLOPs could not be counted.
_NOT_COUNTED = BatchPass(None)


class CarbonCallback(keras.callbacks.Callback):
    """Energy, CO2e, FLOPs and MFU of `model.fit`, in the logs next to the loss.

    Every logging interval (`log_every_n_steps` steps) and at each epoch end, the callback reads the energy meter
    and puts `carbon/energy_kwh`, `carbon/co2e_kg`, `carbon/co2e_net_kg`, `carbon/flops`, `carbon/step_time_s` and
    (when the chip's peak is known) `carbon/mfu` into the `logs` dict; between intervals the last values are
    carried. It runs first among the fit's callbacks wherever it is in `callbacks=[...]`, so `History`, `CSVLogger`,
    `TensorBoard` and the progress bar all show them. At the end of training it prints the report once and writes
    `run.json`, `steps.csv` and `report.md`.

    Args:
        region, intensity, net_intensity, pue, chip, dtype, flops, meter, nvml, rapl, training_type,
            continue_runs: as every adapter takes them (see `carbon_callbacks.RunSession`); one of
            `region`/`intensity` is required.
        num_chips: chips in the run. Defaults to `None`: the accelerator replicas of the model's distribution, else 1.
        output_dir: where the run files are written. Defaults to `None`: `./carbon-runs/<timestamp>`, a new one for
            every `fit` (unless `continue_runs`).
        log_every_n_steps: training steps per logging interval. Defaults to `None`: `DEFAULT_LOG_EVERY_N_STEPS`.

    Raises:
        InvalidInputError: at construction, for a missing location or an unusable number.
        UnknownNameError: for a region or chip not in the tables.

    Example:
        >>> from carbon_callbacks.keras import CarbonCallback
        >>> history = model.fit(x, y, epochs=3, callbacks=[CarbonCallback(region="us-central1")])  # doctest: +SKIP
        >>> history.history["carbon/co2e_kg"]  # doctest: +SKIP

    Notes:
        Callback order, timing, `steps_per_execution`, distribution, interruption and how FLOPs are counted on
        each backend: `docs/adapters.md`.
    """

    #: Keras may run `on_train_batch_end` on a worker thread, so the train loop never waits for us: each batch's
    #: FLOPs are counted on the main thread as the train function takes it and matched to its step by index; the
    #: batch end (under a lock, in step order) only adds them up. See `docs/adapters.md`.
    async_safe = True

    def __init__(
        self,
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
        continue_runs: bool = False,
    ) -> None:
        super().__init__()
        self.session = RunSession(
            region=region, intensity=intensity, net_intensity=net_intensity, pue=pue, chip=chip, num_chips=num_chips,
            output_dir=output_dir, log_every_n_steps=log_every_n_steps, flops=flops, meter=meter, nvml=nvml,
            rapl=rapl, dtype=dtype, training_type=training_type, continue_runs=continue_runs,
        )
        self._lock = threading.Condition()  # batch ends may run on Keras's worker threads, in any order
        self._before: list[str] | None = []
        self._restore = None
        self._trained = None  # the model, taken once per fit: on JAX, `self.model` syncs the trainer's state
        self._replicas = 1
        self._global_step = self._epoch = 0
        self._tf_sizes: _keras.TfBatchSizes | None = None  # TensorFlow: the batch sizes, from the loss metric
        self._tf_observed = False  # TensorFlow: the batches are seen one by one (shapes vary, or masks are read)
        self._masks_zero = False  # the model embeds ids with mask_zero: id 0 is padding
        self._processes = _keras.Processes()
        self._new_epoch()

    def _new_epoch(self) -> None:
        """Keras resets its metrics at each epoch's start, the loss's sample count too."""
        self._taken = self._dispatched = self._ended = 0  # batches taken by, dispatched to, ended in the epoch
        self._first_of: dict[int, int] = {}  # a train function call's end batch index -> its first one
        self._counted: dict[int, tuple] = {}  # batch index -> (StepFlops, real tokens), until its step ends
        if self._tf_sizes is not None:
            self._tf_sizes.new_epoch()

    # ------------------------------------------------------------------------------------------- public
    @property
    def run_dir(self) -> Path | None:
        """The directory of the current (or last) run's files."""
        return self.session.run_dir

    @property
    def summary(self) -> dict | None:
        """The last finished run's `run.json` content (`None` before the first run ends)."""
        return self.session.finished_summary

    def finish(self, status: str = "finished") -> dict | None:
        """Closes the run: the last interval, `run.json` with `status`, the meter, and the printed report.

        Called by `on_train_end`; call it yourself after a `fit` that raised (or use the callback as a context
        manager). Waits first for the batch ends Keras had queued for steps that ran. Does nothing when no run is
        open.

        Returns:
            The run's summary (the content of `run.json`), or `None` when no run was open.
        """
        if self._restore is not None:
            self._restore, restore = None, self._restore
            restore()
        with self._lock:
            self._lock.wait_for(lambda: self._ended >= self._dispatched, timeout=PENDING_WAIT_S)
            return self.session.finish(status)

    def __enter__(self) -> CarbonCallback:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._finish_guarded(self.session.ending_status(exc))
        return False

    @guarded
    def _finish_guarded(self, status: str) -> None:  # closing must not hide the user's own exception
        self.finish(status)

    # ------------------------------------------------------------------------------------------- hooks
    def set_model(self, model):
        super().set_model(model)
        try:
            self._before = _keras.run_first(self)
        except Exception:  # never fail Keras's own setup; on_train_begin warns about the order
            self._before = None

    @guarded
    def on_train_begin(self, logs=None):
        session = self.session
        if self._before is None:
            session.warn("order", "carbon-callbacks: could not place CarbonCallback first among the fit's callbacks "
                         "(no Keras CallbackList called it); put it before CSVLogger and TensorBoard in callbacks=[...]"
                         " so they get the carbon/* keys.")
        if session.running:  # the previous fit raised before on_train_end
            self.finish("interrupted")
        self._trained, self._global_step, self._epoch = self.model, 0, 0
        self._new_epoch()
        self._replicas, accelerators = _keras.replicas(self._trained)
        group = self._processes = _keras.processes()
        if group.warning:
            session.warn("processes", group.warning)
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        info = {"framework": f"keras {keras.__version__} ({keras.backend.backend()})", "replicas": self._replicas}
        trainable = None
        if self._trained.built:
            info.update(params_total=int(self._trained.count_params()),
                        params_source="counted: keras Model.count_params")
            trainable = (sum(math.prod(w.shape) for w in self._trained.trainable_weights), info["params_total"])
        session.start(
            model=self._trained,
            log_every_n_steps=DEFAULT_LOG_EVERY_N_STEPS,
            info=info,
            total_steps=steps * epochs if steps and epochs else None,
            num_chips=accelerators or None,
            device_sync=lambda loss: loss is None or float(loss),
            trainable=trainable,
            end=lambda signum: self.finish(status_at_exit(signum)),
            world_size=group.world,
            rank=group.rank,
            reduce_sum=group.reduce_sum,
            host=group.host,
        )
        self._tf_sizes = _keras.TfBatchSizes(self._trained) if keras.backend.backend() == "tensorflow" else None
        self._masks_zero = _keras.masks_zero_ids(self._trained)
        self._tf_observed = False
        self._restore = _keras.wrap_train_function(self._trained, self._before_batch, self._after_call,
                                                   self._observe_tf)

    @guarded
    def on_epoch_begin(self, epoch, logs=None):
        self._new_epoch()  # the previous epoch's batch ends have all run (Keras waits for them)
        self._epoch = epoch

    @guarded
    def on_train_batch_end(self, batch, logs=None):
        with self._lock:
            limit = self.params.get("steps")
            end = batch + 1 if not limit else min(batch + 1, limit)
            # Keras's worker threads may run batch ends out of order: each waits for the one before it.
            before = self._first_of.pop(end, self._ended)
            if self._ended < before:
                self._lock.wait_for(lambda: self._ended >= before, timeout=PENDING_WAIT_S)
            first = self._ended
            try:
                if end > first and self.session.running:
                    self._global_step += end - first
                    loss = logs.get("loss") if logs else None
                    self.session.step_end(batches=self._passes_of_steps(first, end), loss=loss,
                                          step=self._global_step, num_steps=end - first, outputs=loss,
                                          epoch=self._epoch)
                if logs is not None and self.session.running:
                    logs.update(self.session.metrics)
            finally:
                self._ended = max(self._ended, end)  # the next batch end may go on
                self._lock.notify_all()

    @guarded
    def on_epoch_end(self, epoch, logs=None):
        with self._lock:
            if not self.session.running:
                return
            self.session.close_interval(epoch=epoch)
            if logs is not None:
                logs.update(self.session.metrics)
            self.session.flush()  # a crash later leaves run.json and steps.csv as of this epoch

    @guarded
    def on_train_end(self, logs=None):
        self.finish("finished")

    # ------------------------------------------------------------------------------------------- FLOPs
    def _observe_tf(self, element_spec) -> bool:
        """TensorFlow: whether the fit's batches must be seen one by one (`_compat.keras.wrap_train_function`): their
        shapes vary, or their real tokens are to be read (a padding mask, ids under `mask_zero`)."""
        if element_spec is None:
            return False
        x_spec = element_spec[0] if isinstance(element_spec, tuple) else element_spec
        self._tf_observed = (not _keras.fixed_shapes(element_spec) or self._masks_zero
                             or attention_mask(x_spec) is not None)
        return self._tf_observed

    def _before_batch(self, batch) -> None:
        """Counts a batch as the train function takes it (main thread): its index's FLOPs and tokens."""
        index, self._taken = self._taken, self._taken + 1
        try:
            x = keras.utils.unpack_x_y_sample_weight(batch)[0]
            share = self._processes.share  # a global batch: this process's share of it
            mask = self._mask(x)
            lengths = None if mask is None else mask.sum(axis=1).astype("float64")
            self._counted[index] = BatchPass(self._count(x, replicas=share, mask=mask), lengths, share)
        except Exception as err:
            self.session.warned_failure("counting a batch's FLOPs", err)

    def _mask(self, x):
        """The mask of `x`'s real tokens (NumPy, on the host): its padding mask, or under `mask_zero` its nonzero
        ids; `None` when it has neither."""
        import numpy as np

        mask = attention_mask(x)
        if mask is None and self._masks_zero:
            ids = next((a for a in keras.tree.flatten(x) if len(a.shape) == 2 and "int" in str(a.dtype)), None)
            mask = None if ids is None else np.asarray(ids) != 0
        return None if mask is None else np.asarray(mask)

    def _after_call(self, iterator) -> None:
        """After each train function call (main thread): the steps it dispatched; on TensorFlow, their batch sizes."""
        first = self._dispatched  # where the previous call's steps ended
        if iterator is not None:  # TensorFlow: the batches stayed in the graph; count the loss metric's samples
            limit = self.params.get("steps") or float("inf")
            self._taken = min(first + self._trained.steps_per_execution, limit)
            self._tf_sizes.after_call(iterator, self._taken, last=self._taken == limit or limit == float("inf"))
        with self._lock:  # these steps' ends will come
            self._dispatched = self._taken
            self._first_of[self._taken] = first

    def _passes_of_steps(self, first: int, end: int) -> list[BatchPass]:
        """The passes of the epoch's batches `first` to `end - 1`, which just ran."""
        if self._tf_sizes is None or self._tf_observed:  # not TensorFlow, or its batches seen one by one
            return [self._counted.pop(i, _NOT_COUNTED) for i in range(first, end)]
        sizes = self._tf_sizes.sizes(end, end - first)
        if sizes is None:
            self.session.warn("tf-shape", "carbon-callbacks: the batch shape of this TensorFlow fit is unknown; "
                              "carbon/flops and MFU are not reported. Pass flops= or set model.flops_per_batch.")
            return []
        x = [self._tf_sizes.zeros(max(size // self._replicas, 1), self._replicas) for size in sizes]
        return [BatchPass(self._count(sample, replicas=self._replicas)) for sample in x]

    def _count(self, x, replicas: int = 1, mask=None):
        """One step's figures on inputs `x`, counted once per shape by the session; with the `mask` of its real
        tokens, the model FLOPs of one sequence by its length too."""
        probe = None if mask is None else SequenceProbe(x, mask, lambda cut: count(self._trained, cut,
                                                                                   framework="keras"))
        return self.session.count(batch_key(x), lambda: count(self._trained, x, framework="keras"),
                                  lambda: token_shape(array_leaves(x)), replicas=replicas, probe=probe)
