"""Checkpoints used as users use them: a resume after a crash, fine-tunes forked from one checkpoint, and two jobs
started at once with the same `output_dir`. Nothing is counted twice, no run's record is overwritten, and every fork
names its parent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbon_callbacks import read_run

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1] / "tests"
sys.path.insert(0, str(HERE.parent / "lightning"))
pytestmark = pytest.mark.slow

SITE = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.2}


# ------------------------------------------------------------------------------------------- Lightning
def test_a_lightning_resume_after_a_crash_trims_what_followed_its_checkpoint(tmp_path):
    import pytorch_lightning as pl

    from carbon_callbacks.lightning import CarbonCallback

    from lightning_support import FixedMeter, LitGPT, loader, trainer

    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    first = CarbonCallback(**SITE, meter=FixedMeter(), output_dir=tmp_path / "run")
    with pytest.raises(RuntimeError, match="user code failed"):  # the crash, 3 steps after the checkpoint
        trainer(tmp_path, [first, saver], max_steps=12, log_every_n_steps=2, enable_checkpointing=True).fit(
            LitGPT(fail_at=7), loader())
    assert read_run(tmp_path / "run")[0]["steps"] == 7

    resumed = CarbonCallback(**SITE, meter=FixedMeter(), output_dir=tmp_path / "run")
    trainer(tmp_path, [resumed], max_steps=12, log_every_n_steps=2).fit(
        LitGPT(), loader(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))
    summary, logged = read_run(tmp_path / "run")
    assert [r["cum_steps"] for r in logged] == [2, 4, 6, 8, 10, 12]  # steps 5-7 of the crashed run: trimmed
    assert [r["step"] for r in logged] == [1, 3, 5, 7, 9, 11]  # each logger step once
    assert summary["steps"] == 12 and summary["status"] == "finished" and summary["step_log"]["gap_count"] == 0
    assert summary["info"]["resumed_from"]["steps_discarded"] == 3  # 5-7 were logged, then lost


# ------------------------------------------------------------------------------------------- the Trainer
def test_two_fine_tunes_forked_from_one_checkpoint_keep_their_own_records(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    import torch

    from carbon_callbacks.meters import ReplayMeter
    from carbon_callbacks.transformers import CarbonCallback

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # the test's own checkpoints, on transformers 4.46
    torch.set_num_threads(1)
    ids = torch.randint(0, 32, (64, 8), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": i, "labels": i} for i in ids]

    def train(out, steps, **kwargs):
        torch.manual_seed(0)
        callback = CarbonCallback(**SITE, meter=ReplayMeter(energy_j=10.0, seconds=1.0))
        config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16)
        args = transformers.TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=2,
                                              logging_steps=2, report_to="none", save_strategy="steps",
                                              save_steps=4, disable_tqdm=True, use_cpu=True)
        trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args, train_dataset=data,
                                       callbacks=[callback])
        trainer.train(**kwargs)
        return callback

    base = train(tmp_path / "base", 8)
    base_record = (base.session.run_dir / "run.json").read_bytes()
    checkpoint = tmp_path / "base" / "checkpoint-4"
    parent_id = json.loads((checkpoint / "carbon_callbacks.json").read_text())["run_id"]
    forks = [train(tmp_path / name, 10, resume_from_checkpoint=str(checkpoint)) for name in ("lr-a", "lr-b")]

    assert (base.session.run_dir / "run.json").read_bytes() == base_record  # the parent is untouched
    for name, fork in zip(("lr-a", "lr-b"), forks):
        summary, logged = read_run(fork.session.run_dir)
        assert fork.session.run_dir.parent == (tmp_path / name / "carbon").resolve()
        assert summary["parent"]["run_id"] == parent_id and summary["parent"]["steps"] == 4
        assert summary["steps"] == 10 and [r["step"] for r in logged] == [6, 8, 10]  # its own steps, once each
        assert summary["step_log"]["first_step"] == 5 and summary["step_log"]["gap_count"] == 0


# ------------------------------------------------------------------------------------------- two jobs
JOB = """
import sys, time
import pytorch_lightning as pl
from carbon_callbacks.lightning import CarbonCallback
from lightning_support import FixedMeter, LitGPT, loader, trainer
from pathlib import Path
out = Path(sys.argv[1])
callback = CarbonCallback(intensity=0.5, meter=FixedMeter(), output_dir=out / "carbon")
fit = trainer(out / sys.argv[2], [callback], max_steps=10, log_every_n_steps=2)
while time.time() < float(sys.argv[3]):  # both jobs start their fit at the same instant
    pass
fit.fit(LitGPT(), loader())
print(callback.session.run_dir)
"""


def test_two_jobs_started_together_with_one_output_dir_get_a_folder_each(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "lightning"), str(TESTS), *sys.path])}
    start = f"{time.time() + 15:.3f}"  # after both processes have imported torch and Lightning
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, str(tmp_path), f"job{i}", start], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert all(job.returncode == 0 for job in jobs), [err[-3000:] for _, err in outputs]
    folders = {Path(out.strip().splitlines()[-1]) for out, _ in outputs}
    assert len(folders) == 2
    for folder in folders:
        summary, logged = read_run(folder)
        assert summary["steps"] == 10 and [r["cum_steps"] for r in logged] == [2, 4, 6, 8, 10]
