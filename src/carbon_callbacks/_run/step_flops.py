"""Where a training step's FLOPs and tokens come from, decided once per run and counted once per batch shape.

The order is the same in every adapter: `flops=` given by the user > a `flops_per_batch` attribute of the model >
the analytic count of a model config we know (model FLOPs: activated experts only) with the trace for hardware
FLOPs > the trace alone. Counting happens once per distinct batch shape (for token batches of many lengths, at a
few lengths only: `length_fit`); every later step is a dict lookup.

Model FLOPs are the model's math on the real tokens (docs/flops.md "Model and hardware FLOPs"): a traced count
leaves out what activation checkpointing recomputes and the gradients no parameter needs, and where the batch says
which tokens are padding (an attention mask; the position ids of a packed batch), a step's model FLOPs are the sum
over its sequences of the model FLOPs of one sequence of `n` real tokens (`m` of them labelled), a polynomial
`c0 + c1 n + c2 n^2 + c3 m` (`StepFlops.per_sequence`) known exactly from the config or from counts of one of the
batch's sequences alone, cut to a few lengths (`SequenceProbe`). Hardware FLOPs are what ran.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple

from carbon_callbacks._errors import InvalidInputError, check_number
from carbon_callbacks._run.length_fit import CHECK_LENGTHS, FIT_LENGTHS, LengthFit, SequenceFit, length_family

log = logging.getLogger(__name__)

#: Attribute paths, from the object an adapter trains, where a model config may sit (Lightning `module.config`
#: or `module.model.config`, a Keras model's `config`, a Flax `TrainState.apply_fn`'s module, an NNX bridge).
_CONFIG_PATHS = (("config",), ("model", "config"), ("module", "config"), ("apply_fn", "__self__", "config"))


class StepFlops(NamedTuple):
    """FLOPs and tokens of one training step for one batch shape (`None`: not known).

    Attributes:
        model_flops: FLOPs the model needs on every token position of the batch (activated experts, no recompute,
            only the gradients the parameters need); see `per_sequence` for the real tokens alone.
        hardware_flops: FLOPs that ran (padding, dispatch, recompute).
        method: how they were obtained, as stored in `run.json`'s `info["flops_method"]`.
        tokens: tokens in the batch (batch x sequence of the token ids), when the batch has token ids.
        per_sequence: `(c0, c1, c2, c3)`: the model FLOPs of one sequence of `n` real tokens, `m` of whose labels
            the loss reads, are `c0 + c1 n + c2 n^2 + c3 m` (`None`: not known; then padding stays in
            `model_flops`).
        trains: whether the pass trains (forward and backward; its tokens are the step's) or runs forward only
            (a reference model's forward, scoring samples), whose tokens are not counted again.
    """

    model_flops: float | None
    hardware_flops: float | None
    method: str | None
    tokens: float | None = None
    per_sequence: tuple[float, float, float, float] | None = None
    trains: bool = True

    def times(self, factor: float) -> StepFlops:
        """These figures for `factor` steps (or replicas) of the same shape."""
        per_sequence = None if self.per_sequence is None else tuple(c * factor for c in self.per_sequence)
        return self._replace(per_sequence=per_sequence, **{
            name: None if value is None else value * factor for name, value in
            (("model_flops", self.model_flops), ("hardware_flops", self.hardware_flops), ("tokens", self.tokens))})


class BatchPass(NamedTuple):
    """One pass of a step over one batch, as the interval adds it up when it closes.

    Attributes:
        figures: the pass's FLOPs and token positions (`None`: not counted).
        lengths: the real tokens of each sequence (an attention mask's row sums: a device vector, read only when
            the interval closes), or `None` when the batch does not say which tokens are padding.
        scale: how many sequences each length stands for, as `figures` were scaled (`StepFlops.times`): a
            process's share of a global batch. Defaults to `1`.
        labelled: the tokens of each sequence whose label the loss reads (`labelled_tokens`), or `None`.
    """

    figures: StepFlops | None
    lengths: Any = None
    scale: float = 1.0
    labelled: Any = None


def _is_mapping(value: Any) -> bool:
    """Whether `value` is a mapping; per step, a dict or an array (a `shape`) is told apart before the ABC's check."""
    return type(value) is dict or getattr(value, "shape", None) is None and isinstance(value, Mapping)


def batch_key(batch: Any, depth: int = 0) -> tuple:
    """A hashable description of a batch's array shapes and dtypes (FLOPs are counted once per key).

    Any array with `shape` and `dtype` (torch, NumPy, JAX) is a leaf, its shape a tuple (torch's `Size` is one) and
    its dtype as the framework gives it; mappings, lists and tuples are walked.
    """
    shape = getattr(batch, "shape", None)
    if shape is not None:
        dtype = getattr(batch, "dtype", None)
        if dtype is not None:
            return (shape if isinstance(shape, tuple) else tuple(shape), dtype)
    if depth > 6:
        return ()
    if _is_mapping(batch):
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
        if _is_mapping(candidate):
            for key in MASK_KEYS:
                mask = candidate.get(key)
                if mask is not None and len(getattr(mask, "shape", ())) == 2:
                    return mask
    return None


#: Key of the position ids that delimit the sequences of a padding-free packed batch (each starts at 0).
POSITIONS_KEY = "position_ids"


class PackedSequences:
    """A padding-free packed batch's layout (TRL's `padding_free`, Hugging Face's `DataCollatorWithFlattening`):
    no mask, sequences laid end to end in a row, each starting at position id 0. Read on the host when asked
    (`tolist`: each sequence's length), never on the per-step path."""

    def __init__(self, positions: Any) -> None:
        self.positions = positions
        self.shape = tuple(int(d) for d in positions.shape)

    def spans(self) -> list[tuple[int, int, int]]:
        """(row, first position, length) of every sequence."""
        spans = []
        for row, ids in enumerate(_host_rows(self.positions)):
            starts = [i for i, p in enumerate(ids) if p == 0] or [0]
            spans.extend((row, a, b - a) for a, b in zip(starts, [*starts[1:], len(ids)]))
        return spans

    def tolist(self) -> list[int]:
        return [length for _, _, length in self.spans()]


def token_layout(batch: Any) -> Any:
    """Where a batch's real tokens are: its 2-D mask (`attention_mask`), a `PackedSequences` (no mask, 2-D
    `position_ids`), or `None`."""
    mask = attention_mask(batch)
    if mask is not None:
        return mask
    positions = _find_key(batch, POSITIONS_KEY)
    return PackedSequences(positions) if len(getattr(positions, "shape", ())) == 2 else None


def sequence_lengths(batch: Any, layout: Any = False) -> Any:
    """The real tokens of each sequence of a batch (its mask's row sums, on its device: torch, NumPy, JAX; the
    sequences of a packed batch), or `None` when the batch says nothing of them; `layout` when the caller has its
    `token_layout` already."""
    if layout is False:
        layout = token_layout(batch)
    if isinstance(layout, PackedSequences) or layout is None:
        return layout
    return layout.sum(1) if callable(getattr(layout, "sum", None)) else None


def cut_batch(batch: Any, size: int, length: int, row: int, start: int, stop: int, depth: int = 0) -> Any:
    """One sequence of `batch`, cut: every array's first dimension of `size` (the batch) taken at `row` alone,
    every later dimension of `length` (the sequence) cut to `start:stop` (token ids, masks, labels, position ids
    alike).

    Arrays are anything with `shape` that slices (torch, NumPy, JAX, TensorFlow); mappings, lists and tuples
    (named ones too) are rebuilt around them; anything else is kept.
    """
    shape = getattr(batch, "shape", None)
    if shape is not None and hasattr(batch, "__getitem__") and len(shape) >= 1:
        index = (slice(row, row + 1) if shape[0] == size else slice(None),
                 *(slice(start, stop) if dim == length else slice(None) for dim in shape[1:]))
        return batch[index]
    if depth > 6:
        return batch
    args = (size, length, row, start, stop, depth + 1)
    if isinstance(batch, Mapping):
        cut = {k: cut_batch(v, *args) for k, v in batch.items()}
        try:
            return type(batch)(cut)
        except Exception:  # noqa: BLE001 - a mapping type that cannot be built from a dict
            return cut
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(cut_batch(v, *args) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(cut_batch(v, *args) for v in batch)
    return batch


#: Where a batch carries the labels its loss reads (Hugging Face, Lightning modules built on it), and the label
#: the loss skips.
LABELS_KEY, IGNORED_LABEL = "labels", -100


def labelled_tokens(batch: Any) -> Any:
    """The tokens of each sequence whose label the loss reads (`labels != -100`, row sums on the device), or
    `None` when the batch carries no 2-D `labels` (in a mapping, or one inside a tuple)."""
    labels = _find_key(batch, LABELS_KEY)
    if labels is None or len(getattr(labels, "shape", ())) != 2 or not callable(getattr(labels, "sum", None)):
        return None
    return (labels != IGNORED_LABEL).sum(1)


def labels_read(figures: StepFlops | None, batch: Any) -> Any:
    """`labelled_tokens(batch)` where the pass's model FLOPs depend on them (a per-sequence polynomial with a
    labelled term: a fused LM head), else `None`: no device work on the other steps."""
    if figures is None or figures.per_sequence is None or not figures.per_sequence[3]:
        return None
    return labelled_tokens(batch)


class SequenceProbe:
    """The batch's longest sequence alone, from its first real token, cut to a few lengths (and with a few labels
    skipped, where the batch carries labels) and counted: the points of the model FLOPs of one sequence
    (`StepFlops.per_sequence`, `length_fit.SequenceFit`).

    One sequence alone, cut to its first `n` real tokens, is what "`n` real tokens" means, its labels and all.

    Args:
        batch: the pass's inputs (arrays in mappings, lists, tuples).
        mask: the batch's 2-D mask of real tokens (1) and padding (0), left or right padded, or its
            `PackedSequences` (`token_layout`).
        count: counts one pass on inputs like `batch` (a `FlopCount`).
    """

    def __init__(self, batch: Any, mask: Any, count: Callable[[Any], Any]) -> None:
        self._batch, self._mask, self._count = batch, mask, count
        labels = _find_key(batch, LABELS_KEY)
        self.labelled = len(getattr(labels, "shape", ())) == 2 and callable(getattr(labels, "sum", None))
        self._where: tuple[int, int, int] | None = None  # (row, first real token, real tokens)
        self._labels: list | None = None  # the row's labels, from its first real token

    def plan(self) -> list[tuple[int, int]]:
        """`(tokens, labels skipped)` of the counts that fit and check the polynomial, in order: three lengths
        (two more as checks), and where there are labels, the full length with one, then two, labels skipped."""
        top = self._locate()[2]
        lengths = [n for n in range(top, top - FIT_LENGTHS - CHECK_LENGTHS, -1) if n >= 1]
        if not self.labelled:
            return [(n, 0) for n in lengths]
        return [*((n, 0) for n in lengths[:FIT_LENGTHS]), (top, 1), *((n, 0) for n in lengths[FIT_LENGTHS:4]),
                (top, 2)]

    def labels_read(self, length: int, skipped: int) -> int:
        """Labels the loss reads in the sequence's first `length` tokens, `skipped` of them skipped."""
        self._locate()
        return sum(1 for v in self._labels[:length] if v != IGNORED_LABEL) - skipped

    def __call__(self, length: int, skipped: int = 0):
        """The count of the sequence's first `length` real tokens as a batch of one, its first `skipped` read
        labels skipped."""
        row, start, _ = self._locate()
        size, full = (int(d) for d in self._mask.shape)
        cut = cut_batch(self._batch, size, full, row, start, start + length)
        if skipped:
            cut = _replace_key(cut, LABELS_KEY, lambda labels: _skip_labels(labels, skipped))
        return self._count(cut)

    def _locate(self) -> tuple[int, int, int]:
        if self._where is None:
            if isinstance(self._mask, PackedSequences):
                self._where = max(self._mask.spans(), key=lambda span: span[2])
            else:
                rows = _host_rows(self._mask)
                lengths = [sum(1 for v in r if v) for r in rows]
                row = max(range(len(rows)), key=lambda i: lengths[i])
                first = next((i for i, v in enumerate(rows[row]) if v), 0)
                self._where = (row, first, lengths[row])
            if self.labelled:
                row, first, _ = self._where
                self._labels = _host_rows(_find_key(self._batch, LABELS_KEY))[row][first:]
        return self._where


def _skip_labels(labels: Any, skipped: int) -> Any:
    """`labels` with the first `skipped` read labels of each row set to the ignored label (torch, NumPy, JAX)."""
    read = labels != IGNORED_LABEL
    drop = (read & (read.cumsum(1) <= skipped)) * 1
    return labels * (1 - drop) + IGNORED_LABEL * drop


def _find_key(batch: Any, key: str, depth: int = 0) -> Any:
    """The value under `key` in `batch`, a mapping or a list/tuple holding one, or `None`."""
    if _is_mapping(batch):
        return batch.get(key)
    if isinstance(batch, (list, tuple)) and depth < 2:
        return next((v for v in (_find_key(b, key, depth + 1) for b in batch) if v is not None), None)
    return None


def _replace_key(batch: Any, key: str, fn: Callable[[Any], Any], depth: int = 0) -> Any:
    """`batch` with the value under `key` (see `_find_key`) replaced by `fn(value)`."""
    if isinstance(batch, Mapping):
        return {**batch, key: fn(batch[key])} if key in batch else batch
    if isinstance(batch, (list, tuple)) and depth < 2:
        return type(batch)(_replace_key(b, key, fn, depth + 1) for b in batch)
    return batch


def _host_rows(array: Any) -> list[list]:
    """A 2-D array as Python lists (torch, NumPy, JAX, TensorFlow)."""
    if not callable(getattr(array, "tolist", None)) and callable(getattr(array, "numpy", None)):
        array = array.numpy()
    return array.tolist()


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


#: What `StepFlopsSource.counted` returns for a batch not counted yet (a failed count is `None`).
NOT_COUNTED = object()


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
        self._model_fits: dict[Hashable, LengthFit] = {}
        self._sequence_fits: dict[Hashable, LengthFit] = {}  # traced model FLOPs of one sequence, by length
        self._sequence: LengthFit | None = None  # the model config's FLOPs of one sequence, by its length
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
            self._fits, self._model_fits, self._sequence_fits, self._sequence = {}, {}, {}, None
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

    def counted(self, key: Hashable, trains: bool = True) -> StepFlops | None | object:
        """The figures `for_batch` gave for `key` already (a lookup, for the per-step path), or `NOT_COUNTED`."""
        return self._cache.get((key, trains), NOT_COUNTED)

    def for_batch(
        self,
        key: Hashable,
        trace: Callable[[], Any] | None,
        tokens: Callable[[], tuple[int, int] | None],
        *,
        trace_model: Callable[[], Any] | None = None,
        probe: Callable[[int], Any] | None = None,
        trains: bool = True,
    ) -> StepFlops | None:
        """The figures of one pass over a batch with shape `key`: a lookup, or a count the first time.

        Args:
            key: a hashable description of the batch's shapes and dtypes.
            trace: returns a `carbon_callbacks.flops.FlopCount` of the pass on this batch as it runs (only called
                once per key, and only when the FLOPs are not given); `None` when the pass cannot be traced.
            tokens: returns the batch's `(batch, sequence)` of token ids, or `None`.
            trace_model: returns the pass's count with only the gradients the parameters need (torch:
                `count_step(..., backward="parameters")`); called when the count as it runs recomputed forwards or
                computed other gradients. Defaults to `None`: the count as it runs, less its recompute.
            probe: a `SequenceProbe` of the batch, for the per-sequence polynomial of a batch that says which
                tokens are padding; its counts are made with only the gradients the parameters need. Defaults to
                `None`: the batch has no mask.
            trains: `False` for a pass that runs forward only (see `StepFlops.trains`). Defaults to `True`.
        """
        known = self.counted(key, trains)
        if known is not NOT_COUNTED:
            return known
        cache_key = (key, trains)
        self._cache[cache_key] = None  # a failed count is not retried every step
        shape = tokens()
        n_tokens = float(shape[0] * shape[1]) if shape is not None else None
        if self.fixed is not None:  # given per training step: a pass that only runs forward adds nothing
            result = StepFlops(self.fixed, self.fixed, self.method, n_tokens) if trains else None
        else:
            result = self._count(key, trace, trace_model, probe, shape, n_tokens, trains)
        self._cache[cache_key] = result
        return result

    def _count(self, key, trace, trace_model, probe, shape, n_tokens, trains) -> StepFlops | None:
        analytic = self._analytic(shape) if trains else None
        family = length_family(key, shape[1]) if shape is not None else key
        family = (family, trains)
        traced = self._trace(family, trace, trace_model, shape)
        if analytic is None and traced is None:
            return None
        per_sequence = None
        if analytic is None or (traced is not None and self.trained_share is not None):
            model, hardware, method = traced
            if self.trained_share is not None and trains and analytic is not None:  # frozen weights
                method = (f"model: {method} ({100 * self.trained_share:.3g}% of parameters train; the model "
                          f"config's count assumes all do); hardware: the count as it ran")
            if probe is not None and shape is not None:
                per_sequence = self._traced_per_sequence(family, probe, shape)
        else:
            model = float(analytic.model_flops)
            hardware = float(traced[1]) if traced is not None else float(analytic.hardware_flops)
            method = "model: analytic (activated experts); hardware: " + (traced[2] if traced else "analytic")
            if probe is not None:
                per_sequence = self._analytic_per_sequence()
        if not trains:
            method = f"forward only (no gradients): {method}"
        self._note(**{"flops_method" if trains else "flops_method_forward_only": method})
        if probe is not None:
            self._note(model_flops_padding="excluded: per sequence of real tokens" if per_sequence else
                       "included: the per-sequence polynomial could not be fitted (see flops_method)")
        log.info("carbon-callbacks: %s model, %s hardware FLOPs per pass (%s)", model, hardware, method)
        return StepFlops(float(model), float(hardware), method, n_tokens if trains else None, per_sequence, trains)

    def _trace(self, family, trace, trace_model, shape) -> tuple[float, float, str] | None:
        """(model, hardware FLOPs, method) of one pass as traced: direct counts, or their length polynomials'."""
        if trace is None or not self.traceable:
            return None
        fits, predicted = None, None
        if shape is not None:
            fits = (self._fits.setdefault(family, LengthFit()), self._model_fits.setdefault(family, LengthFit()))
            hardware, predicted = fits[0].predict(shape[1]), fits[1].predict(shape[1])
            if hardware is not None and predicted is not None:
                return predicted, hardware, fits[0].describe()
        self.direct_counts += 1
        self._note(flops_counts=self.direct_counts)
        try:
            result = trace()
            model = result.without_recompute if predicted is None else predicted
            if (result.recomputed or result.other_gradients) and trace_model is not None and predicted is None:
                self.direct_counts += 1
                model_count = trace_model()
                model = model_count.without_recompute
                self._note_warnings(model_count)
        except Exception as err:
            self._warn_once("flops-trace", f"carbon-callbacks: counting a training step's FLOPs failed "
                            f"({type(err).__name__}: {err}); pass flops= or define `flops_per_batch`.")
            return None
        self._note_warnings(result)
        if result.recomputed:
            self._note(activation_checkpointing="the forwards it recomputes are in the hardware FLOPs, not the "
                       "model FLOPs")
        if fits is not None:
            fits[0].method = fits[1].method = result.method
            fits[0].add(shape[1], result.total)
            fits[1].add(shape[1], model)
            if fits[0].failed:
                log.info("carbon-callbacks: this model's FLOPs are not a quadratic in sequence length; every new "
                         "length is counted directly")
        return model, result.total, result.method

    def _note_warnings(self, result) -> None:
        for message in result.warnings:
            self._warn_once(f"flops:{message}", f"carbon-callbacks FLOP count: {message}")

    def _traced_per_sequence(self, family, probe: SequenceProbe, shape) -> tuple[float, ...] | None:
        """The model FLOPs of one sequence (`SequenceFit`): the batch's longest sequence alone, counted at the points
        `probe.plan()` gives until the polynomial is fitted and checked (once per batch family)."""
        fit = self._sequence_fits.get(family)
        if fit is None:
            fit = self._sequence_fits[family] = SequenceFit(probe.labelled)
            try:
                for length, skipped in probe.plan():
                    self.direct_counts += 1
                    fit.add(length, probe.labels_read(length, skipped) if probe.labelled else 0,
                            probe(length, skipped).without_recompute)
                    if fit.trusted or fit.failed:
                        break
            except Exception as err:  # noqa: BLE001 - a batch that cannot be cut keeps its padding
                log.info("carbon-callbacks: counting one sequence of the batch alone failed (%s)", err)
            self._note(flops_counts=self.direct_counts)
        return fit.per_sequence()

    def _analytic_per_sequence(self) -> tuple[float, float, float] | None:
        """The model config's FLOPs of one training sequence by its length: fitted at five lengths (checked)."""
        from carbon_callbacks.flops.analytic import transformer_flops

        if self._sequence is None:
            self._sequence = LengthFit()
            if not self.config.encoder_decoder:  # an encoder-decoder's sequence has two lengths
                for length in range(1, 6):
                    count = transformer_flops(dataclasses.replace(self.config, batch_size=1, seq_len=length))
                    self._sequence.add(length, count.model_flops)
        fit = self._sequence
        return (*(float(c) for c in fit.coefficients), 0.0) if fit.trusted else None

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
