"""Lightning: a dense GPT and its Switch twin with `CarbonCallback`, then the report, a what-if and a plot.

Both models are the project's reference GPTs (`carbon_callbacks.models`): the Switch twin swaps every second FFN
for 4 experts of the same width, routed top-1, so a token passes through as many parameters as in the dense one.
They learn the next byte of a text that ships with Python (the `argparse` module's source), on CPU.

Run: pip install 'carbon-callbacks[lightning,plot]' && python examples/lightning_dense_vs_switch.py
Prints each run's report card (the callback prints it at the end of `fit`), a dense-vs-sparse line, a what-if,
and writes carbon-runs/lightning/{dense,switch}/ and carbon-runs/lightning/loss_vs_co2e.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch

from carbon_callbacks import read_run
from carbon_callbacks._reports.plot import plot_runs
from carbon_callbacks._reports.whatif import format_whatif, whatif
from carbon_callbacks.lightning import CarbonCallback
from carbon_callbacks.models import GPTConfig
from carbon_callbacks.models.torch_gpt import GPT, loss_fn

OUT = Path("carbon-runs/lightning")
STEPS = 100
DENSE = GPTConfig(num_layers=2, d_model=64, num_heads=4, seq_len=64, batch_size=8, d_ff=256)
SWITCH = DENSE.with_(num_experts=4, top_k=1)


class LitGPT(pl.LightningModule):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.model = GPT(config)
        self.config = config  # lets the callback count FLOPs and parameters exactly (activated experts only)

    def training_step(self, batch, batch_idx):
        tokens, targets = batch
        loss = loss_fn(self.model(tokens), targets)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def text_batches(config: GPTConfig) -> torch.utils.data.DataLoader:
    data = torch.frombuffer(bytearray(Path(argparse.__file__).read_bytes()), dtype=torch.uint8).long()
    starts = torch.randint(0, len(data) - config.seq_len - 1, (STEPS * config.batch_size,),
                           generator=torch.Generator().manual_seed(0))
    windows = torch.stack([data[s : s + config.seq_len + 1] for s in starts.tolist()])
    dataset = torch.utils.data.TensorDataset(windows[:, :-1], windows[:, 1:])
    return torch.utils.data.DataLoader(dataset, batch_size=config.batch_size)


def train(name: str, config: GPTConfig) -> dict:
    torch.manual_seed(0)
    callback = CarbonCallback(region="us-average", pue=1.1, dtype="fp32", output_dir=OUT / name,
                              log_every_n_steps=10)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, log_every_n_steps=10)
    trainer.fit(LitGPT(config), text_batches(config))
    return callback.summary


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny matmuls: more threads mostly spin
    dense, switch = train("dense", DENSE), train("switch", SWITCH)
    for name, s in (("dense", dense), ("switch", switch)):
        loss = [r["loss"] for r in read_run(OUT / name)[1] if r.get("loss") is not None][-1]
        print(f"{name:7s} {s['info'].get('percent_active', 100):5.1f}% active  "
              f"{s['total_model_flops'] / s['steps'] / 1e9:.3f} GFLOPs/step  {s['energy_kwh'] * 1e3:.4f} Wh  "
              f"{s['gross_co2e_kg'] * 1e3:.4f} g CO2e  final loss {loss:.3f}")
    scenarios = whatif(dense, regions=["fr", "pl"], pues=[1.5])
    print(format_whatif(scenarios))
    print("plot:", plot_runs([OUT / "dense", OUT / "switch"], OUT / "loss_vs_co2e.png", scenarios=scenarios))
