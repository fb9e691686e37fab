"""`carbon_callbacks.flax.track` around an `nnx.jit` step that updates the model and optimizer in place."""

from __future__ import annotations

import math

import flax
import jax.numpy as jnp
import pytest

from carbon_callbacks import read_run
from carbon_callbacks.flax import track

from flax_support import BASE_KEYS, SITE, FixedMeter, batch, make_nnx_step, mlp_step_flops, nnx_model_and_optimizer

J_PER_KWH = 3.6e6
# The step below uses NNX's `Optimizer.update(model, grads)` and `nnx.bridge`, newer than the flax floor (0.8.5); the
# adapter itself reads only `nnx.Module`, `nnx.state` and `nnx.Param`.
pytestmark = pytest.mark.skipif(tuple(int(p) for p in flax.__version__.split(".")[:2]) < (0, 11),
                                reason="the test's NNX step needs flax 0.11 or newer")


def test_nnx_step_metrics_flops_and_no_retrace(tmp_path):
    traces = []
    model, optimizer = nnx_model_and_optimizer()
    xy = batch()
    with track(make_nnx_step(traces), **SITE, meter=FixedMeter(), log_every_n_steps=2, output_dir=tmp_path) as step:
        losses, history = [], []
        for _ in range(6):
            loss, metrics = step(model, optimizer, xy)
            losses.append(float(loss))
            history.append(metrics)
            if len(history) == 2:
                traced_after_warmup = len(traces)
    assert len(traces) == traced_after_warmup <= 2
    assert step.counters.signatures == 1
    assert losses[-1] < losses[0]  # the model trained in place: the wrapper kept NNX's state updates
    assert isinstance(model.hidden.kernel[...], jnp.ndarray)  # no tracer leaked into the model by the count
    for metrics in history:
        assert set(metrics) == {"loss", *BASE_KEYS, "carbon/flops"}
        assert metrics["carbon/flops"] == mlp_step_flops()
    assert math.isnan(history[0]["carbon/co2e_kg"])
    assert history[-1]["carbon/energy_kwh"] == pytest.approx(3 * 90 * 1.2 / J_PER_KWH, rel=1e-12)
    assert history[-1]["carbon/co2e_kg"] == history[-1]["carbon/energy_kwh"] * 0.5
    summary, records = read_run(tmp_path)
    assert summary["steps"] == 6 and summary["total_model_flops"] == 6 * mlp_step_flops()
    assert [r["loss"] for r in records] == [losses[1], losses[3], losses[5]]
