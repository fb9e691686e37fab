"""What one `count_step` costs on meta tensors against fake tensors, first in a process and warm.

The step is the Lightning overhead benchmark's (`overhead_lightning.MLP`, a batch of 128 x 256, `self.log`
muted as the adapter mutes it), counted the way the adapter counts it. `meta` is `count_step` as it is (meta
tensors first); `fake` is the same call with the meta try switched off, which is what every step was counted on
before. Each round runs one fresh process per path (the first count pays for torch's first dispatches), the paths
in alternating order, and times its first count and the median of `--warm` more.

Run: python benchmarks/count_paths.py [--rounds 5] [--warm 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PATHS = ("meta", "fake")


def one_process(path: str, warm: int) -> dict:
    """In this process: the first count and the median of `warm` more, in ms, on `path`."""
    import torch
    from overhead_lightning import BATCH, D_IN, MLP

    from carbon_callbacks._compat.lightning import count_step
    from carbon_callbacks.flops import _torch_step

    torch.set_num_threads(1)
    if path == "fake":
        def no_meta(*args):
            raise RuntimeError("meta switched off")

        _torch_step._meta_count = no_meta
    module, batch = MLP(), (torch.randn(BATCH, D_IN),)
    times, methods = [], set()
    for _ in range(warm + 1):
        start = time.perf_counter()
        counted = count_step(module, batch, 0)
        times.append((time.perf_counter() - start) * 1e3)
        methods.add(counted.method)
    return {"first": times[0], "warm": statistics.median(times[1:]), "flops": counted.total, "methods": sorted(methods)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per path (default 5)")
    parser.add_argument("--warm", type=int, default=10, help="counts after the first, per process (default 10)")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_process(args.child, args.warm)))
        return
    results: dict[str, list[dict]] = {path: [] for path in PATHS}
    for round_ in range(args.rounds):
        for path in PATHS if round_ % 2 == 0 else PATHS[::-1]:
            out = subprocess.run([sys.executable, __file__, "--child", path, "--warm", str(args.warm)],
                                 capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
            results[path].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"count_step of the Lightning benchmark's MLP step, {args.rounds} fresh processes per path")
    print(f"{'path':6} {'first count ms (median; range)':32} {'warm count ms (median; range)':32} FLOPs, method")
    for path, runs in results.items():
        first, warm = [r["first"] for r in runs], [r["warm"] for r in runs]
        print(f"{path:6} {statistics.median(first):7.1f} ({min(first):.1f}-{max(first):.1f}){'':14} "
              f"{statistics.median(warm):7.1f} ({min(warm):.1f}-{max(warm):.1f}){'':14} "
              f"{runs[0]['flops']:,}, {', '.join(runs[0]['methods'])}")


if __name__ == "__main__":
    main()
