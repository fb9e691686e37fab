"""One node of a Lightning DDP job on simulated hosts, run by test_hosts.py: `python lightning_worker.py OUT_DIR`
with `NODE_RANK`, `MASTER_ADDR` and `MASTER_PORT` set (Lightning starts this node's second process itself). Its
host comes from `CARBON_CALLBACKS_HOST`, that host's RAPL tree from `CARBON_CALLBACKS_POWERCAP`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from carbon_callbacks.lightning import CarbonCallback

from lightning_support import SITE, LitGPT, loader


class Slow(pl.Callback):  # steps of about 50 ms, as a real model's would be
    def on_train_batch_end(self, *args):
        time.sleep(0.05)


def main(out: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    callback = CarbonCallback(**{**SITE, "nvml": False}, output_dir=out / "run")
    trainer = pl.Trainer(default_root_dir=out, accelerator="cpu", devices=2, num_nodes=2, strategy="ddp",
                         max_steps=40, log_every_n_steps=5, callbacks=[callback, Slow()], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(LitGPT(), loader(length=4 * 4 * 40))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
