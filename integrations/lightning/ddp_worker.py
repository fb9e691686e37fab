"""One DDP fit on 2 CPU processes (gloo), run by test_lightning_ddp.py: `python ddp_worker.py OUTPUT_DIR`.

Lightning starts rank 1 by running this script again with its rank in the environment. Each rank writes
`rank<global rank>.json` with the metrics it logged last and the summary it holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from carbon_callbacks.lightning import CarbonCallback

from lightning_support import SITE, FixedMeter, LitGPT, loader


def main(out: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    callback = CarbonCallback(**SITE, meter=FixedMeter(), output_dir=out / "run")
    trainer = pl.Trainer(
        default_root_dir=out,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=4,
        log_every_n_steps=2,
        callbacks=[callback],
        logger=pl.loggers.CSVLogger(out, name="csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(LitGPT(), loader(length=64))
    logged = {k: float(v) for k, v in trainer.logged_metrics.items() if k.startswith("carbon/")}
    payload = {"logged": logged, "summary": callback.summary}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(payload), encoding="utf-8")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
