"""A Lightning DDP fit on 2 CPU processes (gloo) whose rank 1 meter reads NaN from its 2nd window on, run by
test_ranks.py: `python ddp_fault_worker.py OUTPUT_DIR`. Lightning starts rank 1 by running this script again with
`LOCAL_RANK` set."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from carbon_callbacks.lightning import CarbonCallback

from fakes import BadReadingMeter, FixedMeter
from lightning_support import SITE, LitGPT, loader


def main(out: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    faulty = os.environ.get("LOCAL_RANK") == "1"
    meter = BadReadingMeter(math.nan, bad=range(2, 100)) if faulty else FixedMeter()
    callback = CarbonCallback(**SITE, meter=meter, output_dir=out / "run")
    trainer = pl.Trainer(default_root_dir=out, accelerator="cpu", devices=2, strategy="ddp", max_steps=8,
                         log_every_n_steps=2, callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(LitGPT(), loader(length=64))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
