"""The Hugging Face `Trainer` on 2 CPU processes (torchrun, DDP over gloo): each process metered once, totals summed
with torch.distributed's all-reduce, files and report written once by global rank 0 with `world_size` 2, and the
checkpoints carry the summed totals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from carbon_callbacks import TransformerConfig, read_run  # noqa: E402
from carbon_callbacks.flops import transformer_flops  # noqa: E402
from carbon_callbacks.transformers import STATE_FILE  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from trainer_ddp_worker import BATCH, JOULES, LENGTH, LOGGING_STEPS, SITE, STEPS, config  # noqa: E402

from processes import free_port  # noqa: E402

J_PER_KWH = 3.6e6


@pytest.mark.slow
def test_two_processes_count_each_device_once_and_rank_0_writes_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(HERE / "trainer_ddp_worker.py"), str(tmp_path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    ranks = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2

    # One process's work: STEPS steps on BATCH x LENGTH tokens, an interval of JOULES every LOGGING_STEPS steps.
    one_kwh = STEPS // LOGGING_STEPS * JOULES * SITE["pue"] / J_PER_KWH
    one_flops = STEPS * transformer_flops(TransformerConfig.from_hf(config(), batch_size=BATCH,
                                                                    seq_len=LENGTH)).model_flops
    (folder,) = (tmp_path / "carbon").iterdir()  # one run folder: rank 0's
    summary, records = read_run(folder)
    assert summary["status"] == "finished" and summary["steps"] == STEPS
    assert summary["world_size"] == 2 and summary["num_chips"] == 2
    assert summary["energy_kwh"] == pytest.approx(2 * one_kwh, rel=1e-12)
    assert summary["total_model_flops"] == 2 * one_flops
    assert summary["tokens"] == 2 * STEPS * BATCH * LENGTH
    assert [r["step"] for r in records] == [2, 4]
    for rank in (0, 1):  # every process ends on the global totals
        assert ranks[rank]["summary"]["energy_kwh"] == summary["energy_kwh"]
        assert ranks[rank]["last_row"]["carbon/energy_kwh"] == summary["energy_kwh"]
        assert ranks[rank]["last_row"]["carbon/co2e_kg"] == summary["gross_co2e_kg"]
    assert output.count(f"carbon-callbacks: {STEPS} steps, status finished") == 1  # the report, printed once
    saved = json.loads((tmp_path / f"checkpoint-{STEPS}" / STATE_FILE).read_text())  # each process's equal share
    assert saved["steps"] == STEPS and saved["run_dir"] == str(folder)
    assert 2 * sum(saved["energy_j"].values()) * SITE["pue"] / J_PER_KWH == pytest.approx(summary["energy_kwh"])
    assert 2 * saved["model_flops"] == summary["total_model_flops"]
