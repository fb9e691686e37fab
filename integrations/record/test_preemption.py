"""A scheduler's SIGTERM, sent to a real training process of every adapter: the run ends `interrupted`, with every
step up to the signal, the loggers' last row on the totals where the framework has a logger we can write, and
`report.md`; the process does what it would have done without us (Lightning's exception, the others' death by the
signal)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from carbon_callbacks import read_run

from readers import tensorboard_scalars

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1] / "tests"
pytestmark = pytest.mark.slow


def preempt(framework: str, out: Path) -> tuple[subprocess.Popen, str]:
    """Starts the worker, waits until it trained 6 steps, sends SIGTERM, and waits for it to end."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(TESTS), *sys.path]), "OMP_NUM_THREADS": "1"}
    with open(out / "stderr.txt", "w+") as stderr:  # a file: a full pipe would stall the worker
        proc = subprocess.Popen([sys.executable, str(HERE / "preempt_worker.py"), framework, str(out)], cwd=out,
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        printed = []  # what the framework printed before (the Trainer prints its log rows)
        while (line := proc.stdout.readline()) and line.strip() != "ready":
            printed.append(line)
        if line.strip() != "ready":
            proc.kill()
            stderr.seek(0)
            pytest.fail(f"the {framework} worker did not start:\n{stderr.read()[-4000:]}")
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=120)
        stderr.seek(0)
        return proc, "".join(printed) + stdout + stderr.read()


def check_record(run_dir: Path, output: str) -> dict:
    summary, logged = read_run(run_dir)
    assert summary["status"] == "interrupted", output[-4000:]
    assert summary["steps"] >= 6 and summary["steps"] == sum(r["num_steps"] for r in logged)
    assert summary["it_energy_kwh"] * 3.6e6 == pytest.approx(90.0 * len(logged))  # every interval, once
    assert (run_dir / "report.md").exists() and "status interrupted" in output
    return summary


def test_lightning_turns_sigterm_into_an_interrupted_run(tmp_path):
    proc, output = preempt("lightning", tmp_path)
    run_dir = tmp_path / "csv" / "version_0" / "carbon"
    summary = check_record(run_dir, output)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("carbon/energy_kwh")]
    assert float(rows[-1]["carbon/energy_kwh"]) == pytest.approx(summary["energy_kwh"], rel=1e-9)  # the last row


def test_the_trainer_process_dies_of_sigterm_with_its_run_written(tmp_path):
    proc, output = preempt("hf", tmp_path)
    assert proc.returncode == -signal.SIGTERM, output[-4000:]
    (run_dir,) = (tmp_path / "carbon").iterdir()
    summary = check_record(run_dir, output)
    scalars = tensorboard_scalars(tmp_path / "runs")
    assert scalars["train/carbon/energy_kwh"][-1][1] == pytest.approx(summary["energy_kwh"], rel=1e-6)


@pytest.mark.parametrize("framework", ["keras", "flax"])
def test_keras_and_flax_processes_die_of_sigterm_with_their_run_written(tmp_path, framework):
    proc, output = preempt(framework, tmp_path)
    assert proc.returncode == -signal.SIGTERM, output[-4000:]
    check_record(tmp_path / "run", output)
