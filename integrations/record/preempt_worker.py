"""A training run that goes on until it is stopped, for the preemption tests: `python preempt_worker.py FRAMEWORK OUT`.

FRAMEWORK is `lightning`, `hf`, `keras` (JAX backend) or `flax`. Each trains a tiny model with the framework's
`CarbonCallback` (or `track`) on a deterministic meter, 2 steps per logging interval, with the framework's own
logger where it has one (Lightning's CSVLogger, the Trainer's TensorBoard), prints `ready` once 6 steps ran, and
then trains on until the test sends it a signal.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fakes import FixedMeter

SITE = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.2}
READY_AT, STEPS = 6, 100_000


def ready(step: int) -> None:
    if step == READY_AT:
        print("ready", flush=True)
    time.sleep(0.01)


def lightning(out: Path) -> None:
    import pytorch_lightning as pl
    import torch

    from carbon_callbacks.lightning import CarbonCallback

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train_loss", loss)
            return loss

        def on_train_batch_end(self, outputs, batch, batch_idx):
            ready(self.global_step)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(STEPS, 8))
    trainer = pl.Trainer(default_root_dir=out, max_steps=STEPS, log_every_n_steps=2, accelerator="cpu", devices=1,
                         logger=pl.loggers.CSVLogger(out, name="csv"), enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[CarbonCallback(**SITE, meter=FixedMeter())])
    trainer.fit(Model(), torch.utils.data.DataLoader(data, batch_size=1))


def hf(out: Path) -> None:
    import torch
    import transformers

    from carbon_callbacks.transformers import CarbonCallback

    class Ready(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ready(state.global_step)

    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16)
    ids = torch.randint(0, 32, (64, 8), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": i, "labels": i} for i in ids]
    args = transformers.TrainingArguments(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=2,
                                          logging_steps=2, report_to=["tensorboard"], save_strategy="no",
                                          disable_tqdm=True, use_cpu=True)
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args, train_dataset=data,
                                   callbacks=[CarbonCallback(**SITE, meter=FixedMeter()), Ready()])
    trainer.train()


def keras_fit(out: Path) -> None:
    import keras
    import numpy as np

    from carbon_callbacks.keras import CarbonCallback

    class Ready(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ready(batch + 1)

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.random.default_rng(0).normal(size=(2, STEPS, 8)), np.zeros((STEPS, 1))
    callback = CarbonCallback(**SITE, meter=FixedMeter(), output_dir=out / "run", log_every_n_steps=2)
    model.fit(x[0], y, batch_size=1, epochs=1, verbose=0, callbacks=[Ready(), callback])


def flax(out: Path) -> None:
    import jax
    import jax.numpy as jnp

    from carbon_callbacks.flax import track

    @jax.jit
    def train_step(w, x):
        loss, grad = jax.value_and_grad(lambda w: jnp.mean((x @ w) ** 2))(w)
        return w - 0.01 * grad, {"loss": loss}

    step = track(train_step, **SITE, meter=FixedMeter(), output_dir=out / "run", log_every_n_steps=2)
    w, x = jnp.ones((8, 1)), jnp.ones((4, 8))
    for i in range(1, STEPS):
        w, _ = step(w, x)
        ready(i)


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    {"lightning": lightning, "hf": hf, "keras": keras_fit, "flax": flax}[sys.argv[1]](Path(sys.argv[2]))
