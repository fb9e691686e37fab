"""What carbon-callbacks reads from inside JAX and Flax, beyond their documented APIs.

Checked against jax 0.4.30 to 0.10.2 and flax 0.8.5 to 0.12.8.
"""

from __future__ import annotations

from typing import Any


def jit_cache_size(fn: Any) -> int | None:
    """Entries in a jitted function's compilation cache (`jax.jit`'s `_cache_size()`; an `nnx.jit` function keeps
    its `jax.jit` function as `jitted_fn`), or `None` for a function that is not jitted.

    Only an optimisation reads it (skipping the signature of a step whose cache did not grow), so a JAX without it
    costs a tree flatten per step and nothing else: no warning.
    """
    size = getattr(fn, "_cache_size", None) or getattr(getattr(fn, "jitted_fn", None), "_cache_size", None)
    if size is None:
        return None
    try:
        return int(size())
    except Exception:
        return None
