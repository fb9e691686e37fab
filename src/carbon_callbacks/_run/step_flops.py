"""Where a training step's FLOPs and tokens come from, decided once per run and counted once per batch shape.

The order is the same in every adapter: `flops=` given by the user > a `flops_per_batch` attribute of the model >
the analytic count of a model config we know (model FLOPs: activated experts only) with the trace for hardware
FLOPs > the trace alone. Counting happens once per distinct batch shape (for token batches of many lengths, at a
few lengths only: `length_fit`); every later step is a dict lookup.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple

from carbon_callbacks._errors import InvalidInputError, check_number
from carbon_callbacks._run.length_fit import LengthFit, length_family

log = logging.getLogger(__name__)

#: Attribute paths, from the object an adapter trains, where a model config may sit (Lightning `module.config`
#: or `module.model.config`, a Keras model's `config`, a Flax `TrainState.apply_fn`'s module, an NNX bridge).
_CONFIG_PATHS = (("config",), ("model", "config"), ("module", "config"), ("apply_fn", "__self__", "config"))


class StepFlops(NamedTuple):
    """FLOPs and tokens of one training step for one batch shape (`None`: not known).

    Attributes:
        model_flops: FLOPs the model needs (activated experts only). A count from a model config is over the batch's
            token positions, padded ones included; a traced count is of what the step ran.
        hardware_flops: FLOPs that ran (padding, dispatch, recompute).
        method: how they were obtained, as stored in `run.json`'s `info["flops_method"]`.
        tokens: tokens in the batch (batch x sequence of the token ids), when the batch has token ids.
    """

    model_flops: float | None
    hardware_flops: float | None
    method: str | None
    tokens: float | None = None

    def times(self, factor: float) -> StepFlops:
        """These figures for `factor` steps (or replicas) of the same shape."""
        return StepFlops(*(None if v is None else v * factor for v in (self.model_flops, self.hardware_flops)),
                         self.method, None if self.tokens is None else self.tokens * factor)


def add_step_flops(items: Iterable[StepFlops | None]) -> StepFlops | None:
    """The sum of several steps' figures; a figure is `None` when any step lacks it (`None` for no steps)."""
    items = list(items)
    if not items or any(item is None for item in items):
        return None

    def total(values):
        values = list(values)
        return None if any(v is None for v in values) else float(sum(values))

    return StepFlops(total(i.model_flops for i in items), total(i.hardware_flops for i in items), items[-1].method,
                     total(i.tokens for i in items))


def batch_key(batch: Any, depth: int = 0) -> tuple:
    """A hashable description of a batch's array shapes and dtypes (FLOPs are counted once per key).

    Any array with `shape` and `dtype` (torch, NumPy, JAX) is a leaf; mappings, lists and tuples are walked.
    """
    shape, dtype = getattr(batch, "shape", None), getattr(batch, "dtype", None)
    if shape is not None and dtype is not None:
        return (tuple(shape), str(dtype))
    if depth > 6:
        return ()
    if isinstance(batch, Mapping):
        return tuple((k, batch_key(v, depth + 1)) for k, v in batch.items())
    if isinstance(batch, (list, tuple)):
        return tuple(batch_key(v, depth + 1) for v in batch)
    return (type(batch).__name__,)


def array_leaves(batch: Any, depth: int = 0) -> Iterable[tuple[tuple[int, ...], bool]]:
    """(shape, is_integer) of every array in a batch, in order (for `token_shape`)."""
    shape, dtype = getattr(batch, "shape", None), getattr(batch, "dtype", None)
    if shape is not None and dtype is not None:
        yield tuple(shape), "int" in str(dtype)
    elif depth <= 6:
        values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
        for value in values:
            yield from array_leaves(value, depth + 1)


def token_shape(leaves: Iterable[tuple[tuple[int, ...], bool]]) -> tuple[int, int] | None:
    """(batch, sequence) of the first 2-D integer array among `(shape, is_integer)` leaves: a language model's ids."""
    for shape, is_integer in leaves:
        if is_integer and len(shape) == 2:
            return int(shape[0]), int(shape[1])
    return None


#: Keys under which a batch carries the mask of its real (non-padding) tokens: Hugging Face, KerasHub.
MASK_KEYS = ("attention_mask", "padding_mask")


def attention_mask(batch: Any) -> Any:
    """The 2-D mask of real tokens a batch carries under `MASK_KEYS` (a mapping, or one inside a tuple), or `None`.

    Its sum is the batch's tokens without padding; it is summed on its device, read when an interval closes.
    """
    for candidate in (batch, *(batch if isinstance(batch, (list, tuple)) else ())):
        if isinstance(candidate, Mapping):
            for key in MASK_KEYS:
                mask = candidate.get(key)
                if mask is not None and len(getattr(mask, "shape", ())) == 2:
                    return mask
    return None


def find_model_config(*candidates: Any):
    """The `TransformerConfig` one of `candidates` carries (see `_CONFIG_PATHS`), or `None`.

    A Hugging Face `PretrainedConfig` (an object with `model_type` and `to_dict`) is read with
    `TransformerConfig.from_hf`; one whose architecture the analytic count does not know is left to the trace.
    """
    from carbon_callbacks.flops.analytic import TransformerConfig

    for candidate in candidates:
        for path in _CONFIG_PATHS:
            value = candidate
            for name in path:
                value = getattr(value, name, None)
                if value is None:
                    break
            if isinstance(value, TransformerConfig):
                return value
            if isinstance(getattr(value, "model_type", None), str) and callable(getattr(value, "to_dict", None)):
                try:
                    return TransformerConfig.from_hf(value, seq_len=1)
                except InvalidInputError as err:
                    log.info("carbon-callbacks: model FLOPs come from the trace: %s", err)
    return None


class StepFlopsSource:
    """Decides where a run's FLOPs come from and counts each batch shape once.

    Args:
        given: `flops=` of the adapter, per training step. Defaults to `None`.
        warn_once: `(key, message)` callable that warns once per run.
        annotate: `(**info)` callable that stores run facts in `run.json`'s `info`.
    """

    def __init__(self, given: float | None, warn_once: Callable[[str, str], None], annotate: Callable[..., None]):
        self.given = given
        self._warn_once = warn_once
        self._annotate = annotate
        self._cache: dict[Hashable, StepFlops | None] = {}
        self._fits: dict[Hashable, LengthFit] = {}
        self._source: tuple = (None,) * 5  # (model, fixed, method, config, trained share) of the counts kept
        self._facts: dict = {}  # what the counts found, for `run.json`'s `info`
        self.direct_counts = 0
        self.fixed: float | None = None
        self.method: str | None = None
        self.config = None
        self.traceable = True
        self.trained_share: float | None = None

    def reset(self, model: Any = None, *, config: Any = None, traceable: bool = True,
              untraceable_reason: str = "", trainable: tuple[int, int] | None = None) -> None:
        """Chooses the source for a new run of `model` (the object the framework trains).

        A new run of the same model from the same source keeps the counts made so far (a second `fit` costs no
        new trace) and what they found. With `trainable` = (parameters that train, all parameters) and some
        frozen (LoRA, a frozen backbone), the model FLOPs come from the traced step, which runs no weight gradient
        for frozen weights, instead of the model config's count, which assumes every weight trains.
        """
        attribute = getattr(model, "flops_per_batch", None) if model is not None else None
        found, config = config, None
        if self.given is not None:
            fixed, method = self.given, "given"
        elif attribute is not None and self._usable(attribute):
            owner = getattr(model, "__qualname__", None) or type(model).__name__
            fixed, method = float(attribute), f"given: {owner}.flops_per_batch"
        else:
            fixed, method = None, None
            config = (find_model_config(model) if model is not None else None) or found
        self.trained_share = None
        if trainable is not None and trainable[1] > 0 and trainable[0] < trainable[1]:
            self.trained_share = trainable[0] / trainable[1]
        source = (model, fixed, method, config, self.trained_share)
        if model is None or model is not self._source[0] or source[1:] != self._source[1:]:
            self._cache = {}
            self._fits: dict[Hashable, LengthFit] = {}
            self._facts: dict = {}
            self.direct_counts = 0  # steps traced so far: the counting cost
        self._source = source
        self.fixed, self.method, self.config, self.traceable = fixed, method, config, traceable
        if fixed is None and not traceable and config is None:
            self._warn_once("flops-untraceable", f"carbon-callbacks: {untraceable_reason} carbon/flops and MFU are "
                            "not reported; pass flops= or define `flops_per_batch`.")
        if fixed is None and not traceable and config is not None and self.trained_share is not None:
            self._warn_once("flops-frozen", f"carbon-callbacks: {100 * self.trained_share:.3g}% of the parameters "
                            "train, but the step cannot be traced here, so the model FLOPs come from the model "
                            "config, which counts a weight gradient for every weight and overstates this step's "
                            "(and its MFU); pass flops= with the step's FLOPs.")
        if trainable is not None:  # one count for "parameters" and "% parameters trained"
            self._annotate(params_total=int(trainable[1]), params_trainable=int(trainable[0]),
                           percent_trainable=100.0 * trainable[0] / trainable[1] if trainable[1] else None)
        self._annotate(**({"flops_method": method} if method else {}), **self._facts)

    @property
    def can_count(self) -> bool:
        """Whether this run's steps can get model FLOPs: given, from a model config, or traceable."""
        return self.fixed is not None or self.config is not None or self.traceable

    def _usable(self, attribute: Any) -> bool:
        """Whether a `flops_per_batch` attribute is a usable number; if not, warns once and the FLOPs are counted."""
        try:
            check_number("flops_per_batch", attribute, non_negative=True)
        except InvalidInputError as err:
            self._warn_once("flops_per_batch", f"carbon-callbacks: {err} It is ignored and the FLOPs are counted.")
            return False
        return True

    def for_batch(
        self,
        key: Hashable,
        trace: Callable[[], Any] | None,
        tokens: Callable[[], tuple[int, int] | None],
    ) -> StepFlops | None:
        """The figures of one step on a batch with shape `key`: a lookup, or a count the first time.

        Args:
            key: a hashable description of the batch's shapes and dtypes.
            trace: returns a `carbon_callbacks.flops.FlopCount` of one step on this batch (only called once per
                key, and only when the FLOPs are not given); `None` when the step cannot be traced.
            tokens: returns the batch's `(batch, sequence)` of token ids, or `None`.
        """
        try:
            return self._cache[key]
        except KeyError:
            pass
        self._cache[key] = None  # a failed count is not retried every step
        shape = tokens()
        n_tokens = float(shape[0] * shape[1]) if shape is not None else None
        if self.fixed is not None:
            result = StepFlops(self.fixed, self.fixed, self.method, n_tokens)
        else:
            result = self._count(key, trace, shape, n_tokens)
        self._cache[key] = result
        return result

    def _count(self, key, trace, shape, n_tokens) -> StepFlops | None:
        analytic = self._analytic(shape)
        traced = self._trace(key, trace, shape)
        if analytic is None and traced is None:
            return None
        if analytic is None:
            model = hardware = float(traced[0])
            method = traced[1]
        elif traced is not None and self.trained_share is not None:  # frozen weights: the step that runs
            model = hardware = float(traced[0])
            method = (f"model: {traced[1]} ({100 * self.trained_share:.3g}% of parameters train; the model config's "
                      f"count assumes all do); hardware: the same")
        else:
            model = float(analytic.model_flops)
            hardware = float(traced[0]) if traced is not None else float(analytic.hardware_flops)
            method = "model: analytic (activated experts); hardware: " + (traced[1] if traced else "analytic")
        self._note(flops_method=method)
        log.info("carbon-callbacks: %s model, %s hardware FLOPs per step (%s)", model, hardware, method)
        return StepFlops(model, hardware, method, n_tokens)

    def _trace(self, key, trace, shape) -> tuple[int, str] | None:
        """(FLOPs, method) of one step as traced: a direct count, or its length polynomial's prediction."""
        if trace is None or not self.traceable:
            return None
        fit = None
        if shape is not None:
            fit = self._fits.setdefault(length_family(key, shape[1]), LengthFit())
            predicted = fit.predict(shape[1])
            if predicted is not None:
                return predicted, fit.describe()
        self.direct_counts += 1
        self._note(flops_counts=self.direct_counts)
        try:
            result = trace()
        except Exception as err:
            self._warn_once("flops-trace", f"carbon-callbacks: counting a training step's FLOPs failed "
                            f"({type(err).__name__}: {err}); pass flops= or define `flops_per_batch`.")
            return None
        for message in result.warnings:
            self._warn_once(f"flops:{message}", f"carbon-callbacks FLOP count: {message}")
        if fit is not None:
            fit.method = result.method
            fit.add(shape[1], result.total)
            if fit.failed:
                log.info("carbon-callbacks: this model's FLOPs are not a quadratic in sequence length; every new "
                         "length is counted directly")
        return result.total, result.method

    def _note(self, **facts) -> None:
        """Annotates the run with what a count found, and keeps it for a later run of the same model."""
        self._facts.update(facts)
        self._annotate(**facts)

    def _analytic(self, shape):
        """The exact count of the known config at this batch shape; `None` without a config.

        The parameters (from the config as it was given: a learned position table's size does not change with a
        batch's length) and the split by layer kind (at the first batch's shape) are annotated once.
        """
        if self.config is None or shape is None:
            return None
        from carbon_callbacks.flops.analytic import transformer_flops

        analytic = transformer_flops(dataclasses.replace(self.config, batch_size=shape[0], seq_len=shape[1]))
        if "params_total" not in self._facts:
            given = transformer_flops(self.config)
            self._note(
                params_total=given.params_total,
                params_active_per_token=given.params_active_per_token,
                percent_active=given.percent_active,
                params_source="analytic: model config",
                flops_by_layer_kind={"model": analytic.breakdown, "hardware": analytic.hardware_breakdown},
            )
        return analytic
