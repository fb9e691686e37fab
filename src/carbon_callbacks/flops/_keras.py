"""Traced FLOP counting for Keras 3, by backend, and for TensorFlow graphs.

- JAX backend: the model runs through `stateless_call` under `jax.grad` and its jaxpr is counted (`_jax`).
- torch backend: the model is a `torch.nn.Module`; it runs forward + backward under `FlopCounterMode` (`_torch`).
- TensorFlow backend (or TensorFlow tensors): the `tf.function` graph is counted op by op: MatMul,
  BatchMatMul, Einsum (which the stock TF profiler counts as zero) and the Conv family, with their gradients.

A `keras.Model` is counted forward + backward of the sum of its outputs; a plain function is counted as it runs
(3 x forward if it holds no backward pass).
"""

from __future__ import annotations

import math
import re

from carbon_callbacks.flops._result import FlopCount, finish


def count(fn, *args, **kwargs) -> FlopCount:
    """Counts the FLOPs of `fn(*args, **kwargs)` on Keras's backend; see `carbon_callbacks.flops.count`."""
    import keras

    backend = keras.backend.backend()
    is_model = isinstance(fn, keras.Model)
    if backend == "jax":
        from carbon_callbacks.flops import _jax

        if not is_model:
            return _jax.count(fn, *args, **kwargs)
        return _jax.count(_jax_model_step(fn, kwargs), [v.value for v in fn.trainable_variables],
                          [v.value for v in fn.non_trainable_variables], *args)
    if backend == "torch":
        from carbon_callbacks.flops import _torch

        if not is_model:
            return _torch.count(fn, *args, **kwargs)
        torch_args = [keras.ops.convert_to_tensor(a) for a in args]
        return _torch.count_module(fn, torch_args, kwargs, try_meta=False)
    return count_tensorflow(fn, *args, **kwargs)


def _jax_model_step(model, kwargs):
    import jax
    import jax.numpy as jnp

    def step(trainable, non_trainable, *args):
        def total(values):
            out, _ = model.stateless_call(values, non_trainable, *args, **kwargs)
            return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree_util.tree_leaves(out))

        return jax.grad(total)(trainable)

    return step


# --- TensorFlow graphs ------------------------------------------------------------------------------------------


def _dims(tensor) -> list[int] | None:
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape.as_list()):
        return None
    return shape.as_list()


def _matmul(op) -> int | None:
    a, out = _dims(op.inputs[0]), _dims(op.outputs[0])
    if a is None or out is None:
        return None
    k = a[0] if op.get_attr("transpose_a") else a[1]
    return 2 * math.prod(out) * k


def _batch_matmul(op) -> int | None:
    a, out = _dims(op.inputs[0]), _dims(op.outputs[0])
    if a is None or out is None:
        return None
    k = a[-2] if op.get_attr("adj_x") else a[-1]
    return 2 * math.prod(out) * k


def _einsum(op) -> int | None:
    """2 x output elements x the sizes of the letters both operands share and the output drops."""
    if len(op.inputs) != 2:
        return 0
    equation = op.get_attr("equation").decode().replace(" ", "")
    inputs, output = equation.split("->")
    lhs, rhs = inputs.split(",")
    shapes = [_dims(op.inputs[0]), _dims(op.inputs[1])]
    out = _dims(op.outputs[0])
    if None in shapes or out is None:
        return None
    sizes = {}
    for letters, shape in ((lhs, shapes[0]), (rhs, shapes[1])):
        if "..." in letters:
            head, tail = letters.split("...")
            letters = head + "." * (len(shape) - len(head) - len(tail)) + tail
        for letter, size in zip(letters, shape):
            if letter != ".":
                sizes[letter] = size
    contracted = (set(lhs) & set(rhs)) - set(output) - {"."}
    return 2 * math.prod(out) * math.prod(sizes[c] for c in contracted)


def _conv(op) -> int | None:
    """Forward conv: 2 x output elements x kernel window x input channels (filter shape [..., in, out])."""
    filt, out = _dims(op.inputs[1]), _dims(op.outputs[0])
    if filt is None or out is None:
        return None
    if op.type.startswith("DepthwiseConv2dNative"):
        return 2 * math.prod(out) * math.prod(filt[:-2])
    return 2 * math.prod(out) * math.prod(filt[:-1])


def _conv_backprop_input(op) -> int | None:
    filt, grad = _dims(op.inputs[1]), _dims(op.inputs[2])
    if filt is None or grad is None:
        return None
    per_output = math.prod(filt[:-2]) if op.type.startswith("Depthwise") else math.prod(filt[:-1])
    return 2 * math.prod(grad) * per_output


def _conv_backprop_filter(op) -> int | None:
    filt, grad = _dims(op.outputs[0]), _dims(op.inputs[2])
    if filt is None or grad is None:
        return None
    per_output = math.prod(filt[:-2]) if op.type.startswith("Depthwise") else math.prod(filt[:-1])
    return 2 * math.prod(grad) * per_output


_TF_FORMULAS = {
    "MatMul": _matmul,
    "BatchMatMul": _batch_matmul,
    "BatchMatMulV2": _batch_matmul,
    "BatchMatMulV3": _batch_matmul,
    "Einsum": _einsum,
    "Conv2D": _conv,
    "Conv3D": _conv,
    "DepthwiseConv2dNative": _conv,
    "Conv2DBackpropInput": _conv_backprop_input,
    "Conv3DBackpropInputV2": _conv_backprop_input,
    "DepthwiseConv2dNativeBackpropInput": _conv_backprop_input,
    "Conv2DBackpropFilter": _conv_backprop_filter,
    "Conv3DBackpropFilterV2": _conv_backprop_filter,
    "DepthwiseConv2dNativeBackpropFilter": _conv_backprop_filter,
}
_GRADIENT = re.compile(r"(^|/)(gradients|gradient_tape)(_\d+)?/")
_CALLS = ("PartitionedCall", "StatefulPartitionedCall")


def _needed_ops(graph) -> set:
    """The ops the graph's outputs depend on: what TensorFlow runs (it prunes the rest, e.g. the gradient of a
    `stop_gradient` operand of an einsum)."""
    targets = [t.op for t in getattr(graph, "outputs", [])] + list(getattr(graph, "control_outputs", []))
    if not targets:
        return set(graph.get_operations())
    seen, stack = set(), list(targets)
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return seen


def _walk_graph(graph, prefix: str, state: dict) -> None:
    needed = _needed_ops(graph)
    for op in graph.get_operations():
        if op not in needed:
            continue
        name = f"{prefix}/{op.name}" if prefix else op.name
        formula = _TF_FORMULAS.get(op.type)
        if formula is not None:
            flops = formula(op)
            if flops is None:
                state["warnings"].append(f"{op.type} {name}: shape not static, counted as 0")
                continue
            state["total"] += flops
            scope = name.rsplit("/", 1)[0]
            state["own"][scope] = state["own"].get(scope, 0) + flops
            if _GRADIENT.search(name):
                state["backward"] = True
        elif op.type in _CALLS:
            fname = op.get_attr("f").name
            function = graph._get_function(fname) if hasattr(graph, "_get_function") else None
            inner = getattr(function, "graph", None)
            if inner is None:
                state["warnings"].append(f"{op.type} {name}: function {fname} not inspectable, counted as 0")
            else:
                _walk_graph(inner, name, state)
        elif op.type in ("While", "StatelessWhile", "If", "StatelessIf", "Case"):
            state["warnings"].append(f"{op.type} {name}: control flow not counted")


def count_tensorflow(fn, *args, **kwargs) -> FlopCount:
    """Counts the FLOPs of `fn(*args, **kwargs)` from its TensorFlow graph (a `keras.Model`: forward + backward)."""
    import tensorflow as tf

    is_model = hasattr(fn, "trainable_variables") and callable(fn)
    if is_model:
        model = fn

        def step(*a):
            with tf.GradientTape() as tape:
                out = model(*a, **kwargs)
                total = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in tf.nest.flatten(out)])
            return total, tape.gradient(total, model.trainable_variables)

        traced = tf.function(step)
    else:
        traced = fn if hasattr(fn, "get_concrete_function") else tf.function(lambda *a: fn(*a, **kwargs))
    tensors = [tf.convert_to_tensor(a) if not isinstance(a, (tf.Tensor, tf.Variable)) else a for a in args]
    concrete = traced.get_concrete_function(*tensors)
    state = {"total": 0, "own": {}, "backward": False, "warnings": []}
    _walk_graph(concrete.graph, "", state)
    method = "traced:tf-graph(MatMul+BatchMatMul+Einsum+Conv)"
    if is_model:
        method += "; model forward+backward of sum(outputs)"
    own: dict[str, int] = {}
    for path, flops in state["own"].items():
        key = _GRADIENT.sub(r"\1", path)
        own[key] = own.get(key, 0) + flops
    return finish(
        state["total"],
        framework="tensorflow",
        method=method,
        includes_backward=state["backward"] or is_model,
        own_flops=own,
        warnings=list(dict.fromkeys(state["warnings"])),
    )
