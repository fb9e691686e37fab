"""Trains the reference Switch GPT for a few steps in one framework and writes its run directories.

Run as `python _parity_run.py <framework> <out_dir>` with framework `lightning`, `flax` or `keras` (the Keras
backend from `KERAS_BACKEND`). Every framework gets the same model config, batches, site, chip, interval and
`ReplayMeter`, so `test_parity.py` can require identical `run.json` figures. Two runs each: `ok` (STEPS steps)
and `failed` (the user's code raises at step FAIL_AT).

The Hugging Face pair, `lightning-gpt2` and `hf` (the `Trainer`), trains a GPT-2 built from GPT2_CONFIG the same
way, on the same batches of `{"input_ids", "labels"}`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from carbon_callbacks.meters import ReplayMeter
from carbon_callbacks.models import SWITCH

CONFIG = SWITCH.with_(d_model=32, num_heads=2, seq_len=16, batch_size=2, vocab_size=64, d_ff=64)
STEPS, FAIL_AT, INTERVAL = 4, 3, 2
SITE = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.2, "chip": "a100-40gb", "log_every_n_steps": INTERVAL}


def meter() -> ReplayMeter:
    """Every interval: 150 J of GPU energy over 2.5 s, whatever the framework's speed."""
    return ReplayMeter(energy_j=150.0, seconds=2.5, component="gpu", method="measured:nvml")


class UserError(RuntimeError):
    """What the user's code raises at step FAIL_AT of the `failed` run."""


def lightning(out: Path) -> None:
    import pytorch_lightning as pl
    import torch

    from carbon_callbacks.models.torch_gpt import GPT, loss_fn

    class Module(pl.LightningModule):
        def __init__(self, fail_at=None):
            super().__init__()
            self.model, self.fail_at = GPT(CONFIG), fail_at

        def training_step(self, batch, batch_idx):
            if self.fail_at is not None and batch_idx + 1 == self.fail_at:
                raise UserError("step failed")
            return loss_fn(self.model(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.randint(0, CONFIG.vocab_size, (STEPS * CONFIG.batch_size, CONFIG.seq_len + 1),
                         generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(list(zip(data[:, :-1], data[:, 1:])), batch_size=CONFIG.batch_size)
    lightning_ok_and_failed(out, Module, loader)


def lightning_ok_and_failed(out: Path, module_type, loader) -> None:
    """Two Lightning fits of `module_type`: one to the end (`out/ok`), one failing at step FAIL_AT (`out/failed`)."""
    import pytorch_lightning as pl

    from carbon_callbacks.lightning import CarbonCallback

    for name, fail_at in (("ok", None), ("failed", FAIL_AT)):
        trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, default_root_dir=out,
                             callbacks=[CarbonCallback(**SITE, meter=meter(), output_dir=out / name)])
        try:
            trainer.fit(module_type(fail_at), loader)
        except UserError:
            pass


def gpt2_config():
    import transformers

    return transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=CONFIG.seq_len,
                                   bos_token_id=0, eos_token_id=0)


def gpt2_examples() -> list[dict]:
    """STEPS batches of CONFIG.batch_size sequences, as examples a DataLoader or the Trainer batches alike."""
    import torch

    data = torch.randint(0, CONFIG.vocab_size, (STEPS * CONFIG.batch_size, CONFIG.seq_len),
                         generator=torch.Generator().manual_seed(0))
    return [{"input_ids": ids, "labels": ids} for ids in data]


def lightning_gpt2(out: Path) -> None:
    import pytorch_lightning as pl
    import torch
    import transformers


    class Module(pl.LightningModule):
        def __init__(self, fail_at=None):
            super().__init__()
            torch.manual_seed(0)
            self.model, self.fail_at = transformers.GPT2LMHeadModel(gpt2_config()), fail_at

        def training_step(self, batch, batch_idx):
            if self.fail_at is not None and batch_idx + 1 == self.fail_at:
                raise UserError("step failed")
            return self.model(**batch).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = torch.utils.data.DataLoader(gpt2_examples(), batch_size=CONFIG.batch_size)
    lightning_ok_and_failed(out, Module, loader)


def hf(out: Path) -> None:
    import torch
    import transformers

    from carbon_callbacks.transformers import CarbonCallback

    class FailAt(transformers.TrainerCallback):
        def __init__(self, fail_at):
            self.fail_at = fail_at

        def on_step_begin(self, args, state, control, **kwargs):
            if self.fail_at is not None and state.global_step + 1 == self.fail_at:
                raise UserError("step failed")

    for name, fail_at in (("ok", None), ("failed", FAIL_AT)):
        torch.manual_seed(0)
        args = transformers.TrainingArguments(
            output_dir=str(out / "trainer"), max_steps=STEPS, per_device_train_batch_size=CONFIG.batch_size,
            logging_steps=INTERVAL, learning_rate=0.01, report_to="none", save_strategy="no", disable_tqdm=True,
            use_cpu=True,
        )
        callback = CarbonCallback(**SITE, meter=meter(), output_dir=out / name)
        trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(gpt2_config()), args=args,
                                       train_dataset=gpt2_examples(), callbacks=[callback, FailAt(fail_at)])
        try:
            with callback:
                trainer.train()
        except UserError:
            pass


def flax(out: Path) -> None:
    import jax
    import optax
    from flax.training import train_state

    from carbon_callbacks.flax import track
    from carbon_callbacks.models.flax_gpt import GPT, loss_fn, random_batch

    model = GPT(CONFIG)
    tokens, targets = random_batch(CONFIG)
    params = model.init(jax.random.PRNGKey(0), tokens)["params"]

    @jax.jit
    def train_step(state, tokens, targets):
        def compute_loss(params):
            return loss_fn(state.apply_fn({"params": params}, tokens), targets)

        loss, grads = jax.value_and_grad(compute_loss)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss}

    for name, fail_at in (("ok", None), ("failed", FAIL_AT)):
        state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.01))
        step = track(train_step, **SITE, meter=meter(), output_dir=out / name)
        try:
            with step:
                for i in range(STEPS):
                    if fail_at is not None and i + 1 == fail_at:
                        raise UserError("step failed")
                    state, _ = step(state, tokens, targets)
        except UserError:
            pass


def keras(out: Path) -> None:
    import keras as k

    from carbon_callbacks.keras import CarbonCallback
    from carbon_callbacks.models.keras_gpt import build_gpt, loss_fn, random_batch

    class FailAt(k.callbacks.Callback):
        def __init__(self, fail_at):
            super().__init__()
            self.fail_at = fail_at

        def on_train_batch_begin(self, batch, logs=None):
            if self.fail_at is not None and batch + 1 == self.fail_at:
                raise UserError("step failed")

    tokens, targets = random_batch(CONFIG.with_(batch_size=STEPS * CONFIG.batch_size))
    for name, fail_at in (("ok", None), ("failed", FAIL_AT)):
        model = build_gpt(CONFIG)
        model.compile(k.optimizers.SGD(0.01), loss_fn())
        callback = CarbonCallback(**SITE, meter=meter(), output_dir=out / name)
        try:
            with callback:
                model.fit(tokens, targets, batch_size=CONFIG.batch_size, epochs=1, verbose=0,
                          callbacks=[callback, FailAt(fail_at)])
        except UserError:
            pass


if __name__ == "__main__":
    framework, out = sys.argv[1], Path(sys.argv[2])
    {"lightning": lightning, "flax": flax, "keras": keras, "lightning-gpt2": lightning_gpt2, "hf": hf}[framework](out)
