"""What a step needs of its batch, read by a plan made once per batch structure.

Each step needs its batch's key (shapes and dtypes: `step_flops.batch_key`, what FLOPs are counted once per) and
where its real tokens are (`step_flops.token_layout`: a mask, packed sequences, or nothing said). Walking the batch
for them costs tens of microseconds per step once a training step has emptied the CPU's caches. The batches of a
run keep their structure (a tensor; a tuple of tensors; a mapping of tensors under the same keys), so
`BatchReader` works out once per structure where the arrays, the mask and the position ids sit, and each step then
reads only those. A structure it has no plan for (nested containers) is walked as before; both give equal results.
`batch_pass` then makes the step's pass of a batch, the same way in every torch adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from carbon_callbacks._run.step_flops import (
    MASK_KEYS,
    NOT_COUNTED,
    POSITIONS_KEY,
    BatchPass,
    PackedSequences,
    SequenceProbe,
    array_leaves,
    batch_key,
    labels_read,
    sequence_lengths,
    token_layout,
    token_shape,
)


class BatchReader:
    """Reads `(batch_key(batch), token_layout(batch))` with a plan per batch structure.

    `read` is the plan of the last structure seen: it checks that a batch still has that structure and hands any
    other to the planner, so a step costs one call (a call in place, after a training step, costs microseconds).
    """

    def __init__(self) -> None:
        self._plans: dict[Any, Callable[[Any], tuple[tuple, Any]]] = {}
        self.read: Callable[[Any], tuple[tuple, Any]] = self._planned

    def __getstate__(self) -> dict:  # the plans are a cache of closures: a copy (pickle, deepcopy) starts afresh
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def _planned(self, batch: Any) -> tuple[tuple, Any]:
        """The plan for `batch`'s structure (made the first time), which becomes `read`."""
        kind = type(batch)
        if kind is tuple or kind is list:
            structure: Any = (kind, len(batch))
        elif isinstance(batch, Mapping):
            structure = (kind, *batch)
        else:
            structure = kind
        plan = self._plans.get(structure)
        if plan is None:
            plan = self._plans[structure] = _plan_for(batch, self._planned)
        self.read = plan
        return plan(batch)


def _walked(batch: Any) -> tuple[tuple, Any]:
    return batch_key(batch), token_layout(batch)


def _plan_for(batch: Any, other: Callable[[Any], tuple[tuple, Any]]) -> Callable[[Any], tuple[tuple, Any]]:
    """The reader of batches shaped like `batch` (a flat one reads its arrays directly, any other is walked); a
    batch of another structure goes to `other`, one whose arrays are gone is walked."""
    kind = type(batch)
    if _is_leaf(batch):
        def read(batch: Any) -> tuple[tuple, Any]:
            if type(batch) is not kind:
                return other(batch)
            return (batch.shape, batch.dtype), None

    elif kind in (tuple, list) and all(_is_leaf(v) for v in batch):
        size = len(batch)

        def read(batch: Any) -> tuple[tuple, Any]:
            if type(batch) is not kind or len(batch) != size:
                return other(batch)
            try:
                if size == 1:  # (x,): what a TensorDataset gives, without a comprehension's call
                    array = batch[0]
                    return ((array.shape, array.dtype),), None
                return tuple([(array.shape, array.dtype) for array in batch]), None
            except AttributeError:  # an element is no longer an array
                return _walked(batch)

    elif isinstance(batch, Mapping):
        read = _mapping_plan(batch, other)
    else:
        def read(batch: Any) -> tuple[tuple, Any]:
            return _walked(batch) if type(batch) is kind else other(batch)

    return read


def _mapping_plan(batch: Mapping, other: Callable[[Any], tuple[tuple, Any]]) -> Callable[[Any], tuple[tuple, Any]]:
    """The plan of mappings under `batch`'s keys: the arrays read directly (other values walked), the mask (else
    the position ids) by key."""
    kind, keys = type(batch), tuple(batch)
    arrays = tuple(_is_leaf(v) for v in batch.values())
    only_arrays = all(arrays)
    mask_keys = tuple(k for k in MASK_KEYS if k in keys)
    positions_key = POSITIONS_KEY if POSITIONS_KEY in keys else None

    def read(batch: Mapping) -> tuple[tuple, Any]:
        if type(batch) is not kind or tuple(batch) != keys:
            return other(batch)
        try:
            if only_arrays:  # the common case, in fewer operations
                key = tuple([(k, (v.shape, v.dtype)) for k, v in batch.items()])
            else:
                key = tuple([(k, (v.shape, v.dtype) if array else batch_key(v, 1))
                             for (k, v), array in zip(batch.items(), arrays)])
        except AttributeError:  # a value is no longer an array
            return _walked(batch)
        for mask_key in mask_keys:
            mask = batch[mask_key]
            if len(getattr(mask, "shape", ())) == 2:
                return key, mask
        if positions_key is not None:
            positions = batch[positions_key]
            if len(getattr(positions, "shape", ())) == 2:
                return key, PackedSequences(positions)
        return key, None

    return read


def _is_leaf(value: Any) -> bool:
    """An array `batch_key` keeps as it is: a `shape` that is a tuple, and a `dtype`."""
    return isinstance(getattr(value, "shape", None), tuple) and getattr(value, "dtype", None) is not None


def batch_pass(session, key: tuple, inputs: Any, fields: Any, layout: Any, count: Callable[[Any, str], Any],
               known: dict, trains: bool = True, figures: Any = NOT_COUNTED) -> BatchPass:
    """One pass over `inputs` whose batch key is `key` (the caller has looked it up in `known` first): its figures
    (`figures` when the caller has read `session.counted` already, else that lookup, else counted once per key with
    `count(inputs, backward)`, after the step, which counting does not change; with a mask, the probe cuts the
    longest sequence) and the real tokens of `fields`, the part of the inputs holding the mask and labels. Kept in
    `known` under `key` when the next passes of this shape need nothing more of the batch (no mask, no labels the
    count depends on)."""
    if figures is NOT_COUNTED:
        figures = session.counted(key, trains=trains)
    if figures is NOT_COUNTED:
        figures = session.count(
            key,
            lambda: count(inputs, "all" if trains else "none"),
            lambda: token_shape(array_leaves(inputs)),
            trace_model=(lambda: count(inputs, "parameters")) if trains else None,
            probe=None if layout is None else SequenceProbe(
                inputs, layout, lambda cut: count(cut, "parameters" if trains else "none")),
            trains=trains,
        )
    labelled = labels_read(figures, fields)
    made = BatchPass(figures, sequence_lengths(fields, layout), labelled=labelled)
    if layout is None and labelled is None:
        known[key] = made
    return made
