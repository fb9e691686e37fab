"""`carbon-callbacks run` as a user runs it: a real subprocess, its output, its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carbon_callbacks.meters import cpu_info

CLI = [sys.executable, "-m", "carbon_callbacks.cli", "run"]
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint('child says hi')"


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path on any machine
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60, **kwargs)


def test_json_is_one_final_line_after_the_commands_output():
    done = run_cli("--intensity", "0.4", "--pue", "1.1", "--tdp-w", "100", "--no-rapl", "--json", "--",
                   sys.executable, "-c", BURN)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "child says hi"
    assert len(lines) == 2
    result = json.loads(lines[-1])
    assert result["energy_method"] == "modeled:tdp*util"
    assert result["energy_methods"] == {"cpu": "modeled:tdp*util"}
    info = cpu_info()
    cpu_j = result["energy_j_by_component"]["cpu"]
    assert cpu_j >= 100.0 * info.sockets / info.logical_cores * 0.3  # the child's 0.3 CPU seconds at least
    it_kwh = cpu_j / 3.6e6
    assert result["it_energy_kwh"] == pytest.approx(it_kwh, rel=1e-12)
    assert result["energy_kwh"] == pytest.approx(it_kwh * 1.1, rel=1e-12)
    assert result["gross_co2e_kg"] == pytest.approx(it_kwh * 1.1 * 0.4, rel=1e-12)
    assert result["net_co2e_kg"] == pytest.approx(it_kwh * 1.1 * 0.4, rel=1e-12)
    assert result["wall_time_s"] >= 0.3
    assert result["exit_code"] == 0
    assert any(info.model in note for note in result["meter_notes"])


def test_region_gives_gross_and_net_from_the_table():
    done = run_cli("--region", "google-georgia", "--no-rapl", "--json", "--", sys.executable, "-c", "pass")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["region"] == "google-georgia"
    assert result["gross_co2e_kg"] == pytest.approx(result["energy_kwh"] * result["gross_kg_per_kwh"], rel=1e-12)


@pytest.mark.parametrize("code", [0, 3, 42])
def test_exit_code_is_the_commands(code):
    done = run_cli("--intensity", "0.4", "--no-rapl", "--", sys.executable, "-c", f"import sys; sys.exit({code})")
    assert done.returncode == code
    assert "kg CO2e" in done.stderr and "[modeled:tdp*util]" in done.stderr


def test_a_command_killed_by_a_signal_exits_128_plus_the_signal():
    done = run_cli("--intensity", "0.4", "--no-rapl", "--", sys.executable, "-c",
                   "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert done.returncode == 128 + 15


def test_missing_site_is_a_user_error_before_the_command_starts(tmp_path):
    marker = tmp_path / "started"
    done = run_cli("--", sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    assert done.returncode == 2
    assert "never guesses a location" in done.stderr
    assert not marker.exists()


def test_missing_command_is_a_user_error():
    done = run_cli("--intensity", "0.4")
    assert done.returncode == 2
    assert "COMMAND is missing" in done.stderr


def test_an_unknown_program_exits_127():
    done = run_cli("--intensity", "0.4", "--no-rapl", "--", str(Path("no-such-program-here")))
    assert done.returncode == 127
    assert "cannot start" in done.stderr
