"""Two JAX processes on one CPU machine (`jax.distributed`, gloo): totals summed, files written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carbon_callbacks import read_run

from flax_support import mlp_step_flops
from processes import free_port

HERE = Path(__file__).resolve().parent
J_PER_KWH = 3.6e6


@pytest.mark.slow
def test_two_processes_sum_their_totals_and_process_0_writes_once(tmp_path):
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "two_process_worker.py"), str(port), str(rank), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["process_count"] for r in ranks] == [2, 2]

    # Both processes see the same summed totals: (90 + 30) J per interval, 3 intervals (2 + 2 + 1 steps).
    expected_kwh = 3 * (90.0 + 30.0) * 1.2 / J_PER_KWH
    for r in ranks:
        assert r["summary"]["world_size"] == 2
        assert r["summary"]["energy_kwh"] == pytest.approx(expected_kwh, rel=1e-12)
        assert r["summary"]["total_model_flops"] == 2 * 5 * mlp_step_flops()
        after_first_interval = r["history"][1]
        assert after_first_interval["carbon/energy_kwh"] == pytest.approx((90.0 + 30.0) * 1.2 / J_PER_KWH, rel=1e-12)

    # Only process 0 writes the run files and prints the report.
    assert ranks[0]["run_dir"] == str(tmp_path / "run") and ranks[1]["run_dir"] is None
    summary, records = read_run(tmp_path / "run")
    assert summary["world_size"] == 2 and summary["status"] == "finished"
    assert summary["gross_co2e_kg"] == pytest.approx(expected_kwh * 0.5, rel=1e-12)
    assert [rec["num_steps"] for rec in records] == [2, 2, 1]
    assert "carbon-callbacks: 5 steps" in outputs[0] and "carbon-callbacks: 5 steps" not in outputs[1]
