"""One Hugging Face `Trainer` run on 2 CPU processes (DDP over gloo), started by test_hf_trainer_ddp.py with
`python -m torch.distributed.run --nproc_per_node 2 trainer_ddp_worker.py OUTPUT_DIR`.

Each process writes `rank<global rank>.json` with the last row of its `log_history` and the summary it holds; a
checkpoint every LOGGING_STEPS steps carries the totals summed over both processes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers

from carbon_callbacks.meters import ReplayMeter
from carbon_callbacks.transformers import CarbonCallback

#: Per process: 4 optimizer steps on batches of 2 sequences of 16 tokens, a row every 2 steps.
STEPS, BATCH, LENGTH, LOGGING_STEPS = 4, 2, 16, 2
#: Every logging interval of every process: 90 J over 1 s.
JOULES = 90.0
SITE = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.2}


def config():
    return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0,
                                   eos_token_id=0)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 128, (64, LENGTH), generator=generator)]
    callback = CarbonCallback(**SITE, meter=ReplayMeter(energy_j=JOULES, seconds=1.0))
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=BATCH, logging_steps=LOGGING_STEPS,
        report_to="none", save_strategy="steps", save_steps=LOGGING_STEPS, disable_tqdm=True, use_cpu=True,
        ddp_backend="gloo", seed=0,
    )
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config()), args=args, train_dataset=data,
                                   callbacks=[callback])
    trainer.train()
    payload = {"last_row": trainer.state.log_history[-1], "summary": callback.summary, "world_size": args.world_size}
    (out / f"rank{args.process_index}.json").write_text(json.dumps(payload), encoding="utf-8")
    if torch.distributed.is_initialized():  # a clean end of gloo's threads, before the interpreter's
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
