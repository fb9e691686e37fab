"""Shared pieces of the Lightning integration tests: a deterministic meter, the reference GPTs as LightningModules."""

from __future__ import annotations

import csv
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from carbon_callbacks.models import DENSE, SWITCH, GPTConfig
from carbon_callbacks.models.torch_gpt import GPT, loss_fn

from fakes import FixedMeter  # noqa: F401 - the suites import it from here

# Tiny models on a shared 2-core machine: one intra-op thread avoids spin-waiting threads (10x slower steps).
torch.set_num_threads(1)

#: The site every test uses: PUE 1.2, 0.5 kg/kWh gross, 0.2 kg/kWh net.
SITE = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.2}
J_PER_KWH = 3.6e6

#: Smaller than the reference shapes so each fit takes a second or two on 2 CPU cores.
DENSE_SMALL = DENSE.with_(d_model=32, d_ff=64, seq_len=16, batch_size=4, vocab_size=64)
SWITCH_SMALL = SWITCH.with_(d_model=32, d_ff=64, seq_len=16, batch_size=4, vocab_size=64)


class TokenData(Dataset):
    """`length` random (tokens, targets) pairs of one config's sequence length, fixed by `seed`."""

    def __init__(self, config: GPTConfig, length: int = 64, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        data = torch.randint(0, config.vocab_size, (length, config.seq_len + 1), generator=generator)
        self.tokens, self.targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index):
        return self.tokens[index], self.targets[index]


class LitGPT(pl.LightningModule):
    """The reference torch GPT trained with SGD; logs `train_loss` every step. `fail_at` raises in that step."""

    def __init__(self, config: GPTConfig = DENSE_SMALL, fail_at: int | None = None, nan_loss: bool = False) -> None:
        super().__init__()
        self.model = GPT(config)
        self.fail_at, self.nan_loss = fail_at, nan_loss

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError("user code failed")
        tokens, targets = batch
        loss = loss_fn(self.model(tokens), targets)
        if self.nan_loss:
            loss = loss * float("nan")
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader(config: GPTConfig = DENSE_SMALL, length: int = 64) -> DataLoader:
    return DataLoader(TokenData(config, length), batch_size=config.batch_size, shuffle=False)


def trainer(tmp_path: Path, callbacks, max_steps: int = 8, log_every_n_steps: int = 2, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        log_every_n_steps=log_every_n_steps,
        callbacks=callbacks,
        logger=pl.loggers.CSVLogger(tmp_path, name="csv"),
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        **kwargs,
    )


def csv_rows(trainer_or_logger) -> list[dict[str, str]]:
    """The rows of a CSVLogger's `metrics.csv` (the Trainer's logger, or the logger itself)."""
    path = Path(getattr(trainer_or_logger, "logger", trainer_or_logger).log_dir) / "metrics.csv"
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
