"""Traced TensorFlow-graph counts of convolutions: every tap at every output position, padding taps included."""

from __future__ import annotations

import math
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")

from carbon_callbacks.flops._tensorflow import count as count_tensorflow  # noqa: E402


def _conv(kind: str, strides, padding: str, dilations=1, output_shape=None):
    if kind == "conv":
        return lambda x, w: tf.nn.convolution(x, w, strides, padding, dilations=dilations)
    if kind == "depthwise":
        return lambda x, w: tf.nn.depthwise_conv2d(x, w, [1, strides, strides, 1], padding, dilations=dilations)
    return lambda x, w: tf.nn.conv_transpose(x, w, output_shape, strides, padding)


#: (name, kind, input shape NHWC-style, filter shape, strides, padding, dilations, transposed output shape)
CONVS = [
    ("1d-strided-same", "conv", (2, 9, 4), (3, 4, 6), 2, "SAME", 1, None),
    ("1d-dilated-same", "conv", (2, 9, 4), (3, 4, 6), 1, "SAME", 2, None),  # SpaceToBatchND + 2-D conv
    ("2d-strided-same", "conv", (2, 8, 7, 4), (3, 3, 4, 6), 2, "SAME", 1, None),
    ("2d-dilated-same", "conv", (2, 9, 7, 4), (3, 2, 4, 6), 1, "SAME", 2, None),
    ("2d-depthwise-dilated", "depthwise", (2, 8, 8, 4), (3, 3, 4, 2), 1, "SAME", [2, 2], None),
    ("2d-depthwise-strided", "depthwise", (2, 9, 8, 4), (3, 3, 4, 1), 2, "VALID", [1, 1], None),
    ("3d-strided-same", "conv", (2, 5, 6, 7, 4), (2, 3, 3, 4, 6), 2, "SAME", 1, None),
    ("2d-transposed-same", "transpose", (2, 5, 4, 4), (3, 3, 6, 4), 2, "SAME", 1, (2, 10, 8, 6)),
    ("3d-transposed-valid", "transpose", (2, 3, 4, 3, 4), (2, 3, 2, 6, 4), 2, "VALID", 1, (2, 6, 9, 6, 6)),
]


@pytest.mark.parametrize(("name", "kind", "x_shape", "w_shape", "strides", "padding", "dilations", "out"), CONVS,
                         ids=[c[0] for c in CONVS])
def test_convolution_counts_every_tap_at_every_position(name, kind, x_shape, w_shape, strides, padding, dilations,
                                                        out):
    """Forward and forward + both gradients: every tap at every output position (a transposed conv: every input
    position), whatever the padding, and the dilated convs TensorFlow runs through SpaceToBatchND as written."""
    fn = _conv(kind, strides, padding, dilations, out)
    x, w = tf.ones(x_shape), tf.ones(w_shape)
    y = fn(x, w)
    channels = w_shape[-2] * w_shape[-1]  # in x out, channels x multiplier (depthwise), out x in (transposed)
    positions = x_shape[1:-1] if kind == "transpose" else y.shape[1:-1]
    forward = 2 * x_shape[0] * channels * math.prod(positions) * math.prod(w_shape[:-2])
    assert count_tensorflow(tf.function(fn), x, w).executed == forward

    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            total = tf.reduce_sum(fn(x, w))
        return total, tape.gradient(total, [x, w])

    result = count_tensorflow(tf.function(step), x, w)
    assert result.includes_backward and result.warnings == ()
    assert result.executed == 3 * forward
