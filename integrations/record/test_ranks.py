"""One rank's fault under DDP: the ranks stay in step (every rank enters every sum), the run finishes, and the
estimated windows are labelled in the record rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from carbon_callbacks import read_run

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


def test_a_nan_meter_on_one_of_two_ranks_neither_hangs_nor_drops_steps(tmp_path):
    paths = [str(HERE), str(HERE.parent / "lightning"), str(HERE.parents[1] / "tests"), *sys.path]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    env.pop("CARBON_CALLBACKS_STRICT", None)  # as users run it: the fault warns and training goes on
    proc = subprocess.run([sys.executable, str(HERE / "ddp_fault_worker.py"), str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary, logged = read_run(tmp_path / "run")
    assert summary["status"] == "finished" and summary["steps"] == 8 and summary["world_size"] == 2
    assert [r["num_steps"] for r in logged] == [2, 2, 2, 2]
    # Rank 1's windows 2 to 4 were estimated at its first window's power (30 W over each 3 s window); rank 0's 4
    # were measured: 8 windows of 90 J, and the 3 estimated ones counted over both ranks.
    assert summary["meter_faults"]["windows"] == 3 and summary["meter_faults"]["seconds"] == 9.0
    assert summary["it_energy_kwh"] * 3.6e6 == pytest.approx(8 * 90.0, rel=1e-12)
