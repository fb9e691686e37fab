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

from carbon_callbacks.flops._conv import conv_macs, same_pad_lo
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
        return _jax.count(_jax_model_step(fn, kwargs), _abstract(fn.trainable_variables),
                          _abstract(fn.non_trainable_variables), *args)
    if backend == "torch":
        from carbon_callbacks.flops import _torch

        if not is_model:
            return _torch.count(fn, *args, **kwargs)
        torch_args = [keras.ops.convert_to_tensor(a) for a in args]
        return _torch.count_module(fn, torch_args, kwargs, try_meta=False)
    return count_tensorflow(fn, *args, **kwargs)


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


def _spatial_axes(op, rank: int) -> list[int]:
    data_format = op.get_attr("data_format").decode() if "data_format" in op.node_def.attr else "NHWC"
    return list(range(2, rank)) if data_format.startswith("NC") else list(range(1, rank - 1))


def _int_list(op, name: str, rank: int) -> list[int]:
    return list(op.get_attr(name)) if name in op.node_def.attr else [1] * rank


_RESHAPES = ("ExpandDims", "Squeeze", "Reshape", "Identity")


def _producer(tensor, op_type: str):
    """The op of type `op_type` that makes `tensor`, looking through reshapes (a 1-D conv runs as a 2-D one)."""
    while tensor.op.type in _RESHAPES and tensor.op.type != op_type:
        tensor = tensor.op.inputs[0]
    return tensor.op if tensor.op.type == op_type else None


def _consumer(tensor, op_type: str):
    """The first op of type `op_type` that reads `tensor`, looking through reshapes."""
    stack = [tensor]
    while stack:
        for consumer in stack.pop().consumers():
            if consumer.type == op_type:
                return consumer
            if consumer.type in _RESHAPES:
                stack.append(consumer.outputs[0])
    return None


def _space_to_batch(op, kind: str):
    """The dilated convolution TensorFlow runs as SpaceToBatchND -> conv -> BatchToSpaceND, undone.

    Returns `(input shape, output shape, block, paddings before)` of the convolution as written (on the tensors
    before SpaceToBatchND and after BatchToSpaceND), or `None` when `op` is not such a convolution. Without this,
    the zeros SpaceToBatchND pads with would be counted as inputs. The gradient of SpaceToBatchND is
    BatchToSpaceND with the paddings as crops, and the other way round.
    """
    import tensorflow as tf

    if kind == "backprop_input":
        to_space = _consumer(op.outputs[0], "BatchToSpaceND")
        x_side = None if to_space is None else (to_space.outputs[0], to_space.inputs[1], to_space.inputs[2])
        to_batch = _producer(op.inputs[2], "SpaceToBatchND")
        y_tensor = None if to_batch is None else to_batch.inputs[0]
    else:
        to_batch = _producer(op.inputs[0], "SpaceToBatchND")
        x_side = None if to_batch is None else (to_batch.inputs[0], to_batch.inputs[1], to_batch.inputs[2])
        if kind == "forward":
            to_space = _consumer(op.outputs[0], "BatchToSpaceND")
            y_tensor = None if to_space is None else to_space.outputs[0]
        else:
            grad = _producer(op.inputs[2], "SpaceToBatchND")
            y_tensor = None if grad is None else grad.inputs[0]
    if x_side is None or y_tensor is None:
        return None
    block, paddings = tf.get_static_value(x_side[1]), tf.get_static_value(x_side[2])
    x_shape, y_shape = _dims(x_side[0]), _dims(y_tensor)
    if block is None or paddings is None or x_shape is None or y_shape is None:
        return None
    return x_shape, y_shape, [int(b) for b in block], [int(p) for p in paddings[:, 0]]


def _conv_products(op, kind: str) -> int | None:
    """Multiply-adds of a convolution with a real input element (`_conv.conv_macs`), from the forward geometry.

    `kind`: `forward` (x -> y), `backprop_input` (dy -> dx) or `backprop_filter` (x, dy -> dw); each does the
    forward's products once. The filter is `[*kernel, in per group, out]` (`[*kernel, channels, multiplier]`
    for a depthwise convolution).
    """
    if kind == "forward":
        x, filt, y = _dims(op.inputs[0]), _dims(op.inputs[1]), _dims(op.outputs[0])
    elif kind == "backprop_input":
        x = _dims(op.outputs[0])
        filt, y = _dims(op.inputs[1]), _dims(op.inputs[2])
    else:
        x, filt, y = _dims(op.inputs[0]), _dims(op.outputs[0]), _dims(op.inputs[2])
    if x is None or filt is None or y is None:
        return None
    rank = len(x)
    axes = _spatial_axes(op, rank)
    strides = [_int_list(op, "strides", rank)[a] for a in axes]
    dilations = [_int_list(op, "dilations", rank)[a] for a in axes]
    kernels = filt[:-2]
    if op.type.startswith("Depthwise"):
        out_features, per_group = filt[-2] * filt[-1], 1
    else:
        out_features, per_group = filt[-1], filt[-2]
    undone = _space_to_batch(op, kind) if axes == list(range(1, rank - 1)) else None
    if undone is not None:
        # SpaceToBatchND's spatial dimensions are the convolution's last ones (a 1-D convolution runs as a 2-D
        # one with a leading spatial dimension of 1, which pairs with itself once).
        x0, y0, block, pads0 = undone
        inserted = len(axes) - len(block)
        ones = [1] * inserted
        x = [y[0], *ones, *x0[1:-1], x[-1]]
        y = [y0[0], *ones, *y0[1:-1], y[-1]]
        kernels = [*ones, *kernels[inserted:]]
        dilations = [*ones, *(b * d for b, d in zip(block, dilations[inserted:]))]
        strides = [*ones, *strides[inserted:]]
        pads_lo = [0] * inserted + pads0
    else:
        padding = op.get_attr("padding").decode()
        if padding == "SAME":
            pads_lo = [same_pad_lo(x[a], y[a], k, s, d) for a, k, s, d in zip(axes, kernels, strides, dilations)]
        elif padding == "EXPLICIT":
            explicit = list(op.get_attr("explicit_paddings"))
            pads_lo = [explicit[2 * a] for a in axes]
        else:
            pads_lo = [0] * len(axes)
    return conv_macs(
        batch=y[0], out_features=out_features, in_features_per_group=per_group, sizes=[x[a] for a in axes],
        outs=[y[a] for a in axes], kernels=kernels, strides=strides, dilations=dilations, pads_lo=pads_lo,
    )


def _conv(kind: str):
    def formula(op) -> int | None:
        products = _conv_products(op, kind)
        return None if products is None else 2 * products

    return formula


_TF_FORMULAS = {
    "MatMul": _matmul,
    "BatchMatMul": _batch_matmul,
    "BatchMatMulV2": _batch_matmul,
    "BatchMatMulV3": _batch_matmul,
    "Einsum": _einsum,
    "Conv2D": _conv("forward"),
    "Conv3D": _conv("forward"),
    "DepthwiseConv2dNative": _conv("forward"),
    "Conv2DBackpropInput": _conv("backprop_input"),
    "Conv2DBackpropInputV2": _conv("backprop_input"),
    "Conv3DBackpropInput": _conv("backprop_input"),
    "Conv3DBackpropInputV2": _conv("backprop_input"),
    "DepthwiseConv2dNativeBackpropInput": _conv("backprop_input"),
    "Conv2DBackpropFilter": _conv("backprop_filter"),
    "Conv2DBackpropFilterV2": _conv("backprop_filter"),
    "Conv3DBackpropFilter": _conv("backprop_filter"),
    "Conv3DBackpropFilterV2": _conv("backprop_filter"),
    "DepthwiseConv2dNativeBackpropFilter": _conv("backprop_filter"),
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
