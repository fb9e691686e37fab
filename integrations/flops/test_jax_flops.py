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
