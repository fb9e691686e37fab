"""The run record on disk: folders claimed atomically, a step log of whole records only, readers that skip and name a
bad line, a store that survives a full, read-only or removed folder and writes what waited when it can."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from carbon_callbacks import RunSession, read_run
from carbon_callbacks._record import steplog as steplog_module
from carbon_callbacks._record import store as store_module
from carbon_callbacks._record.folder import claim_existing, claim_for_new_run, claim_fresh, claim_new
from carbon_callbacks._record.names import CLAIM_FILE, RUN_FILE, STEPS_FILE
from carbon_callbacks._record.reader import read_run_files
from carbon_callbacks._record.schema import HEADER, step_line
from carbon_callbacks._record.steplog import StepLog, gaps
from carbon_callbacks._record.store import RunStore
from carbon_callbacks._reports.report import read_report
from carbon_callbacks._warnings import STRICT_ENV, CarbonCallbacksWarning

from fakes import FixedMeter
from filesystems import SmallFilesystem

SITE = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.2}


def records(n: int, start: int = 1) -> list[dict]:
    return [{"step": i, "num_steps": 1, "cum_steps": i, "step_energy_kwh": 1e-6, "seconds": 1.0}
            for i in range(start, start + n)]


def lines(items: list[dict]) -> bytes:
    return "".join(step_line(r) for r in items).encode()


def session(tmp_path, **kwargs) -> RunSession:
    return RunSession(**{**SITE, "meter": FixedMeter(), "output_dir": tmp_path, "log_every_n_steps": 1, **kwargs})


# ------------------------------------------------------------------------------------------- claims
def test_a_new_folder_is_claimed_once(tmp_path):
    claim = claim_new(tmp_path / "run")
    assert claim is not None and (tmp_path / "run" / CLAIM_FILE).read_text() == claim.run_id
    assert claim_new(tmp_path / "run") is None  # taken, even after its claimer let go of the lock
    claim.release()
    assert claim_new(tmp_path / "run") is None
    other, moved = claim_for_new_run(tmp_path / "run")
    assert moved and other.folder.parent == (tmp_path / "run").resolve()


def test_a_live_writer_keeps_its_folder_and_a_dead_one_leaves_it(tmp_path):
    claim = claim_new(tmp_path / "run")
    assert claim_existing(tmp_path / "run") is None  # this process still writes it
    claim.release()
    again = claim_existing(tmp_path / "run")
    assert again is not None and again.run_id == claim.run_id


def test_fresh_folders_never_collide(tmp_path):
    folders = {claim_fresh(tmp_path).folder for _ in range(5)}
    assert len(folders) == 5


CLAIMER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from carbon_callbacks._record.folder import claim_for_new_run
    while time.time() < float(sys.argv[2]):  # both start at the same instant
        pass
    claim, moved = claim_for_new_run(Path(sys.argv[1]))
    print(claim.folder)
    """
)


def test_two_processes_started_together_get_two_folders(tmp_path):
    start = f"{time.time() + 1.5:.3f}"
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path / "out"), start], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    folders = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(folders)) == 2, folders


# ------------------------------------------------------------------------------------------- the step log
def test_a_failed_append_is_cut_back_and_written_whole_later(tmp_path, monkeypatch):
    log = StepLog(tmp_path / STEPS_FILE)
    log.create()
    log.append(lines(records(2)), [(1, 2)])
    real = os.pwrite
    calls = []

    def disk_full(fd, data, offset):  # the disk fills after 30 bytes of this append: a partial write, then ENOSPC
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, data[:30], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(steplog_module.os, "pwrite", disk_full)
    with pytest.raises(OSError, match="No space left"):
        log.append(lines(records(3, start=3)), [(3, 5)])
    assert (tmp_path / STEPS_FILE).read_bytes() == HEADER.encode() + lines(records(2))  # whole records only
    monkeypatch.setattr(steplog_module.os, "pwrite", real)
    log.append(lines(records(3, start=3)), [(3, 5)])
    assert [r["step"] for r in read_run(tmp_path)[1]] == [1, 2, 3, 4, 5]  # nothing twice, nothing spliced
    assert log.covered == [[1, 5]]


def test_a_torn_tail_left_by_a_failed_cut_is_trimmed_before_the_next_append(tmp_path):
    log = StepLog(tmp_path / STEPS_FILE)
    log.create()
    log.append(lines(records(1)), [(1, 1)])
    with open(tmp_path / STEPS_FILE, "ab") as handle:
        handle.write(b"2,1,2,,17650")  # what a crash mid-write (or a cut that failed) leaves
    log.append(lines(records(1, start=2)), [(2, 2)])
    assert [r["step"] for r in read_run(tmp_path)[1]] == [1, 2]


def test_reopening_trims_a_torn_tail_and_the_records_past_a_checkpoint(tmp_path):
    path = tmp_path / STEPS_FILE
    path.write_bytes(HEADER.encode() + lines(records(6)) + b"7,1,7,")
    log = StepLog(path)
    trimmed = log.reopen(keep_steps=4)
    assert trimmed.records == 2 and trimmed.steps == 2 and trimmed.torn_tail
    assert trimmed.energy_kwh == pytest.approx(2e-6) and trimmed.seconds == 2.0
    assert [r["step"] for r in read_run(tmp_path)[1]] == [1, 2, 3, 4]
    assert log.covered == [[1, 4]] and log.records == 4


def test_a_log_of_an_older_version_is_read_trimmed_and_continued_in_its_format(tmp_path):
    path = tmp_path / "steps.jsonl"  # JSON lines, no cum_steps
    path.write_bytes(b"".join((json.dumps({"step": i, "num_steps": 5}) + "\n").encode() for i in range(4)))
    log = StepLog(path)
    log.reopen(keep_steps=10)
    log.append(log.line({"step": 9, "num_steps": 5}), [(11, 15)])
    assert [r["step"] for r in read_run(tmp_path)[1]] == [0, 1, 9]


def test_gaps_are_the_steps_no_record_covers():
    assert gaps([[1, 4], [9, 10]], 12) == [[5, 8], [11, 12]]
    assert gaps([], 3) == [[1, 3]] and gaps([[1, 3]], 3) == []


# ------------------------------------------------------------------------------------------- readers
def test_readers_skip_a_torn_last_line_silently_and_name_any_other_bad_line(tmp_path):
    bad = b"3,1,3,,1765000000.0,abc" + b"," * 18 + b"\n"  # a string where a number goes
    negative = lines([{**records(1, 4)[0], "it_energy_j": -1.0}])
    (tmp_path / STEPS_FILE).write_bytes(HEADER.encode() + lines(records(2)) + bad + b"1,2\n" + negative
                                        + lines(records(1, 5)) + b"6,1,6,")  # ... and a torn last line
    files = read_run_files(tmp_path)
    assert [r["step"] for r in files.records] == [1, 2, 5]
    assert files.problems[:3] == [
        f"{tmp_path / STEPS_FILE}: line 4: field 'seconds': expected a number, got 'abc' (skipped)",
        f"{tmp_path / STEPS_FILE}: line 5: has 2 fields where the header names 24 (skipped)",
        f"{tmp_path / STEPS_FILE}: line 6: field 'it_energy_j': expected a number >= 0, got -1.0 (skipped)",
    ]
    assert "line 8 was cut short by a crash" in files.problems[3]
    with pytest.warns(CarbonCallbacksWarning, match="line 4: field 'seconds'"):
        read_run(tmp_path)
    assert any("line 4: field 'seconds'" in note for note in read_report(tmp_path).notes)


# ------------------------------------------------------------------------------------------- the store
def test_run_json_names_the_run_its_parent_and_what_the_step_log_holds(tmp_path):
    run = session(tmp_path)
    run.start()
    for _ in range(3):
        run.step_end()
    summary = run.finish()
    on_disk, logged = read_run(tmp_path)
    assert on_disk == summary
    assert summary["run_id"] == (tmp_path / CLAIM_FILE).read_text() and summary["parent"] is None
    assert summary["step_log"] == {"first_step": 1, "records": 3, "steps_covered": 3, "gaps": [], "gap_count": 0,
                                   "waiting": 0, "dropped": 0, "lost": 0}
    assert [r["cum_steps"] for r in logged] == [1, 2, 3]
    for key in ("energy_kwh", "it_energy_kwh", "gross_co2e_kg", "net_co2e_kg", "gross_kg_per_kwh", "net_kg_per_kwh",
                "pue", "steps", "wall_time_s", "total_model_flops", "total_hardware_flops", "tokens", "energy_method",
                "chip", "num_chips", "region", "world_size", "meter_faults"):
        assert key in summary, key


def test_records_wait_at_most_the_flush_interval(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(store_module.time, "monotonic", lambda: clock[0])
    run = session(tmp_path)  # windows of 3 s (FixedMeter); flushes when the next would end 10 s after the last
    run.start()
    on_disk = []
    for _ in range(10):
        clock[0] += 3.0
        run.step_end()
        on_disk.append(len(read_run(tmp_path)[1]))
    # Written at 9 s (3 + 9 >= 10), 18 s and 27 s after the start: never more than 10 s of records waiting.
    assert on_disk == [0, 0, 3, 3, 3, 6, 6, 6, 9, 9]
    assert read_run(tmp_path)[0]["steps"] == 9  # run.json agrees with the log it was written with


def test_records_written_in_a_crash_are_whole_and_agree_with_run_json(tmp_path):
    script = textwrap.dedent(
        """
        import os, sys
        from carbon_callbacks import RunSession
        from carbon_callbacks._record import store
        from fakes import FixedMeter
        store.FLUSH_SECONDS = 0.0  # every record is written at once
        run = RunSession(intensity=0.5, meter=FixedMeter(), output_dir=sys.argv[1], log_every_n_steps=2)
        run.start()
        for _ in range(25):
            run.step_end()
        os._exit(9)  # dies without closing: the open interval's one step is lost
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 9, proc.stderr
    summary, logged = read_run(tmp_path)
    assert summary["status"] == "running" and summary["steps"] == 24 == sum(r["num_steps"] for r in logged)
    assert summary["it_energy_kwh"] == pytest.approx(12 * 90.0 / 3.6e6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLAIM_FILE, RUN_FILE, STEPS_FILE]  # no temporary files


def test_a_removed_folder_is_made_again_and_the_lost_records_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv(STRICT_ENV)
    monkeypatch.setattr(store_module, "FLUSH_SECONDS", 0.0)
    run = session(tmp_path / "run")
    run.start()
    for _ in range(3):
        run.step_end()
    for path in (tmp_path / "run").iterdir():
        path.unlink()
    (tmp_path / "run").rmdir()
    with pytest.warns(CarbonCallbacksWarning, match="was removed during the run; it was created again"):
        run.step_end()
    summary = run.finish()
    assert summary["steps"] == 4 and summary["step_log"]["gaps"] == [[1, 3]] and summary["step_log"]["lost"] == 3
    assert read_run(tmp_path / "run")[0]["step_log"]["steps_covered"] == 1
    note = next(n for n in read_report(tmp_path / "run").notes if "covers" in n)
    assert note == "steps.csv covers 1 of the 4 steps in the totals; missing steps 1-3"


def test_records_beyond_the_buffer_are_dropped_and_recorded_as_a_gap(tmp_path, monkeypatch):
    store = RunStore(*_claimed(tmp_path), max_buffered=3)
    for first in range(1, 6):
        store.add({"step": first, "num_steps": 1, "cum_steps": first}, first, first)
    assert store.dropped == 2
    store.flush({"steps": 5})
    summary = read_run(tmp_path)[0]
    assert summary["step_log"]["gaps"] == [[1, 2]] and summary["step_log"]["dropped"] == 2


def _claimed(folder: Path):
    claim = claim_new(folder)
    log = StepLog(folder / STEPS_FILE)
    log.create()
    return claim, log


# ------------------------------------------------------------------------------------------- real file systems
@pytest.fixture
def small_fs(tmp_path):
    with SmallFilesystem.mounted(tmp_path / "fs", size_kb=512) as fs:
        yield fs


def test_a_full_disk_loses_no_record_and_splices_none(small_fs, monkeypatch):
    monkeypatch.delenv(STRICT_ENV)
    monkeypatch.setattr(store_module, "FLUSH_SECONDS", 0.0)
    run = session(small_fs.path / "run")
    run.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 301):
            if step == 150:
                small_fs.fill()
            if step == 250:
                small_fs.free()
            run.step_end()
    assert sum("No space left on device" in str(w.message) for w in caught) == 1  # warned once
    summary = run.finish()
    on_disk, logged = read_run(small_fs.path / "run")
    assert [r["cum_steps"] for r in logged] == list(range(1, 301))  # each record once, in order, whole
    assert on_disk["steps"] == summary["steps"] == 300 and on_disk["status"] == "finished"
    assert on_disk["step_log"]["gap_count"] == 0 and on_disk["step_log"]["waiting"] == 0
    assert (small_fs.path / "run" / "report.md").exists()


def test_a_folder_that_stays_read_only_still_ends_the_run(small_fs, monkeypatch, capsys):
    monkeypatch.delenv(STRICT_ENV)
    meter = FixedMeter()
    run = session(small_fs.path / "run", meter=None)
    run.start(meter_factory=lambda **_: meter)
    for _ in range(100):
        run.step_end()
    run.flush()
    small_fs.read_only()
    for _ in range(100):
        run.step_end()
    with pytest.warns(CarbonCallbacksWarning, match="Read-only file system"):
        summary = run.finish()
    assert summary["status"] == "finished" and summary["steps"] == 200  # the summary, in memory
    assert summary["step_log"]["waiting"] == 100  # the records that could not be written
    assert meter.closed  # the meter was closed
    out = capsys.readouterr().out
    assert "carbon-callbacks: 200 steps, status finished" in out and "(not all could be written)" in out
    on_disk = read_run(small_fs.path / "run")[0]
    assert on_disk["steps"] == 100 and on_disk["status"] == "running"  # what the folder held when it froze
