"""Shared pieces of the Flax integration tests: a deterministic meter and small Linen / NNX training steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx
from flax.training import train_state

from fakes import FixedMeter  # noqa: F401 - the suites import it from here

#: The site every test uses: PUE 1.2, 0.5 kg/kWh gross, 0.2 kg/kWh net.
SITE = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.2}

#: The keys every step's metrics carry (more when FLOPs and a peak are known).
BASE_KEYS = ("carbon/energy_kwh", "carbon/co2e_kg", "carbon/co2e_net_kg", "carbon/step_time_s")

#: Widths of the MLP: 16 -> 32 -> 8, batch of 4.
D_IN, D_HIDDEN, D_OUT, BATCH = 16, 32, 8, 4


def mlp_step_flops(batch: int = BATCH) -> int:
    """Analytic FLOPs of one MLP training step, 2 per multiply-add.

    Forward: both layers. Backward: the weight gradients of both layers and the hidden activation's gradient,
    i.e. 3 x forward less the first layer's input gradient, which no parameter needs (the data takes none).
    """
    first, second = 2 * batch * D_IN * D_HIDDEN, 2 * batch * D_HIDDEN * D_OUT
    return 3 * (first + second) - first


def closed(step) -> dict:
    """Closes a tracked step and returns its `run.json` content."""
    step.close()
    return step.summary()


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(D_OUT)(nn.relu(nn.Dense(D_HIDDEN)(x)))


def batch(size: int = BATCH, seed: int = 0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (size, D_IN)), jax.random.normal(ky, (size, D_OUT))


def filled(abstract, seed: int = 0):
    """Concrete arrays for an abstract tree (from `eval_shape`): N(0, 0.02) weights, unit norm scales, zero biases.

    The models' own initialisers would run op by op, costing more seconds of XLA compilation than the tests.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if not hasattr(leaf, "shape"):
            return leaf
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        name = jax.tree_util.keystr(path)
        if not np.issubdtype(leaf.dtype, np.floating) or "bias" in name:
            return np.zeros(leaf.shape, leaf.dtype)
        if "scale" in name:
            return np.ones(leaf.shape, leaf.dtype)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.device_put(jax.tree_util.tree_map_with_path(fill, abstract))


def linen_state():
    model = MLP()
    x, _ = batch()
    params = filled(jax.eval_shape(model.init, jax.random.key(0), x))
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.05))


def make_linen_step(traces: list | None = None, **jit_kwargs):
    """A jitted Linen step `(state, (x, y)) -> (state, {"loss": ...})`; appends to `traces` each time it is traced."""

    def train_step(state, xy):
        if traces is not None:
            traces.append(1)  # a Python side effect: runs once per trace, never per step
        x, y = xy

        def loss_fn(params):
            return jnp.mean((state.apply_fn(params, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss}

    return jax.jit(train_step, **jit_kwargs)


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(D_IN, D_HIDDEN, rngs=rngs)
        self.out = nnx.Linear(D_HIDDEN, D_OUT, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


def nnx_model_and_optimizer():
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: NnxMLP(nnx.Rngs(0))))
    model = nnx.merge(graphdef, filled(abstract))
    return model, nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)


def make_nnx_step(traces: list | None = None):
    """An `nnx.jit` step `(model, optimizer, (x, y)) -> (loss, {"loss": ...})` that updates the model in place."""

    @nnx.jit
    def train_step(model, optimizer, xy):
        if traces is not None:
            traces.append(1)
        x, y = xy

        def loss_fn(model):
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, {"loss": loss}

    return train_step
