"""What the run record costs: the flush policy per step, the reading of a meter at an interval's end, and the memory of
a long run of unknown length.

Run: `python benchmarks/run_record.py [--seconds S] [--steps N]`

- flush policy: a synthetic loop of 2 ms steps (busy-waited, so the machine's timer does not set the pace) with a
  record every step, for S seconds, under each policy: records written when the next interval would end 10 s
  after the last write (the default: a kill without warning loses at most 10 s or one interval), 60 s (the
  policy before), and every record. Printed: the time spent writing per step, in microseconds and as a share
  of the step, and the writes made;
- interval end: the median time of one `step_end` that closes an interval (the meter read on the checked meter's
  worker thread, the accountant's arithmetic, the record serialized for the store), and of one that does not;
- memory: a run with no known length (no projection), a record every 50 steps, to N steps; the traced Python memory
  (`tracemalloc`) held by the run after 1e3, 1e4, 1e5 and N steps, and the process's resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from carbon_callbacks import RunSession
from carbon_callbacks._record import store as store_module
from carbon_callbacks.meters import ReplayMeter


def meter() -> ReplayMeter:
    return ReplayMeter(energy_j=1.0, seconds=0.002, component="gpu", method="measured:nvml")


def quiet_session(folder: Path, every: int) -> RunSession:
    return RunSession(intensity=0.4, pue=1.1, meter=meter(), output_dir=folder, log_every_n_steps=every)


def finish_quietly(run: RunSession) -> None:
    """Ends the run without printing its report."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        run.finish()


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def flush_policy(seconds: float, flush_s: float) -> tuple[float, int, int]:
    """(writing time per step in s, writes, steps) of a loop of 2 ms steps with a record each."""
    spent, writes = [0.0], [0]
    original = store_module.RunStore.flush

    def timed(self, summary):
        begun = time.perf_counter()
        try:
            return original(self, summary)
        finally:
            spent[0] += time.perf_counter() - begun
            writes[0] += 1

    store_module.RunStore.flush = timed
    store_module.FLUSH_SECONDS = flush_s
    try:
        with tempfile.TemporaryDirectory() as folder:
            run = quiet_session(Path(folder) / "run", every=1)
            run.start()
            spent[0], writes[0] = 0.0, 0  # the start's write is not the policy's
            steps, end = 0, time.perf_counter() + seconds
            while time.perf_counter() < end:
                busy(0.002)
                run.step_end()
                steps += 1
            result = (spent[0] / steps, writes[0], steps)
            finish_quietly(run)
    finally:
        store_module.RunStore.flush = original
        store_module.FLUSH_SECONDS = 10.0
    return result


def interval_end_us(samples: int = 3000) -> tuple[float, float]:
    """Median microseconds of a `step_end` that closes an interval, and of one that does not."""
    with tempfile.TemporaryDirectory() as folder:
        run = quiet_session(Path(folder) / "run", every=2)
        run.start()
        closing, open_ = [], []
        for i in range(2 * samples):
            begun = time.perf_counter()
            run.step_end()
            (closing if i % 2 else open_).append(time.perf_counter() - begun)
        finish_quietly(run)
    return statistics.median(closing) * 1e6, statistics.median(open_) * 1e6


def memory(steps: int) -> list[tuple[int, float, float]]:
    """(steps, traced MB held by the run since its start, resident MB) at 1e3, 1e4, 1e5 and `steps` steps."""
    marks = sorted({m for m in (1_000, 10_000, 100_000, steps) if m <= steps})
    out = []
    with tempfile.TemporaryDirectory() as folder:
        run = quiet_session(Path(folder) / "run", every=50)
        tracemalloc.start()
        run.start()
        base = tracemalloc.get_traced_memory()[0]
        done = 0
        for mark in marks:
            for _ in range(mark - done):
                run.step_end()
            done = mark
            run.flush()  # what the policy does every 10 s: the buffer is not what this measures
            held = (tracemalloc.get_traced_memory()[0] - base) / 1e6
            out.append((mark, held, _resident_mb()))
        tracemalloc.stop()
        finish_quietly(run)
    return out


def _resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="seconds of steps per flush policy")
    parser.add_argument("--steps", type=int, default=1_000_000, help="steps of the long run of unknown length")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} logical CPUs")
    print(f"\nflush policy, 2 ms steps with a record each, {args.seconds:g} s per policy:")
    print("  policy                       writing per step   share of a 2 ms step   writes   steps")
    for name, flush_s in (("10 s (default)", 10.0), ("60 s (before)", 60.0), ("every record", 0.0)):
        per_step, writes, steps = flush_policy(args.seconds, flush_s)
        print(f"  {name:<28} {per_step * 1e6:8.2f} us        {per_step / 0.002:8.3%}           {writes:6d}  {steps:6d}")
    closing, open_ = interval_end_us()
    print(f"\nstep_end, median: {closing:.1f} us when it closes an interval, {open_:.2f} us when it does not")
    print(f"\nmemory of a run of unknown length, a record every 50 steps, to {args.steps:,} steps:")
    print("  steps        held by the run (traced)   resident")
    for steps, held, resident in memory(args.steps):
        print(f"  {steps:>9,}    {held:8.3f} MB                {resident:7.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
