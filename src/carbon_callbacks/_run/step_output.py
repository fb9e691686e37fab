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


def add_metrics(out: Any, carbon: dict[str, float]) -> Any:
    """Adds `carbon` to the step's metrics: a bare metrics dict (common with NNX), or the dict that ends a tuple."""
    if isinstance(out, Mapping):
        return _with_carbon(out, carbon)
    if not isinstance(out, tuple) or not out or not isinstance(out[-1], Mapping):
        return out
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
    metrics = out if isinstance(out, Mapping) else out[-1] if isinstance(out, tuple) and out else None
    if isinstance(metrics, Mapping):
        loss = metrics.get("loss")
        if isinstance(loss, (int, float)) or getattr(loss, "shape", None) == ():
            return loss
    return None
