"""What a wrapped training step returns: its metrics gain the `carbon/*` keys, and its loss is found in them.

Framework-agnostic: a step function (JAX/Flax today) returns a metrics mapping, or a tuple ending in one
(`state, metrics = step(state, batch)`); anything else passes through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _with_carbon(metrics: Mapping, carbon: dict[str, float]) -> Mapping:
    """`metrics` with the `carbon` keys added: in place for a plain dict, else a rebuilt mapping."""
    if type(metrics) is dict:
        metrics.update(carbon)  # the step returned a fresh dict: adding keys costs nothing else
        return metrics
    merged = {**metrics, **carbon}
    try:
        return type(metrics)(merged)  # FrozenDict and other mappings built from a dict
    except Exception:  # a mapping type that cannot be rebuilt from a dict: hand back a plain dict
        return merged


def _metrics_of(out: Any) -> Mapping | None:
    """The step's metrics: `out` if it is a mapping, the mapping that ends it if it is a tuple, else `None` (per
    step: the tuple test first, before the mapping ABC's check)."""
    metrics = (out[-1] if out else None) if isinstance(out, tuple) else out
    return metrics if type(metrics) is dict or isinstance(metrics, Mapping) else None


def add_metrics(out: Any, carbon: dict[str, float]) -> Any:
    """Adds `carbon` to the step's metrics: a bare metrics dict (common with NNX), or the dict that ends a tuple."""
    metrics = _metrics_of(out)
    if metrics is None:
        return out
    if metrics is out:
        return _with_carbon(out, carbon)
    merged = _with_carbon(out[-1], carbon)
    if merged is out[-1]:
        return out
    if hasattr(out, "_fields"):  # a NamedTuple
        return type(out)(*out[:-1], merged)
    return (*out[:-1], merged)


def find_loss(out: Any) -> Any:
    """The scalar `loss` entry of the step's metrics dict, left on the device.

    The session keeps it as it is and converts it to a float only when the interval closes, after the device
    sync, so reading the loss never makes a step wait.
    """
    metrics = _metrics_of(out)
    if metrics is not None:
        loss = metrics.get("loss")
        if isinstance(loss, (int, float)) or getattr(loss, "shape", None) == ():
            return loss
    return None
