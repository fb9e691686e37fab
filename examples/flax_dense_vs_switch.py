"""JAX/Flax: a dense GPT and its Switch twin, each training step wrapped by `carbon_callbacks.flax.track`.

The reference GPTs of `carbon_callbacks.models.flax_gpt` (same layers and shapes as the torch and Keras ones)
learn the next byte of a text that ships with Python (the `argparse` module's source), on CPU. `track` returns the
step with the same signature; its metrics dict gains `carbon/*` keys, counted FLOPs come from the step's jaxpr.

Run: pip install 'carbon-callbacks[jax]' && python examples/flax_dense_vs_switch.py
Prints the `carbon/*` metrics every 20 steps, each run's report card (at `close`) and a dense-vs-sparse line;
writes carbon-runs/flax/{dense,switch}/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
import optax

from carbon_callbacks.flax import track
from carbon_callbacks.flops import transformer_flops
from carbon_callbacks.models import GPTConfig
from carbon_callbacks.models.flax_gpt import init, loss_fn

OUT = Path("carbon-runs/flax")
STEPS = 100
DENSE = GPTConfig(num_layers=2, d_model=64, num_heads=4, seq_len=64, batch_size=8, d_ff=256)
SWITCH = DENSE.with_(num_experts=4, top_k=1)


def text_batches(config: GPTConfig):
    data = np.frombuffer(Path(argparse.__file__).read_bytes(), dtype=np.uint8).astype("int32")
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        starts = rng.integers(0, len(data) - config.seq_len - 1, config.batch_size)
        windows = np.stack([data[s : s + config.seq_len + 1] for s in starts])
        yield windows[:, :-1], windows[:, 1:]


def train(name: str, config: GPTConfig) -> dict:
    model, params = init(config)
    optimizer = optax.adamw(3e-3)

    @jax.jit
    def train_step(state, tokens, targets):
        params, opt_state = state
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model.apply({"params": p}, tokens), targets))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss}

    # Model FLOPs of an MoE count the routed experts only: give them from the analytic counter.
    counted = transformer_flops(config)
    step = track(train_step, region="us-average", pue=1.1, dtype="fp32", output_dir=OUT / name,
                 log_every_n_steps=20, flops=counted.model_flops, total_steps=STEPS)  # projected after 20%
    step.session.annotate(params_total=counted.params_total, percent_active=counted.percent_active,
                          params_source="analytic: transformer_flops(config)")
    state = (params, optimizer.init(params))
    with step:
        for i, (tokens, targets) in enumerate(text_batches(config), start=1):
            state, metrics = step(state, tokens, targets)
            if i % 20 == 0:
                print(f"{name} step {i}: loss {float(metrics['loss']):.3f}, "
                      f"{metrics['carbon/energy_kwh'] * 1e3:.4g} Wh, {metrics['carbon/co2e_kg'] * 1e3:.4g} g CO2e")
    return step.summary()


if __name__ == "__main__":
    dense, switch = train("dense", DENSE), train("switch", SWITCH)
    print(f"switch / dense: energy x{switch['energy_kwh'] / dense['energy_kwh']:.3g}, "
          f"model FLOPs x{switch['total_model_flops'] / dense['total_model_flops']:.3g}")
