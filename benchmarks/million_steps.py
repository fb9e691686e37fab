"""The readers at a million steps: `report`, `whatif`, `plot` and `load_run` on a run folder of 1,000,000 records.

Run: `python benchmarks/million_steps.py [--records N] [--folder DIR]`

The folder is written by the library's own writer (an `Accountant` and a `RunStore`, as a run of a million logging
intervals would write it: `run.json` and a `steps.csv` of N records), unless `--folder` names one written before.
Each reader then runs in a process of its own, as a user runs it; printed are its wall time and its peak resident
memory (`ru_maxrss` of that process, from `os.wait4`), beside the targets of issue 26.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from carbon_callbacks import Accountant, resolve_site
from carbon_callbacks._record.folder import claim_new
from carbon_callbacks._record.names import STEPS_FILE
from carbon_callbacks._record.steplog import StepLog
from carbon_callbacks._record.store import RunStore

#: (name, command, target seconds, target MB)
READERS = (
    ("report", ["-m", "carbon_callbacks.cli", "report", "{run}"], 2.0, 200),
    ("report --json", ["-m", "carbon_callbacks.cli", "report", "--json", "{run}"], 2.0, 200),
    ("whatif", ["-m", "carbon_callbacks.cli", "whatif", "{run}", "--chip", "h100-sxm", "--region", "fr"], 0.5, None),
    ("plot", ["-m", "carbon_callbacks.cli", "plot", "{run}", "-o", "{out}/plot.png"], 5.0, None),
    ("load_run", ["-c", "import sys; from carbon_callbacks import load_run; print(len(load_run(sys.argv[1])))",
                  "{run}"], 5.0, 1000),
)


def write_run(folder: Path, records: int) -> None:
    """A run of `records` logging intervals of 50 steps, written as the library writes one."""
    accountant = Accountant(resolve_site(intensity=0.4, net_intensity=0.1, pue=1.1), chip="h100-sxm", num_chips=8)
    claim = claim_new(folder)
    log = StepLog(folder / STEPS_FILE)
    log.create()
    store = RunStore(claim, log)
    for i in range(records):
        record = accountant.update(seconds=30.0, energy_j={"gpu": 30.0 * 8 * 600.0, "cpu": 30.0 * 400.0},
                                   energy_method={"gpu": "measured:nvml", "cpu": "measured:rapl"},
                                   model_flops=8 * 50 * 4e14, tokens=50 * 1024 * 1024, loss=3.0 - i * 1e-6,
                                   step=50 * (i + 1), num_steps=50)
        store.add(record, 50 * i + 1, 50 * (i + 1))
        if store.waiting >= 10_000:
            store.flush(accountant.summary())
    store.flush(accountant.close("finished"))
    store.close()


def timed(argv: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak resident MB, exit code) of one process."""
    begun = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - begun
    return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, help="a run folder written before (skips the writing)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run = args.folder or Path(scratch) / "run"
        if args.folder is None:
            begun = time.perf_counter()
            write_run(run, args.records)
            print(f"wrote {args.records:,} records in {time.perf_counter() - begun:.0f} s: "
                  f"steps.csv {(run / STEPS_FILE).stat().st_size / 1e6:.0f} MB")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} logical CPUs")
        print("  reader          wall s   target s   peak MB   target MB   exit")
        for name, argv, target_s, target_mb in READERS:
            seconds, mb, code = timed([a.format(run=run, out=scratch) for a in argv])
            limit = f"{target_mb:>9}" if target_mb else "        -"
            print(f"  {name:<14} {seconds:7.2f}   {target_s:8.1f}   {mb:7.0f}   {limit}   {code:4d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
