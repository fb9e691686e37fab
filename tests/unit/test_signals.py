"""A run ends with its process: real signals sent to real processes, with and without a handler before ours."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from carbon_callbacks import read_run

TESTS = Path(__file__).resolve().parents[1]

#: A run of 1-step intervals of 90 J / 3 s that prints "ready" after 5 steps and then steps until it is stopped.
RUN = textwrap.dedent(
    """
    import signal, sys, time
    from carbon_callbacks import RunSession
    from fakes import FixedMeter
    {before}
    run = RunSession(intensity=0.5, meter=FixedMeter(), output_dir=sys.argv[1], log_every_n_steps=1)
    run.start()
    step = 0
    try:
        while True:
            step += 1
            run.step_end()
            if step == 5:
                print("ready", flush=True)
            time.sleep(0.01)
    {after}
    """
)


def start(tmp_path, before: str = "", after: str = "finally:\n        pass") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    script = RUN.format(before=before, after=after)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def test_sigterm_with_the_default_action_ends_the_run_and_the_process(tmp_path):
    proc = start(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err  # the process still dies of the signal
    summary, logged = read_run(tmp_path)
    assert summary["status"] == "interrupted" and summary["steps"] >= 5
    assert sum(r["num_steps"] for r in logged) == summary["steps"]  # everything up to the signal
    assert summary["it_energy_kwh"] == pytest.approx(summary["steps"] * 90.0 / 3.6e6)
    assert (tmp_path / "report.md").exists() and "status interrupted" in out


def test_sigterm_chains_to_the_handler_before_ours(tmp_path):
    before = textwrap.dedent(
        """
        def stop(signum, frame):
            print("user handler", flush=True)
            raise SystemExit(3)
        signal.signal(signal.SIGTERM, stop)
        """
    )
    after = "except BaseException as err:\n        run.finish(run.ending_status(err))\n        raise"
    proc = start(tmp_path, before=before, after=after)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "user handler" in out, err
    assert read_run(tmp_path)[0]["status"] == "interrupted"  # a SystemExit after a signal is an interruption


def test_ctrl_c_ends_the_run_interrupted_at_exit(tmp_path):
    proc = start(tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err  # the interpreter's own handler ran, as without us
    summary = read_run(tmp_path)[0]
    assert summary["status"] == "interrupted" and (tmp_path / "report.md").exists()


DEFERRED = textwrap.dedent(
    """
    import os, signal, sys
    from carbon_callbacks import RunSession
    from fakes import FixedMeter

    class SignalInsideTheRead(FixedMeter):  # SIGTERM arrives while the session is closing an interval
        def end_window(self, key):
            if self.windows_ended == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().end_window(key)

    run = RunSession(intensity=0.5, meter=SignalInsideTheRead(), output_dir=sys.argv[1], log_every_n_steps=2)
    run.start()
    for _ in range(100):
        run.step_end()
    """
)


def test_a_signal_during_the_runs_bookkeeping_waits_for_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", DEFERRED, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    summary, logged = read_run(tmp_path)
    # The 4th interval was being closed: it closed whole, once, and the run ended right after it.
    assert summary["status"] == "interrupted" and summary["steps"] == 8
    assert [r["cum_steps"] for r in logged] == [2, 4, 6, 8]
    assert summary["it_energy_kwh"] == pytest.approx(4 * 90.0 / 3.6e6)


def test_a_process_killed_without_warning_keeps_what_was_flushed(tmp_path):
    proc = start(tmp_path, before="from carbon_callbacks._record import store\nstore.FLUSH_SECONDS = 0.05")
    time.sleep(0.5)
    proc.kill()
    proc.communicate(timeout=60)
    summary, logged = read_run(tmp_path)
    assert summary["status"] == "running" and summary["steps"] == sum(r["num_steps"] for r in logged) >= 5


#: Kills the process with SIGKILL inside its 8th write of run.json (at step 7), after that flush appended to the step
#: log: the step log is then one record ahead of run.json.
KILLED_BETWEEN_THE_WRITES = """
import os, signal
from carbon_callbacks._record import store
store.FLUSH_SECONDS = 0
writes = []
def write_json_atomic(path, payload, staging=None):
    writes.append(path)
    if len(writes) == 8:
        os.kill(os.getpid(), signal.SIGKILL)
    return WRITE(path, payload, staging)
WRITE, store.write_json_atomic = store.write_json_atomic, write_json_atomic
"""


def test_a_process_killed_between_the_step_log_and_run_json_reads_as_its_last_run_json(tmp_path):
    from carbon_callbacks._record.reader import read_run_files

    proc = start(tmp_path, before=KILLED_BETWEEN_THE_WRITES)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    summary, logged = read_run(tmp_path)  # no warning: a kill is what left it so
    assert summary["status"] == "running" and summary["steps"] == 6
    assert [r["cum_steps"] for r in logged] == [1, 2, 3, 4, 5, 6]  # the records add up to run.json
    assert summary["step_log"]["records"] == 6 and (tmp_path / "steps.csv").read_text().count("\n") == 1 + 7
    assert read_run_files(tmp_path).problems == [
        f"{tmp_path / 'steps.csv'}: 1 records past run.json's last update, stopped by a crash between the two "
        "writes (skipped: the records add up to run.json)"]
