"""Traced JAX counts (jaxpr) of the Flax reference GPT against the analytic counter."""

from __future__ import annotations

import math

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
    ("1d-valid", (9,), (3,), dict(window_strides=(1,), padding="VALID")),  # its input gradient widens 7 -> 9
    ("2d-strided-pad", (8, 7), (3, 3), dict(window_strides=(2, 2), padding=((1, 1), (1, 0)))),
    ("2d-dilated", (9, 9), (3, 3), dict(window_strides=(1, 1), padding="SAME", rhs_dilation=(2, 3))),
    ("2d-transposed", (5, 5), (3, 3), dict(window_strides=(1, 1), padding=((2, 1), (2, 1)), lhs_dilation=(2, 2))),
    ("2d-transposed-cropped", (4, 6), (4, 4), dict(window_strides=(1, 1), padding=((1, 2), (0, -1)),
                                                   lhs_dilation=(2, 3))),
    ("2d-grouped", (6, 6), (3, 3), dict(window_strides=(1, 1), padding="SAME", feature_group_count=2)),
    ("2d-depthwise-strided", (7, 7), (3, 3), dict(window_strides=(2, 2), padding="SAME", feature_group_count=4)),
    ("2d-kernel-larger-than-input", (2, 2), (3, 3), dict(window_strides=(2, 2), padding="SAME")),
    ("3d-strided-dilated", (5, 6, 7), (2, 3, 2),
     dict(window_strides=(2, 1, 2), padding="SAME", rhs_dilation=(1, 2, 1))),
]


def _conv_case(kwargs, in_shape, kernel):
    groups = kwargs.get("feature_group_count", 1)
    x = jnp.ones((2, 4, *in_shape))
    k = jnp.ones((4 if groups == 4 else 6, 4 // groups, *kernel))
    return x, k, lambda x, k: jax.lax.conv_general_dilated(x, k, **kwargs)


def _forward_macs(kwargs, x, k, y) -> int:
    """Every tap at every output position (with lhs_dilation, a transposed convolution: every input position)."""
    positions = x.shape[2:] if "lhs_dilation" in kwargs else y.shape[2:]
    return x.shape[0] * y.shape[1] * k.shape[1] * math.prod(positions) * math.prod(k.shape[2:])


@pytest.mark.parametrize(("name", "in_shape", "kernel", "kwargs"), CONVS, ids=[c[0] for c in CONVS])
def test_convolution_counts_every_tap_at_every_position(name, in_shape, kernel, kwargs):
    """Forward, and forward + both gradients (the weight gradient of a grouped conv uses batch_group_count, the input
    gradient of a strided conv lhs_dilation): padding taps counted, the zeros lhs_dilation inserts not, and each
    gradient as its forward, whatever the padding does to the gradient convolutions' own shapes."""
    x, k, conv = _conv_case(kwargs, in_shape, kernel)
    forward = _forward_macs(kwargs, x, k, conv(x, k))
    assert count(conv, x, k).executed == 2 * forward
    step = count(jax.grad(lambda x, k: conv(x, k).sum(), argnums=(0, 1)), x, k)
    assert step.includes_backward and step.executed == 3 * 2 * forward


@pytest.mark.parametrize(("name", "in_shape", "kernel", "kwargs"), CONVS, ids=[c[0] for c in CONVS])
def test_convolution_gradients_without_the_reversed_kernel_mark(name, in_shape, kernel, kwargs, monkeypatch):
    """Where JAX no longer marks the input gradient with `rev`, sizes tell the gradients apart (and a warning says
    so): exact except the input gradient of a size-changing stride-1 conv and convs on inputs smaller than the
    kernel."""
    from carbon_callbacks._compat import jax as compat

    monkeypatch.setattr(compat, "_MARKED", [False])
    x, k, conv = _conv_case(kwargs, in_shape, kernel)
    forward = _forward_macs(kwargs, x, k, conv(x, k))
    step = count(jax.grad(lambda x, k: conv(x, k).sum(), argnums=(0, 1)), x, k).executed
    if name in ("1d-valid", "2d-kernel-larger-than-input"):
        assert step != 3 * 2 * forward
    else:
        assert step == 3 * 2 * forward


def test_input_gradient_mark_is_still_there():
    from carbon_callbacks._compat import jax as compat

    assert compat.conv_input_gradient_is_marked()


@pytest.mark.parametrize("transpose_kernel", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_lax_conv_transpose(stride, transpose_kernel):
    """`lax.conv_transpose` (Flax's ConvTranspose: transpose_kernel=False; Keras's JAX backend: True). Strided: every
    tap at every input position, as torch counts it. Stride 1 needs no lhs_dilation: it is a padded convolution and
    is counted as one (7 x 7 outputs x 9 taps here, where torch counts 5 x 5 inputs x 9 taps)."""
    x = jnp.ones((2, 5, 5, 4))
    k = jnp.ones((3, 3, 6, 4) if transpose_kernel else (3, 3, 4, 6))

    def conv(x, k):
        return jax.lax.conv_transpose(x, k, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      transpose_kernel=transpose_kernel)

    positions = 5 * 5 if stride == 2 else 7 * 7
    assert conv(x, k).shape[1:3] == ((11, 11) if stride == 2 else (7, 7))
    forward = 2 * 4 * 6 * positions * 9
    assert count(conv, x, k).executed == 2 * forward
    assert count(jax.grad(lambda x, k: conv(x, k).sum(), argnums=(0, 1)), x, k).executed == 3 * 2 * forward


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

    (Output position, tap) pairs per dimension, padding taps included: 3x3 'same' on 16: 16 x 3 = 48; 4x4 stride
    2, 16 -> 8: 8 x 4 = 32; 3x3 dilation 2 on 8: 8 x 3 = 24; 2x2 stride-2 transposed, 8 -> 16: 8 inputs x 2 taps =
    16; 1x1 on 16: 16.
    """
    from carbon_callbacks.models import flax_cnn
    from carbon_callbacks.models.cnn_config import CNN, cnn_flops

    b = 4
    forward = {
        "stem": 2 * b * 8 * 3 * 48**2,  # out channels x in channels x pairs
        "down": 2 * b * 16 * 8 * 32**2,
        "mid": 2 * b * 16 * 1 * 24**2,  # depthwise: one input channel per output channel
        "up": 2 * b * 8 * 16 * 16**2,
        "head": 2 * b * 3 * 16 * 16**2,
    }
    step = 3 * sum(forward.values()) - forward["stem"]  # the image takes no gradient
    assert step == 5_332_992 == cnn_flops(CNN).model_flops
    model, params = flax_cnn.init(CNN)
    result = count(flax_cnn.make_train_step(model), params, flax_cnn.random_batch(CNN))
    assert result.total == step and result.includes_backward and result.warnings == ()
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == cnn_flops(CNN).params_total


def test_flax_transposed_conv_with_overlap_and_crop_equals_hand_count():
    """3x3 stride-2 'SAME' transposed conv, 5 -> 10 per dimension: every tap of every input, 5 x 3 = 15 pairs per
    dimension, the one whose output is cropped included (as torch counts it); its step is 3 x that."""
    from flax import linen as nn

    layer = nn.ConvTranspose(6, (3, 3), strides=(2, 2), padding="SAME", use_bias=False)
    x = jnp.ones((2, 5, 5, 4))
    params = layer.init(jax.random.PRNGKey(0), x)
    result = count(lambda p, x: layer.apply(p, x), params, x)
    assert layer.apply(params, x).shape == (2, 10, 10, 6)
    assert result.executed == 2 * 2 * 6 * 4 * 15**2
    step = count(jax.grad(lambda p, x: layer.apply(p, x).sum(), argnums=(0, 1)), params, x)
    assert step.executed == 3 * result.executed


def test_remat_transposed_conv_gradients_count_as_backward():
    """Under `remat` the transposed equations keep their forward names; they are still the backward pass."""
    from flax import linen as nn

    layer = nn.remat(nn.ConvTranspose)(6, (3, 3), strides=(2, 2), padding="SAME", use_bias=False)
    x = jnp.ones((2, 5, 5, 4))
    params = layer.init(jax.random.PRNGKey(0), x)
    step = count(jax.grad(lambda p, x: layer.apply(p, x).sum(), argnums=(0, 1)), params, x)
    assert step.executed == 3 * 2 * 2 * 6 * 4 * 15**2


def _flax_published(name: str):
    """ResNet-50 v1.5 or MobileNetV2 in Flax with 'SAME' padding: XLA pads a stride-2 3x3 convolution of an even
    input (0, 1) where torch pads (1, 1); the taps counted are the same."""
    from flax import linen as nn

    from _published_cnns import MOBILENETV2_STAGES, RESNET50_STAGES

    def norm(x):
        return nn.BatchNorm(use_running_average=True)(x)

    class Bottleneck(nn.Module):
        width: int
        stride: int

        @nn.compact
        def __call__(self, x):
            y = nn.relu(norm(nn.Conv(self.width, (1, 1), use_bias=False)(x)))
            y = nn.relu(norm(nn.Conv(self.width, (3, 3), self.stride, padding="SAME", use_bias=False)(y)))
            y = norm(nn.Conv(4 * self.width, (1, 1), use_bias=False)(y))
            if self.stride != 1 or x.shape[-1] != 4 * self.width:
                x = norm(nn.Conv(4 * self.width, (1, 1), self.stride, use_bias=False)(x))
            return nn.relu(x + y)

    class ResNet50(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(norm(nn.Conv(64, (7, 7), 2, padding=((3, 3), (3, 3)), use_bias=False)(x)))
            x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
            for blocks, width, stride in RESNET50_STAGES:
                for i in range(blocks):
                    x = Bottleneck(width, stride if i == 0 else 1)(x)
            return nn.Dense(1000)(x.mean(axis=(1, 2)))

    class MobileNetV2(nn.Module):
        @nn.compact
        def __call__(self, x):
            def conv(x, features, kernel=1, stride=1, groups=1, act=True):
                x = norm(nn.Conv(features, (kernel, kernel), stride, padding="SAME", feature_group_count=groups,
                                 use_bias=False)(x))
                return nn.relu6(x) if act else x

            x, c_in = conv(x, 32, 3, 2), 32
            for expansion, c_out, blocks, stride in MOBILENETV2_STAGES:
                for i in range(blocks):
                    s, hidden = stride if i == 0 else 1, c_in * expansion
                    y = conv(x, hidden) if expansion != 1 else x
                    y = conv(conv(y, hidden, 3, s, groups=hidden), c_out, act=False)
                    x, c_in = (x + y if s == 1 and c_in == c_out else y), c_out
            return nn.Dense(1000)(conv(x, 1280).mean(axis=(1, 2)))

    return ResNet50() if name.startswith("resnet") else MobileNetV2()


@pytest.mark.parametrize("name", ["resnet50_v1.5", "mobilenetv2"])
def test_flax_published_cnn_matches_published_flops(name):
    """The forward is 2 x the published multiply-adds, the step (gradients of the parameters) 3 x forward less the
    image's gradient; nothing runs (abstract parameters)."""
    from _published_cnns import matches_published, mobilenetv2_macs, resnet50_macs

    model = _flax_published(name)
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"]))
    assert params == (25_557_032 if name.startswith("resnet") else 3_504_872)
    macs = resnet50_macs() if name.startswith("resnet") else mobilenetv2_macs()
    assert matches_published(name, macs)
    assert count(model.apply, variables, images, framework="jax").executed == 2 * macs
    stem = 112 * 112 * (7 * 7 * 3 * 64 if name.startswith("resnet") else 3 * 3 * 3 * 32)

    def step(variables, images):
        def loss(params):
            return model.apply({**variables, "params": params}, images).sum()

        return jax.grad(loss)(variables["params"])

    result = count(step, variables, images, framework="jax")
    assert result.includes_backward and result.total == 3 * 2 * macs - 2 * stem
