"""Keras 3: a dense GPT and its Switch twin with `CarbonCallback`; the metrics land in `History` next to the loss.

The reference GPTs of `carbon_callbacks.models.keras_gpt` (same layers and shapes as the torch and Flax ones)
learn the next byte of a text that ships with Python (the `argparse` module's source), on CPU, on whichever
backend Keras runs (KERAS_BACKEND=tensorflow, jax or torch).

Run: pip install 'carbon-callbacks[keras]' && python examples/keras_dense_vs_switch.py
Prints each run's report card (the callback prints it at the end of `fit`), the last `carbon/*` values of
`History`, and a dense-vs-sparse line; writes carbon-runs/keras/{dense,switch}/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np

from carbon_callbacks.keras import CarbonCallback
from carbon_callbacks.models import GPTConfig
from carbon_callbacks.models.keras_gpt import build_gpt, loss_fn

OUT = Path("carbon-runs/keras")
STEPS = 100
DENSE = GPTConfig(num_layers=2, d_model=64, num_heads=4, seq_len=64, batch_size=8, d_ff=256)
SWITCH = DENSE.with_(num_experts=4, top_k=1)


def text_windows(config: GPTConfig) -> tuple[np.ndarray, np.ndarray]:
    data = np.frombuffer(Path(argparse.__file__).read_bytes(), dtype=np.uint8).astype("int32")
    starts = np.random.default_rng(0).integers(0, len(data) - config.seq_len - 1, STEPS * config.batch_size)
    windows = np.stack([data[s : s + config.seq_len + 1] for s in starts])
    return windows[:, :-1], windows[:, 1:]


def train(name: str, config: GPTConfig) -> tuple[dict, dict]:
    model = build_gpt(config)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3), loss=loss_fn())
    callback = CarbonCallback(region="us-average", pue=1.1, dtype="fp32", output_dir=OUT / name,
                              log_every_n_steps=10)
    x, y = text_windows(config)
    history = model.fit(x, y, batch_size=config.batch_size, epochs=1, callbacks=[callback], verbose=0)
    return callback.summary, history.history


if __name__ == "__main__":
    results = {name: train(name, config) for name, config in (("dense", DENSE), ("switch", SWITCH))}
    for name, (_, history) in results.items():
        carbon = {k: v[-1] for k, v in history.items() if k.startswith("carbon/")}
        print(f"{name:7s} loss {history['loss'][-1]:.3f}  " + "  ".join(f"{k} {v:.4g}" for k, v in carbon.items()))
    dense, switch = results["dense"][0], results["switch"][0]
    print(f"switch / dense: energy x{switch['energy_kwh'] / dense['energy_kwh']:.3g}, "
          f"model FLOPs x{switch['total_model_flops'] / dense['total_model_flops']:.3g}, "
          f"parameters x{switch['info'].get('params_total', 0) / max(dense['info'].get('params_total', 1), 1):.3g}")
