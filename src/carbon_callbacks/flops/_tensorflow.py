"""Traced FLOP counting in TensorFlow: the `tf.function` graph, op by op.

Counts MatMul, BatchMatMul, Einsum (which the stock TF profiler counts as zero) and the Conv family with their
gradients, in the graph and in every function it calls, and only the ops its outputs depend on (what TensorFlow
runs). Convolutions follow `_conv`: every kernel tap at every output position, padding taps included; the input and
filter gradients (`Conv2DBackpropInput`, `Conv2DBackpropFilter`, which also run `tf.nn.conv2d_transpose`) each do
the products of the forward convolution they belong to. `flops.count(fn, framework="tensorflow")` comes here
whatever `KERAS_BACKEND` says; a `keras.Model` on the TensorFlow backend comes here through `flops._keras`. What
TensorFlow keeps private is read through `carbon_callbacks._compat.tensorflow`.
"""

from __future__ import annotations

import math
import re

from carbon_callbacks._compat import tensorflow as compat
from carbon_callbacks.flops._conv import conv_macs
from carbon_callbacks.flops._result import FlopCount, finish


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


def _written_output(op, kind: str) -> list[int] | None:
    """The output (gradient) of a dilated convolution as written, which TensorFlow runs as SpaceToBatchND -> conv
    -> BatchToSpaceND; `None` when `op` is not such a convolution.

    The convolution in between runs on `block` x the batch, over an output rounded up to a multiple of the block:
    counting it would count the rounding. The gradient of SpaceToBatchND is BatchToSpaceND, and the other way round.
    """
    if kind == "backprop_input":
        if _consumer(op.outputs[0], "BatchToSpaceND") is None:
            return None
        to_batch = _producer(op.inputs[2], "SpaceToBatchND")
        return None if to_batch is None else _dims(to_batch.inputs[0])
    if _producer(op.inputs[0], "SpaceToBatchND") is None:
        return None
    if kind == "forward":
        to_space = _consumer(op.outputs[0], "BatchToSpaceND")
        return None if to_space is None else _dims(to_space.outputs[0])
    to_batch = _producer(op.inputs[2], "SpaceToBatchND")
    return None if to_batch is None else _dims(to_batch.inputs[0])


def _conv_products(op, kind: str) -> int | None:
    """Multiply-adds of the forward convolution `op` is, or is a gradient of (`_conv.conv_macs`): every kernel tap at
    every position of the forward's output, padding taps included.

    `kind`: `forward` (x -> y), `backprop_input` (dy -> dx; also `tf.nn.conv2d_transpose`, whose count is thus
    every tap at every input position) or `backprop_filter` (x, dy -> dw). The filter is `[*kernel, in per group,
    out]` (`[*kernel, channels, multiplier]` for a depthwise convolution).
    """
    if kind == "forward":
        filt, y = _dims(op.inputs[1]), _dims(op.outputs[0])
    elif kind == "backprop_input":
        filt, y = _dims(op.inputs[1]), _dims(op.inputs[2])
    else:
        filt, y = _dims(op.outputs[0]), _dims(op.inputs[2])
    if filt is None or y is None:
        return None
    rank = len(y)
    axes = _spatial_axes(op, rank)
    batch, positions = y[0], [y[a] for a in axes]
    if op.type.startswith("Depthwise"):
        out_features, per_group = filt[-2] * filt[-1], 1
    else:
        out_features, per_group = filt[-1], filt[-2]
    written = _written_output(op, kind) if axes == list(range(1, rank - 1)) else None
    if written is not None:
        # SpaceToBatchND's spatial dimensions are the convolution's last ones (a 1-D convolution runs as a 2-D
        # one with a leading spatial dimension of 1).
        spatial = written[1:-1]
        batch, positions = written[0], [1] * (len(axes) - len(spatial)) + spatial
    return conv_macs(batch=batch, out_features=out_features, in_features_per_group=per_group, positions=positions,
                     kernels=filt[:-2])


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
    targets = compat.graph_targets(graph)
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
            inner = compat.called_graph(graph, fname)
            if inner is None:
                state["warnings"].append(f"{op.type} {name}: function {fname} not inspectable, counted as 0")
            else:
                _walk_graph(inner, name, state)
        elif op.type in ("While", "StatelessWhile", "If", "StatelessIf", "Case"):
            state["warnings"].append(f"{op.type} {name}: control flow not counted")


def count(fn, *args, **kwargs) -> FlopCount:
    """Counts the FLOPs of `fn(*args, **kwargs)` from its TensorFlow graph; see `carbon_callbacks.flops.count`.

    `fn` is a `tf.function` (counted as traced), a model with `trainable_variables` (a `keras.Model` on the
    TensorFlow backend: forward + backward of the sum of its outputs) or any other callable (wrapped in a
    `tf.function`). Nothing runs: TensorFlow traces `fn` into a graph.
    """
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
