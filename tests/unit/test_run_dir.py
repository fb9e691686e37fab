"""A run directory survives a crash: what was flushed is consistent and reloads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from carbon_callbacks import read_run

CRASHING_RUN = textwrap.dedent(
    """
    import os, sys
    from carbon_callbacks import Accountant, resolve_site
    acct = Accountant(resolve_site(intensity=0.5, pue=1.1), output_dir=sys.argv[1], flush_every=10)
    for step in range(25):
        acct.update(seconds=0.1, energy_j={"cpu": 36.0}, energy_method="given", tokens=8)
    os._exit(9)  # dies without closing: the last 5 steps are lost
    """
)


def test_crash_loses_at_most_the_last_batch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CRASHING_RUN, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    summary, records = read_run(tmp_path)
    assert summary["status"] == "running"
    assert summary["steps"] == len(records) == 20
    assert summary["tokens"] == 160
    assert summary["it_energy_kwh"] == pytest.approx(20 * 36.0 / 3.6e6)
    assert summary["gross_co2e_kg"] == pytest.approx(summary["energy_kwh"] * 0.5)
    assert records[-1]["co2e_kg"] == pytest.approx(summary["gross_co2e_kg"])


def test_truncated_last_line_is_skipped(tmp_path):
    lines = [json.dumps({"step": i}) for i in range(3)]
    (tmp_path / "steps.jsonl").write_text("\n".join(lines) + '\n{"step": 3, "sec')
    summary, records = read_run(tmp_path)
    assert summary is None
    assert [r["step"] for r in records] == [0, 1, 2]


def test_corrupt_middle_line_is_an_error(tmp_path):
    (tmp_path / "steps.jsonl").write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_run(tmp_path)


def test_no_temporary_files_left(tmp_path):
    subprocess.run([sys.executable, "-c", CRASHING_RUN, str(tmp_path)], check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "steps.jsonl"]
