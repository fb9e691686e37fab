"""Linen and NNX training loops on the dense and Switch MoE reference GPTs under `track`.

The counted FLOPs of a whole training step must match `transformer_flops` (the exact analytic count): the traced
count sees what runs, i.e. the hardware FLOPs (capacity padding included); the model FLOPs come from the config the
step's arguments carry.
"""

from __future__ import annotations

import jax
import optax
import pytest
from flax import nnx
from flax.training import train_state

from carbon_callbacks.flax import track
from carbon_callbacks.flops import transformer_flops
from carbon_callbacks.models import DENSE, SWITCH
from carbon_callbacks.models.flax_gpt import GPT, loss_fn, random_batch

from flax_support import BASE_KEYS, SITE, FixedMeter, filled

#: The reference shapes with smaller widths (XLA's CPU compile time dominates these tests).
SMALL = {"d_model": 32, "num_heads": 2, "seq_len": 16, "batch_size": 2, "vocab_size": 64, "d_ff": 64}
CONFIGS = {"dense": DENSE.with_(**SMALL), "switch": SWITCH.with_(**SMALL)}
STEPS = 3


class Loop:
    """A compiled training step and its state, built once per module and wrapped by each test's `track`."""

    def __init__(self, train_step, carry, tokens, targets, linen: bool) -> None:
        self.train_step, self.carry, self.tokens, self.targets, self.linen = train_step, carry, tokens, targets, linen

    def run(self, tmp_path, **kwargs):
        step = track(self.train_step, **SITE, meter=FixedMeter(), log_every_n_steps=1, output_dir=tmp_path, **kwargs)
        history = []
        for _ in range(STEPS):
            if self.linen:
                self.carry, metrics = step(self.carry, self.tokens, self.targets)
            else:
                _, metrics = step(*self.carry, self.tokens, self.targets)  # the model is updated in place
            history.append(metrics)
        return step, history


def linen_loop(config) -> Loop:
    model = GPT(config)
    tokens, targets = random_batch(config)
    params = filled(jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"])
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1))

    @jax.jit
    def train_step(state, tokens, targets):
        def compute_loss(params):
            return loss_fn(state.apply_fn({"params": params}, tokens), targets)

        loss, grads = jax.value_and_grad(compute_loss)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss}

    return Loop(train_step, state, tokens, targets, linen=True)


def nnx_loop(config) -> Loop:
    tokens, targets = random_batch(config)

    def create():
        return nnx.bridge.lazy_init(nnx.bridge.ToNNX(GPT(config), rngs=nnx.Rngs(0)), tokens)

    graphdef, abstract = nnx.split(nnx.eval_shape(create))
    model = nnx.merge(graphdef, filled(abstract))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, tokens, targets):
        loss, grads = nnx.value_and_grad(lambda m: loss_fn(m(tokens), targets))(model)
        optimizer.update(model, grads)
        return loss, {"loss": loss}

    return Loop(train_step, (model, optimizer), tokens, targets, linen=False)


@pytest.fixture(scope="module")
def loops():
    """(api, model name) -> Loop, built lazily: each step compiles once for the whole module."""
    cache = {}

    def get(api: str, name: str) -> Loop:
        if (api, name) not in cache:
            cache[api, name] = (linen_loop if api == "linen" else nnx_loop)(CONFIGS[name])
        return cache[api, name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_counted_flops_match_the_analytic_count(loops, api, name, tmp_path):
    analytic = transformer_flops(CONFIGS[name])
    step, history = loops(api, name).run(tmp_path)
    step.close()
    summary = step.summary()
    for metrics in history:
        assert {"loss", *BASE_KEYS, "carbon/flops"} <= set(metrics)
        assert metrics["carbon/co2e_kg"] == metrics["carbon/energy_kwh"] * 0.5
    assert step.counters.signatures == 1
    # The step's arguments carry the model's config: model FLOPs (routed experts only) are analytic, as in the
    # Lightning and Keras adapters; the trace gives what ran.
    assert history[-1]["carbon/flops"] == analytic.model_flops
    assert summary["total_model_flops"] == STEPS * analytic.model_flops
    assert summary["total_hardware_flops"] == pytest.approx(STEPS * analytic.hardware_flops, rel=0.01)
    method = summary["info"]["flops_method"]
    assert method.startswith("model: analytic") and "hardware: traced:jaxpr" in method
    assert summary["info"]["params_total"] == analytic.params_total
    assert summary["info"]["percent_active"] == pytest.approx(analytic.percent_active)
    losses = [float(m["loss"]) for m in history]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_given_model_flops_drive_mfu_while_the_moe_pads(loops, tmp_path):
    analytic = transformer_flops(CONFIGS["switch"])
    assert analytic.hardware_flops > analytic.model_flops  # capacity padding
    step, history = loops("linen", "switch").run(tmp_path, flops=analytic.model_flops, chip="a100-40gb")
    step.close()
    summary = step.summary()
    assert history[-1]["carbon/flops"] == analytic.model_flops
    assert history[-1]["carbon/mfu"] == pytest.approx(
        analytic.model_flops / 3.0 / step.summary()["peak_flops_per_chip"], rel=1e-12
    )
    assert summary["total_model_flops"] == STEPS * analytic.model_flops
    assert summary["info"]["flops_method"] == "given"


@pytest.mark.slow
def test_a_jitted_step_fed_many_lengths_counts_a_few_and_stays_exact(loops, tmp_path):
    """Dynamic padding: a new sequence length most steps. Five lengths are traced; the rest follow the fitted
    polynomial, within 0.1% of a direct count."""
    import dataclasses

    from carbon_callbacks import read_run
    from carbon_callbacks.flops import count

    loop = loops("linen", "dense")
    config = CONFIGS["dense"]
    lengths = [4, 16, 8, 12, 6, 10, 14, 5]
    step = track(loop.train_step, **SITE, meter=FixedMeter(), log_every_n_steps=1, output_dir=tmp_path)
    state, direct = loop.carry, []
    for i, n in enumerate(lengths):
        tokens = jax.random.randint(jax.random.PRNGKey(i), (config.batch_size, n), 0, config.vocab_size)
        direct.append(count(loop.train_step, state, tokens, tokens, framework="jax").total)
        state, _ = step(state, tokens, tokens)
    step.close()
    _, records = read_run(tmp_path)
    assert [r["model_flops"] for r in records] == [
        transformer_flops(dataclasses.replace(config, seq_len=n)).model_flops for n in lengths
    ]
    for record, expected in zip(records, direct):
        assert record["hardware_flops"] == pytest.approx(expected, rel=1e-3)
    # Five, and L=16 once more: the position table's 16 rows equal that length, so the state's shapes (part of
    # the step's signature) make it a family of its own. Exact either way, one count dearer.
    assert step.summary()["info"]["flops_counts"] == 6
