"""The unified `lightning` package: the callback fits `lightning.pytorch.Trainer` as well as `pytorch_lightning`'s,
whether or not `pytorch_lightning` is installed too."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

L = pytest.importorskip("lightning.pytorch")

FIT = textwrap.dedent("""
    import sys, tempfile
    if sys.argv[1] == "alone":
        sys.modules["pytorch_lightning"] = None  # as if only the unified `lightning` package were installed
    import lightning.pytorch as L
    import torch
    from carbon_callbacks import read_run
    from carbon_callbacks.lightning import CarbonCallback
    from carbon_callbacks.meters import ReplayMeter

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.set_num_threads(1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    callback = CarbonCallback(intensity=0.4, pue=1.1, meter=ReplayMeter(energy_j=10.0, seconds=1.0))
    trainer = L.Trainer(max_steps=8, log_every_n_steps=2, callbacks=[callback], default_root_dir=tempfile.mkdtemp(),
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        accelerator="cpu", devices=1)
    trainer.fit(Model(), torch.utils.data.DataLoader(data, batch_size=8))
    summary, records = read_run(callback.session.run_dir)
    framework = summary["info"]["framework"].split()[0]
    print("RESULT", summary["steps"], framework, len(records), summary["total_model_flops"])
""")


@pytest.mark.parametrize("installed", ["both", "alone"])
def test_the_callback_fits_a_lightning_pytorch_trainer(installed):
    out = subprocess.run([sys.executable, "-c", FIT, installed], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    steps, framework, records, flops = out.stdout.split("RESULT ")[1].split()
    assert (steps, framework, records) == ("8", "lightning.pytorch", "4")
    assert float(flops) > 0  # counted on fake tensors through the unified namespace too
