"""What the overhead benchmarks share: the configurations to run (CodeCarbon's when it is installed) and the
interleaved runs whose medians they compare."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path


def configs_with_codecarbon() -> tuple[list[str], str | None]:
    """`["baseline", "carbon-callbacks"]`, plus `"codecarbon"` when it is installed; and CodeCarbon's version."""
    try:
        import codecarbon
    except ImportError:
        print("codecarbon is not installed: its column is skipped (pip install codecarbon to include it).")
        return ["baseline", "carbon-callbacks"], None
    return ["baseline", "carbon-callbacks", "codecarbon"], codecarbon.__version__


def interleaved(run: Callable[[str, int, Path], dict], configs: list[str], steps: int, repeats: int) -> dict:
    """`run(config, steps, folder)` for every config in turn, `repeats` rounds, after a 20-step baseline warm-up
    (imports, allocator); the results per config, in order. Each round starts one config later than the one before,
    so no config always runs in the same place of a round."""
    results: dict[str, list[dict]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        run("baseline", 20, Path(tmp) / "warmup")
        for repeat in range(repeats):
            shift = repeat % len(configs)
            for config in configs[shift:] + configs[:shift]:
                results[config].append(run(config, steps, Path(tmp) / f"{config}-{repeat}"))
    return results


#: What `hook_figures` and a tracked run's timings give, in s: per step, and the fixed cost's parts.
HOOK_KEYS = ("hook_median", "hook_p99", "hook_mean", "start", "first_hook", "end")


def hook_figures(per_step: list[float]) -> dict[str, float]:
    """Median, 99th percentile and mean of our per-step hook times (s)."""
    ordered = sorted(per_step)
    return {"hook_median": statistics.median(ordered), "hook_p99": ordered[min(int(0.99 * len(ordered)),
                                                                              len(ordered) - 1)],
            "hook_mean": statistics.fmean(ordered)}


def in_place_result(runs: list[dict], floors: list[dict]) -> dict:
    """What `print_in_place` shows of tracked runs timed in place (each run's `hook_figures` and fixed cost's
    parts, the process's first run first) and of floor runs (the same timers around empty calls)."""
    return {"in_place": {key: statistics.median(run[key] for run in runs[1:]) for key in HOOK_KEYS},
            "first_fit": runs[0], "floor_us": 1e6 * statistics.median(run["hook_median"] for run in floors)}


def print_in_place(title: str, rows: list[tuple[str, dict]]) -> None:
    """A table of our work timed in place, one row per `(label, result)`: `result["in_place"]` the median fit's
    figures (`hook_figures` and the fixed cost's parts), `result["first_fit"]` the process's first fit's,
    `result["floor_us"]` what the timers read around empty calls."""
    print(f"\n{title}")
    print("| | per step median (floor; ours) | p99 | mean | fixed, median fit: start + count + end "
          "| fixed, the process's first fit |")
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        fixed = [f"{1e3 * (f['start'] + f['first_hook'] + f['end']):.1f} ms: {1e3 * f['start']:.1f} + "
                 f"{1e3 * f['first_hook']:.1f} + {1e3 * f['end']:.1f}" for f in (r["in_place"], r["first_fit"])]
        median_us = 1e6 * r["in_place"]["hook_median"]
        print(f"| {label} | {median_us:.1f} us ({r['floor_us']:.1f}; {median_us - r['floor_us']:.1f}) | "
              f"{1e6 * r['in_place']['hook_p99']:.1f} us | {1e6 * r['in_place']['hook_mean']:.1f} us | {fixed[0]} | "
              f"{fixed[1]} |")


def print_hooks(figures: dict[str, float], baseline_step: float, closes: str, floor: float, first: dict) -> None:
    """Our hooks alone, timed inside the run: per step (median, p99, mean; beside `floor`, the median the same
    timers read around empty hooks) and the fixed cost, broken down: the median fit's, and the process's first
    tracked fit's (`first`: the first count in a process, what a script that fits once pays)."""
    print(f"carbon-callbacks hooks alone, timed inside the run: per step median {figures['hook_median'] * 1e6:.1f} "
          f"us (the timers around empty hooks read {floor * 1e6:.1f} us: ours less that, "
          f"{(figures['hook_median'] - floor) * 1e6:.1f} us), p99 {figures['hook_p99'] * 1e6:.1f} us, "
          f"mean {figures['hook_mean'] * 1e6:.1f} us "
          f"({100 * figures['hook_mean'] / baseline_step:.3f}% of the baseline median step; the mean and p99 include "
          f"{closes})")
    for name, run in (("fixed cost (median fit)", figures), ("fixed cost (the process's first fit)", first)):
        fixed = run["start"] + run["first_hook"] + run["end"]
        print(f"{name} {fixed * 1e3:.1f} ms: start {run['start'] * 1e3:.1f} ms, first step (the FLOP count) "
              f"{run['first_hook'] * 1e3:.1f} ms, end {run['end'] * 1e3:.1f} ms (files, report, loggers)")
