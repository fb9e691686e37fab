"""FLOP counting: an exact analytic counter for dense and MoE transformers, and traced counters.

- `transformer_flops(TransformerConfig(...))`: model and hardware FLOPs per training step, parameters total and
  activated per token, and a breakdown by layer kind. Pure Python. `TransformerConfig.from_hf(config)` reads the
  shape from a Hugging Face config (a `PretrainedConfig` or the dict of a `config.json`).
- `count(fn, *args, **kwargs)`: runs or traces `fn(*args, **kwargs)` once and counts the FLOPs of its matrix
  products with the framework's own tracer (torch, JAX, TensorFlow; a Keras model through its backend's).
- `count_step(module, step, *inputs)`: one torch training step counted on meta or fake tensors, without running it;
  `trainable_fraction(module)`: the parameters it trains and all of them.

Importing this package imports no framework; `count` imports the one it needs. The conventions (2 FLOPs per
multiply-add, matrix products only, backward = 2 x forward; convolutions: every kernel tap at every output
position, padding taps included, as torch's counter and published CNN FLOPs count them) are in
`carbon_callbacks.flops.analytic` and docs/flops.md.
"""

from __future__ import annotations

import sys
from typing import Any

from carbon_callbacks._errors import InvalidInputError, unknown_name
from carbon_callbacks.flops._result import FakeCountError
from carbon_callbacks.flops._result import FlopCount
from carbon_callbacks.flops._result import classify_module
from carbon_callbacks.flops.analytic import LAYER_KINDS
from carbon_callbacks.flops.analytic import MOE_IMPLEMENTATIONS
from carbon_callbacks.flops.analytic import TransformerConfig
from carbon_callbacks.flops.analytic import TransformerFlops
from carbon_callbacks.flops.analytic import expert_capacity
from carbon_callbacks.flops.analytic import transformer_flops

__all__ = [
    "FRAMEWORKS",
    "FakeCountError",
    "FlopCount",
    "LAYER_KINDS",
    "MOE_IMPLEMENTATIONS",
    "TransformerConfig",
    "TransformerFlops",
    "classify_module",
    "count",
    "count_step",
    "detect_framework",
    "expert_capacity",
    "trainable_fraction",
    "transformer_flops",
]

#: Frameworks `count` can trace.
FRAMEWORKS = ("torch", "jax", "keras", "tensorflow")


def _leaves(obj: Any, depth: int = 0):
    """Yields the leaves of nested lists, tuples and dicts (enough to see what arrays `fn` gets)."""
    if depth > 8:
        return
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _leaves(value, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _leaves(value, depth + 1)
    else:
        yield obj


def detect_framework(fn: Any, *args: Any, **kwargs: Any) -> str:
    """Names the framework of `fn` and its arguments: `torch`, `jax`, `keras` or `tensorflow`.

    Only frameworks that are already imported are looked at, so detection imports nothing.

    Raises:
        InvalidInputError: if neither `fn` nor any argument belongs to a known framework.
    """
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(fn, keras.Model):
        return "keras"
    torch = sys.modules.get("torch")
    leaves = list(_leaves((args, kwargs)))
    if torch is not None and (
        isinstance(fn, torch.nn.Module) or any(isinstance(x, torch.Tensor) for x in leaves)
    ):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None:
        if any(isinstance(x, jax.Array) for x in leaves) or hasattr(fn, "lower") and hasattr(fn, "trace"):
            return "jax"
        flax_linen = sys.modules.get("flax.linen")
        if flax_linen is not None and isinstance(getattr(fn, "__self__", None), flax_linen.Module):
            return "jax"
    tf = sys.modules.get("tensorflow")
    if tf is not None and any(isinstance(x, (tf.Tensor, tf.Variable)) for x in leaves):
        return "tensorflow"
    raise InvalidInputError(
        f"framework: cannot tell which framework runs {fn!r} from it and its arguments (no torch tensor or "
        f"module, jax array, keras model or tensorflow tensor among them). Pass framework= one of {FRAMEWORKS}."
    )


def count(fn: Any, *args: Any, framework: str | None = None, **kwargs: Any) -> FlopCount:
    """Counts the FLOPs of one call `fn(*args, **kwargs)` by tracing it once.

    Pass a whole training step (forward, loss, gradients) to count it as it runs; pass a model (a
    `torch.nn.Module` or `keras.Model`) or a forward function to count a step from its forward. The framework is
    chosen from `fn` and its arguments:
    - torch: the formulas of `torch.utils.flop_counter` (what `FlopCounterMode` counts, through a leaner
      dispatch mode of this library's), plus formulas for the ops they count as zero (CPU scaled-dot-product
      attention, grouped matmul). A module is run forward + backward on the `meta` device when it allows it (no
      memory, no compute), else on its own device.
    - jax: the step's jaxpr, counting `dot_general` and convolutions, with `scan` bodies multiplied by their
      length and `shard_map` bodies by the devices they run on (a step sharded over a mesh counts once,
      globally).
    - keras: through the tracer of the backend Keras runs on (JAX, torch or TensorFlow), as `KERAS_BACKEND` says.
    - tensorflow: the `tf.function` graph, counting MatMul, BatchMatMul, Einsum and Conv, whatever the Keras
      backend.

    Count once per distinct input shape, not per step: tracing costs about one step or more.

    Args:
        fn: the step, forward function or model.
        *args: its positional arguments.
        framework: `torch`, `jax`, `keras` or `tensorflow`. Defaults to `None` (detected). The name
            `framework` is therefore not passed on to `fn`.
        **kwargs: its keyword arguments.

    Returns:
        A `FlopCount`: `.total` FLOPs of one training step, `.method`, `.warnings`, `.breakdown` by layer kind.

    Raises:
        InvalidInputError: if the framework cannot be told.
        UnknownNameError: for an unknown `framework`.
    """
    name = framework or detect_framework(fn, *args, **kwargs)
    if name not in FRAMEWORKS:
        raise unknown_name("framework", name, FRAMEWORKS)
    if name == "torch":
        from carbon_callbacks.flops import _torch

        return _torch.count(fn, *args, **kwargs)
    if name == "jax":
        from carbon_callbacks.flops import _jax

        return _jax.count(fn, *args, **kwargs)
    if name == "tensorflow":
        from carbon_callbacks.flops import _tensorflow

        return _tensorflow.count(fn, *args, **kwargs)
    from carbon_callbacks.flops import _keras

    return _keras.count(fn, *args, **kwargs)


def count_step(module: Any, step: Any, *inputs: Any, fallback: str | None = "real", backward: str = "all") -> FlopCount:
    """Counts one torch training step, `step(*inputs)` and its backward (`"all"`, `"parameters"` or `"none"`),
    on meta tensors, or fake tensors where it reads its batch's values: nothing runs.

    See `carbon_callbacks.flops._torch_step.count_step` (arguments, method labels, the real-step fallback) and
    docs/flops.md "A torch training step, counted without running it". Imports torch.
    """
    from carbon_callbacks.flops import _torch_step

    return _torch_step.count_step(module, step, *inputs, fallback=fallback, backward=backward)


def trainable_fraction(module: Any):
    """The trainable and total parameters of a torch module (`ParameterCounts`, with `.fraction`). Imports torch."""
    from carbon_callbacks.flops import _torch_step

    return _torch_step.trainable_fraction(module)
