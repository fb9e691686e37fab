"""Traced JAX counts (jaxpr) of the Flax reference GPT against the analytic counter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from carbon_callbacks.flops import count, transformer_flops
from carbon_callbacks.flops._jax import xla_flops
from carbon_callbacks.models.config import DENSE, VARIANTS
from carbon_callbacks.models.flax_gpt import init, loss_fn, make_train_step, random_batch

CASES = VARIANTS


@pytest.mark.parametrize("name", list(CASES))
def test_train_step_matches_analytic(name):
    cfg = CASES[name]
    model, params = init(cfg)
    tokens, targets = random_batch(cfg)
    result = count(make_train_step(model), params, tokens, targets)
    analytic = transformer_flops(cfg)
    assert result.framework == "jax" and result.includes_backward and result.warnings == ()
    assert result.total == analytic.hardware_flops
    assert {k: result.breakdown[k] for k in analytic.hardware_breakdown} == analytic.hardware_breakdown
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == analytic.params_total


def test_forward_only_is_tripled_and_says_so():
    model, params = init(DENSE)
    tokens, targets = random_batch(DENSE)
    result = count(lambda p, t, y: loss_fn(model.apply({"params": p}, t), y), params, tokens, targets)
    assert not result.includes_backward and "x3" in result.method
    assert result.total == 3 * result.executed == transformer_flops(DENSE).model_flops


def _scanned_matmuls(w, x):
    def body(h, w_i):
        return jnp.tanh(h @ w_i), None

    return jax.lax.scan(body, x, w)[0].sum()


def test_scan_body_multiplied_by_length_where_xla_counts_it_once():
    w, x = jnp.ones((6, 32, 32)), jnp.ones((16, 32))
    result = count(_scanned_matmuls, w, x)
    assert result.executed == 6 * 2 * 16 * 32 * 32
    assert xla_flops(_scanned_matmuls, w, x) < 0.5 * result.executed  # XLA's cost analysis: one body


def test_while_loop_of_unknown_trip_count_is_reported():
    def fn(x):
        return jax.lax.while_loop(lambda c: c[1] < c[0].sum(), lambda c: (c[0] @ c[0], c[1] + 1), (x, 0))[0]

    result = count(fn, jnp.ones((4, 4)))
    assert result.executed == 2 * 4 * 4 * 4
    assert "while" in result.warnings[0]


def test_convolution_formula():
    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID")

    result = count(conv, jnp.ones((2, 3, 10, 10)), jnp.ones((8, 3, 3, 3)))  # NCHW, OIHW
    assert result.executed == 2 * (2 * 8 * 8 * 8) * 3 * 3 * 3


#: (name, input spatial shape, kernel spatial shape, conv_general_dilated keywords), NC... / OI... layouts.
CONVS = [
    ("1d-strided-same", (9,), (3,), dict(window_strides=(2,), padding="SAME")),
    ("2d-strided-pad", (8, 7), (3, 3), dict(window_strides=(2, 2), padding=((1, 1), (1, 0)))),
    ("2d-dilated", (9, 9), (3, 3), dict(window_strides=(1, 1), padding="SAME", rhs_dilation=(2, 3))),
    ("2d-transposed", (5, 5), (3, 3), dict(window_strides=(1, 1), padding=((2, 1), (2, 1)), lhs_dilation=(2, 2))),
    ("2d-transposed-cropped", (4, 6), (4, 4), dict(window_strides=(1, 1), padding=((1, 2), (0, -1)),
                                                   lhs_dilation=(2, 3))),
    ("2d-grouped", (6, 6), (3, 3), dict(window_strides=(1, 1), padding="SAME", feature_group_count=2)),
    ("2d-depthwise-strided", (7, 7), (3, 3), dict(window_strides=(2, 2), padding="SAME", feature_group_count=4)),
    ("3d-strided-dilated", (5, 6, 7), (2, 3, 2),
     dict(window_strides=(2, 1, 2), padding="SAME", rhs_dilation=(1, 2, 1))),
]


def _conv_case(kwargs, in_shape, kernel):
    groups = kwargs.get("feature_group_count", 1)
    x = jnp.ones((2, 4, *in_shape))
    k = jnp.ones((4 if groups == 4 else 6, 4 // groups, *kernel))
    return x, k, lambda x, k: jax.lax.conv_general_dilated(x, k, **kwargs)


@pytest.mark.parametrize(("name", "in_shape", "kernel", "kwargs"), CONVS, ids=[c[0] for c in CONVS])
def test_convolution_counts_products_with_real_inputs(name, in_shape, kernel, kwargs):
    """Forward, and forward + both gradients (the weight gradient of a grouped conv uses batch_group_count):
    exactly the products with a real input, which sum(conv(ones, ones)) counts, 2 FLOPs each."""
    x, k, conv = _conv_case(kwargs, in_shape, kernel)
    products = int(conv(x, k).sum())
    assert count(conv, x, k).executed == 2 * products
    step = count(jax.grad(lambda x, k: conv(x, k).sum(), argnums=(0, 1)), x, k)
    assert step.includes_backward and step.executed == 3 * 2 * products


def test_strided_conv_input_gradient_skips_inserted_zeros():
    """The input gradient of a stride-2 conv is a conv over the output gradient with lhs_dilation 2: half its
    positions are inserted zeros, which a formula over the dilated input would count (2x)."""
    x, k = jnp.ones((1, 1, 16)), jnp.ones((1, 1, 2))

    def conv(x):
        return jax.lax.conv_general_dilated(x, k, (2,), "VALID")

    forward = 2 * 8 * 2  # 8 outputs x 2 taps; the input gradient does the same products (not 16 x 2)
    assert count(jax.grad(lambda x: conv(x).sum()), x).executed == forward + forward


def test_flax_cnn_equals_hand_count():
    """The reference U-Net (models/cnn_config.py) on 16x16x3, batch 4, width 8, counted by hand.

    Pairs of (output position, tap) on a real input, per dimension: 3x3 'same' on 16: 16 x 3 - 2 = 46; 4x4 stride
    2 padding 1, 16 -> 8: 8 x 4 - 2 = 30; 3x3 dilation 2 padding 2 on 8: 8 x 3 - 4 = 20; 2x2 stride-2 transposed,
    8 -> 16: 16 (each output one tap); 1x1 on 16: 16.
    """
    from carbon_callbacks.models import flax_cnn
    from carbon_callbacks.models.cnn_config import CNN, cnn_flops

    b = 4
    forward = {
        "stem": 2 * b * 8 * 3 * 46**2,  # out channels x in channels x pairs
        "down": 2 * b * 16 * 8 * 30**2,
        "mid": 2 * b * 16 * 1 * 20**2,  # depthwise: one input channel per output channel
        "up": 2 * b * 8 * 16 * 16**2,
        "head": 2 * b * 3 * 16 * 16**2,
    }
    step = 3 * sum(forward.values()) - forward["stem"]  # the image takes no gradient
    assert step == 4_812_288 == cnn_flops(CNN).model_flops
    model, params = flax_cnn.init(CNN)
    result = count(flax_cnn.make_train_step(model), params, flax_cnn.random_batch(CNN))
    assert result.total == step and result.includes_backward and result.warnings == ()
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == cnn_flops(CNN).params_total


def test_flax_transposed_conv_with_overlap_and_crop_equals_hand_count():
    """3x3 stride-2 'SAME' transposed conv, 5 -> 10 per dimension: of the 5 x 3 = 15 (input, tap) pairs of a
    row, one lands on the cropped border, so 14 per dimension, 14^2 per channel pair."""
    from flax import linen as nn

    layer = nn.ConvTranspose(6, (3, 3), strides=(2, 2), padding="SAME", use_bias=False)
    x = jnp.ones((2, 5, 5, 4))
    params = layer.init(jax.random.PRNGKey(0), x)
    result = count(lambda p, x: layer.apply(p, x), params, x)
    assert layer.apply(params, x).shape == (2, 10, 10, 6)
    assert result.executed == 2 * 2 * 6 * 4 * 14**2
