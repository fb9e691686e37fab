"""Traced FLOP counting for Keras 3, through the tracer of the backend Keras runs on.

- JAX backend: the model runs through `stateless_call` under `jax.grad` and its jaxpr is counted (`_jax`).
- torch backend: the model is a `torch.nn.Module`; it runs forward + backward under `FlopCounterMode` (`_torch`).
- TensorFlow backend: the `tf.function` graph is counted op by op (`_tensorflow`).

A `keras.Model` is counted forward + backward of the sum of its outputs; a plain function is counted as it runs
(3 x forward if it holds no backward pass).
"""

from __future__ import annotations

from carbon_callbacks.flops._result import FlopCount


def count(fn, *args, **kwargs) -> FlopCount:
    """Counts the FLOPs of `fn(*args, **kwargs)` on Keras's backend; see `carbon_callbacks.flops.count`."""
    import keras

    backend = keras.backend.backend()
    is_model = isinstance(fn, keras.Model)
    if backend == "jax":
        from carbon_callbacks.flops import _jax

        if not is_model:
            return _jax.count(fn, *args, **kwargs)
        return _jax.count(_jax_model_step(fn, kwargs), _abstract(fn.trainable_variables),
                          _abstract(fn.non_trainable_variables), *args)
    if backend == "torch":
        from carbon_callbacks.flops import _torch

        if not is_model:
            return _torch.count(fn, *args, **kwargs)
        torch_args = [keras.ops.convert_to_tensor(a) for a in args]
        return _torch.count_module(fn, torch_args, kwargs, try_meta=False)
    from carbon_callbacks.flops import _tensorflow

    return _tensorflow.count(fn, *args, **kwargs)


def _abstract(variables) -> list:
    """The variables' shapes and dtypes only: tracing needs no values, and Keras's JAX trainer may have taken them
    off the model while a fit runs (`purge_model_variables`)."""
    import jax

    return [jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) for v in variables]


def _jax_model_step(model, kwargs):
    import jax
    import jax.numpy as jnp

    def step(trainable, non_trainable, *args):
        def total(values):
            out, _ = model.stateless_call(values, non_trainable, *args, **kwargs)
            return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree_util.tree_leaves(out))

        return jax.grad(total)(trainable)

    return step
