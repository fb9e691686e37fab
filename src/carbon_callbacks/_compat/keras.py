"""What the Keras adapter reads from inside Keras 3, beyond its documented callback API.

Checked against keras 3.11.0 to 3.15.1 on the TensorFlow, JAX and torch backends. Internals used, each in one
function below: the `CallbackList` that calls `Callback.set_model` (to run before the loggers), `Model.train_function`
(set by `make_train_function` at `fit`'s start; wrapped for the fit to see each batch on its way in: under a
multi-process JAX distribution, the global batch) and the loss metric's sample count `Model._loss_tracker.count`
(the TensorFlow backend's batch sizes).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

from carbon_callbacks._compat import calling_list, missing, move_to_front
from carbon_callbacks._host import from_launcher

_CHECKED = "keras 3.11.0 to 3.15.1"


def replicas(model) -> tuple[int, int]:
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


def run_first(callback) -> list[str] | None:
    """Moves `callback` to the front of the `CallbackList` now calling its `set_model`, so every callback after it
    (`CSVLogger`, `TensorBoard`, `History`, ...) sees the keys it adds to `logs`.

    Keras hands one `logs` dict to its callbacks in list order, so a callback placed after `CSVLogger` would add its
    keys after the file was written. `CallbackList.__init__` calls `set_model` on each callback in order; moving the
    one being called to the front keeps every other callback's order and skips or repeats none.

    Returns:
        The class names of the callbacks that were before it (empty if none), or `None` when no `CallbackList` is
        calling (a `set_model` called by hand, or a Keras that no longer calls it from its list).
    """
    owner = calling_list(callback, keras.callbacks.CallbackList)
    return None if owner is None else move_to_front(callback, owner)


@dataclass(frozen=True)
class Processes:
    """The processes of a `fit`: `world` of them, this one `rank`, their `reduce_sum`, this one's `host`, and the
    `share` of a counted batch that is this process's (a batch that is a global array spanning processes counts
    each process's share, so the sum over processes counts the global step once)."""

    world: int = 1
    rank: int = 0
    reduce_sum: Callable | None = None
    host: Any = None
    share: float = 1.0
    warning: str = ""


def processes() -> Processes:
    """The `fit`'s processes on each backend.

    - JAX (`keras.distribution` over `jax.distributed`): JAX's processes; totals summed with JAX's own collective;
      each process sees the global batch (a `jax.Array` over every process's devices), so its share is its devices'.
    - torch (`torch.distributed` initialized, as by `torchrun`): its processes, summed with `all_reduce`.
    - TensorFlow multi-worker (`TF_CONFIG` naming several workers): not reduced; `warning` says so.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        from carbon_callbacks._compat import jax as jax_compat

        if jax.process_count() > 1:
            return Processes(jax.process_count(), jax.process_index(), jax_compat.process_sum,
                             jax_compat.process_host("keras on jax: the host names of every process, gathered"),
                             len(jax.local_devices()) / len(jax.devices()))
    elif backend == "torch":
        import torch

        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from carbon_callbacks._compat.torch import sum_over_ranks

            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            return Processes(dist.get_world_size(), dist.get_rank(), lambda values: sum_over_ranks(values, device),
                             from_launcher(dist.get_rank(), dist.get_world_size()))
    elif backend == "tensorflow":
        workers = (json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster") or {}).get("worker") or []
        if len(workers) > 1:
            return Processes(warning=f"carbon-callbacks: this fit is one of {len(workers)} TensorFlow workers "
                             "(TF_CONFIG); their totals are not summed: each worker writes its own run folder with its "
                             "own process's energy and FLOPs (add them up), and each meters its host's CPU counters.")
    return Processes()


def wrap_train_function(model, before_batch: Callable[[Any], None], after_call: Callable[[Any], None],
                        observe_tf: Callable[[Any], bool] = lambda spec: False):
    """Wraps `model.train_function` for one `fit`: `before_batch(batch)` sees each batch it takes (before its step
    is dispatched), `after_call(iterator)` runs after each call (the iterator on TensorFlow when its batches stay
    inside the graph; `None` when `before_batch` saw them), both on the main thread.

    On TensorFlow the batches stay inside the graph, unless `observe_tf(element_spec)` says they must be seen
    (shapes that vary, a mask to read): then the train function is handed a Python iterator over the dataset's
    iterator, which Keras's own train function (3.11.0 to 3.15.1) runs step by step through the same compiled
    step, and `before_batch` sees each batch.

    Returns:
        A function that puts the original back, or `None` when the model has no `train_function` (warned).
    """
    original = getattr(model, "train_function", None)
    if original is None:
        missing("keras", "Model.train_function", _CHECKED, "FLOPs are not counted in this fit; pass flops=.")
        return None
    if keras.backend.backend() == "tensorflow":
        observe: list[bool] = []  # decided at the first call, from the dataset's element spec

        def train_function(iterator):
            if not observe:
                observe.append(bool(observe_tf(getattr(iterator, "element_spec", None))))
            if not observe[0]:
                out = original(iterator)
                after_call(iterator)
                return out
            first = next(iterator)  # StopIteration ends the epoch, as Keras's own function raises it
            out = original(_Observed(itertools.chain([first], iterator), before_batch))
            after_call(None)
            return out

    else:

        def train_function(*args):
            data = args[-1]
            if isinstance(data, (list, tuple)):
                for batch in data:
                    before_batch(batch)
            else:
                args = (*args[:-1], _Observed(data, before_batch))
            out = original(*args)
            after_call(None)
            return out

    model.train_function = train_function
    return lambda: setattr(model, "train_function", original)


def masks_zero_ids(model) -> bool:
    """Whether the model embeds token ids with `mask_zero=True` (id 0 is padding, and Keras masks it)."""
    layers = getattr(model, "_flatten_layers", None)
    found = layers(include_self=False) if callable(layers) else getattr(model, "layers", [])
    return any(isinstance(layer, keras.layers.Embedding) and getattr(layer, "mask_zero", False) for layer in found)


def loss_sample_count(model) -> int | None:
    """Samples the loss metric has seen this epoch (TensorFlow: the growth gives the batch sizes)."""
    tracker = getattr(model, "_loss_tracker", None)
    if tracker is None:
        missing("keras", "Model._loss_tracker", _CHECKED, "batch sizes on TensorFlow are unknown: FLOPs are not "
                "counted there; pass flops= or use the JAX or torch backend.")
        return None
    return int(keras.ops.convert_to_numpy(tracker.count))


class TfBatchSizes:
    """The global batch size of each step of a TensorFlow fit, whose step is a graph fed by an iterator.

    The sizes come from the growth of the loss metric's sample count (`loss_sample_count`), read on the main
    thread after the first execution (the full batch size) and after the epoch's last one, where the data may run
    out (a ragged final batch), or after every one when the epoch's length is unknown: reading it waits for the
    step, so it is read no more often. `zeros` gives inputs of a size, shaped by the dataset's element spec.
    """

    def __init__(self, model) -> None:
        self._model = model
        self._spec = None
        self._fixed_shapes: bool | None = None
        self._full: int | None = None
        self.new_epoch()

    def new_epoch(self) -> None:
        """Keras resets the loss metric (and its sample count) at each epoch's start."""
        self._counts: dict[int, int] = {}  # batch index after a call -> samples seen by then
        self._seen = 0

    def after_call(self, iterator, end: int, last: bool) -> None:
        """After a train function call whose steps end at the epoch's batch `end`; `last`: the epoch may end here."""
        self._spec = getattr(iterator, "element_spec", None)
        if self._full is None or last:
            count = loss_sample_count(self._model)
            if count is not None:
                self._counts[end] = count

    def sizes(self, end: int, num_steps: int) -> list[int] | None:
        """The sizes of the `num_steps` steps up to batch `end`, or `None` when the shapes are unknown or vary."""
        if self._fixed_shapes is None:
            self._fixed_shapes = fixed_shapes(self._spec)
        seen, full = self._counts.pop(end, None), self._full
        if not self._fixed_shapes or (seen is None and full is None):
            return None
        if seen is None:
            self._seen += full * num_steps
            return [full] * num_steps
        samples, self._seen = seen - self._seen, seen
        if full is None:
            full = self._full = max(round(samples / num_steps), 1)
        return [full] * (num_steps - 1) + [max(samples - full * (num_steps - 1), 1)]

    def zeros(self, per_replica: int, replicas: int):
        """Zero inputs of one replica's step of `per_replica` samples."""
        return zeros_for(self._spec, per_replica, replicas)


def zeros_for(element_spec, per_replica: int, replicas: int):
    """Zero inputs of one replica's step of `per_replica` samples, shaped by a TensorFlow dataset's element spec."""
    import numpy as np
    import tensorflow as tf

    x_spec = element_spec[0] if isinstance(element_spec, tuple) else element_spec
    leaves = tf.nest.flatten(x_spec, expand_composites=True)
    if replicas > 1:  # PerReplicaSpec(x_0, x_1) flattens to one spec per replica
        leaves = leaves[::replicas]
    arrays = [np.zeros((per_replica, *s.shape[1:]), dtype=s.dtype.as_numpy_dtype) for s in leaves]
    if replicas == 1:
        return tf.nest.pack_sequence_as(x_spec, arrays)
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


def fixed_shapes(element_spec) -> bool:
    """Whether a TensorFlow dataset's inputs have a known shape after the batch dimension."""
    import tensorflow as tf

    if element_spec is None:
        return False
    x_spec = element_spec[0] if isinstance(element_spec, tuple) else element_spec
    return not any(None in s.shape[1:] for s in tf.nest.flatten(x_spec, expand_composites=True))


class _Observed:
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
