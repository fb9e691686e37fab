"""DDP on 2 CPU processes (gloo): each rank metered once, totals summed with the strategy's collective, files and
report written once by global rank 0 with `world_size` 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carbon_callbacks import read_run
from carbon_callbacks.flops import transformer_flops

from lightning_support import DENSE_SMALL, J_PER_KWH, SITE

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_ddp_two_processes_sum_totals_and_rank_0_writes_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]), "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    ranks = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)}

    # 4 steps, windows of 2 steps: 2 windows x 90 J on each of 2 ranks, x PUE 1.2.
    energy_kwh = 2 * 2 * 90.0 * 1.2 / J_PER_KWH
    flops_per_step = transformer_flops(DENSE_SMALL).model_flops
    for rank in (0, 1):  # every rank logs the global totals
        assert ranks[rank]["logged"]["carbon/energy_kwh"] == pytest.approx(energy_kwh, rel=1e-12)
        assert ranks[rank]["logged"]["carbon/flops"] == flops_per_step

    summary, records = read_run(tmp_path / "run")
    assert summary["status"] == "finished"
    assert summary["world_size"] == 2 and summary["num_chips"] == 2
    assert summary["steps"] == 4
    assert summary["energy_kwh"] == pytest.approx(energy_kwh, rel=1e-12)
    assert summary["gross_co2e_kg"] == pytest.approx(energy_kwh * SITE["intensity"], rel=1e-12)
    assert summary["total_model_flops"] == 2 * 4 * flops_per_step
    assert [r["num_steps"] for r in records] == [2, 2]  # rank 0's records only
    assert output.count("carbon-callbacks: 4 steps, status finished") == 1  # the report, printed once
