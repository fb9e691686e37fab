"""What the overhead benchmarks share: the configurations to run (CodeCarbon's when it is installed) and the
interleaved runs whose medians they compare."""

from __future__ import annotations

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
    (imports, allocator); the results per config, in order."""
    results: dict[str, list[dict]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        run("baseline", 20, Path(tmp) / "warmup")
        for repeat in range(repeats):
            for config in configs:
                results[config].append(run(config, steps, Path(tmp) / f"{config}-{repeat}"))
    return results
