"""One process of a Hugging Face `Trainer` job on simulated hosts, started by test_hosts.py with the environment
`torchrun --nnodes 2 --nproc_per_node 2` gives its workers: `trainer_worker.py OUT_DIR`. Its host comes from
`CARBON_CALLBACKS_HOST`, that host's RAPL tree from `CARBON_CALLBACKS_POWERCAP`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import transformers

from carbon_callbacks.transformers import CarbonCallback


class Slow(transformers.TrainerCallback):  # steps of about 50 ms, as a real model's would be
    def on_step_end(self, *args, **kwargs):
        time.sleep(0.05)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16)
    ids = torch.randint(0, 32, (256, 8), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": i, "labels": i} for i in ids]
    args = transformers.TrainingArguments(output_dir=str(out), max_steps=40, per_device_train_batch_size=2,
                                          logging_steps=5, report_to="none", save_strategy="no", disable_tqdm=True,
                                          use_cpu=True, ddp_backend="gloo")
    callback = CarbonCallback(intensity=0.5, nvml=False, output_dir=out / "run")
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args, train_dataset=data,
                                   callbacks=[callback, Slow()])
    trainer.train()
    if torch.distributed.is_initialized():  # a clean end of gloo's threads, before the interpreter's
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
