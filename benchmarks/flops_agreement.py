"""Agreement of the FLOP counters on the reference GPTs, and how long counting takes relative to one step.

Run: `KERAS_BACKEND=tensorflow python benchmarks/flops_agreement.py` (about a minute on 2 CPU cores).

Prints, per model: the analytic model and hardware FLOPs per training step, the traced counts of torch, JAX (Flax)
and Keras (TensorFlow graph) as ratios to the analytic hardware FLOPs, the two stock counters this package
corrects (torch FlopCounterMode alone, XLA cost_analysis), and the time to count vs the median time of one
training step. Counting happens once per distinct input shape, never per step.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from carbon_callbacks.flops import count, transformer_flops  # noqa: E402
from carbon_callbacks.flops._jax import xla_flops  # noqa: E402
from carbon_callbacks._reports.format import text_table  # noqa: E402
from carbon_callbacks.models import flax_gpt, keras_gpt, torch_gpt  # noqa: E402
from carbon_callbacks.models.config import VARIANTS  # noqa: E402

CASES = VARIANTS


def timed(fn, repeats: int = 1):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def torch_numbers(cfg):
    torch.manual_seed(0)
    model = torch_gpt.GPT(cfg)
    tokens, targets = torch_gpt.random_batch(cfg)
    result, count_s = timed(lambda: count(model, tokens))
    with FlopCounterMode(display=False) as stock:
        torch_gpt.loss_fn(model(tokens), targets).backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch_gpt.train_step(model, opt, tokens, targets)
    _, step_s = timed(lambda: torch_gpt.train_step(model, opt, tokens, targets), repeats=9)
    return result.total, stock.get_total_flops(), count_s, step_s


def jax_numbers(cfg):
    model, params = flax_gpt.init(cfg)
    tokens, targets = flax_gpt.random_batch(cfg)
    step = flax_gpt.make_train_step(model)
    result, count_s = timed(lambda: count(step, params, tokens, targets))
    xla = xla_flops(step, params, tokens, targets)
    jax.block_until_ready(step(params, tokens, targets))
    _, step_s = timed(lambda: jax.block_until_ready(step(params, tokens, targets)), repeats=9)
    return result.total, xla, count_s, step_s


def keras_numbers(cfg):
    model = keras_gpt.build_gpt(cfg)
    tokens, targets = keras_gpt.random_batch(cfg)
    result, count_s = timed(lambda: count(model, tokens))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras_gpt.loss_fn())
    model.train_on_batch(tokens, targets)
    _, step_s = timed(lambda: model.train_on_batch(tokens, targets), repeats=9)
    return result.total, count_s, step_s


def main() -> None:
    agreement, timing = [], []
    for name, cfg in CASES.items():
        analytic = transformer_flops(cfg)
        hw = analytic.hardware_flops
        t_total, t_stock, t_count, t_step = torch_numbers(cfg)
        j_total, j_xla, j_count, j_step = jax_numbers(cfg)
        k_total, k_count, k_step = keras_numbers(cfg)
        agreement.append([
            name, analytic.model_flops, hw, round(t_total / hw, 4), round(j_total / hw, 4), round(k_total / hw, 4),
            round(t_stock / hw, 4), round(j_xla / hw, 4) if j_xla else None,
        ])
        timing.append([
            name, round(t_count / t_step, 1), round(j_count / j_step, 1), round(k_count / k_step, 1),
            round(t_step * 1e3, 2), round(j_step * 1e3, 2), round(k_step * 1e3, 2),
        ])
    print(f"torch {torch.__version__}, jax {jax.__version__}, keras {keras.__version__} ({keras.backend.backend()}), "
          f"tensorflow {tf.__version__}; {os.cpu_count()} CPUs")
    print("\nTraced / analytic hardware FLOPs per training step (1.0 = exact)")
    print(text_table(["model", "analytic model", "analytic hardware", "torch", "jax", "keras-tf",
                      "stock torch", "xla cost"], agreement))
    print("\nCounting time / one training step (median of 9 steps), and the step times in ms")
    print(text_table(["model", "torch", "jax", "keras-tf", "torch step ms", "jax step ms", "keras step ms"],
                     timing))


if __name__ == "__main__":
    main()
