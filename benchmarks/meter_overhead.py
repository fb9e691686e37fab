"""Per-window cost of each meter, and the CPU share of the background samplers.

Run: `python benchmarks/meter_overhead.py [--windows N] [--sampler-seconds S]`

- per window = one `begin_window` + one `end_window`, median over N windows (microseconds);
- meters: ConstantPowerMeter, ModeledCpuMeter, RaplMeter over a 2-socket powercap tree on disk (real file
  reads; on a machine with readable RAPL the real /sys tree is timed too), NvmlMeter where a GPU is present;
- sampler CPU share: process CPU time while the NVML power sampler runs (a real GPU when present, else the
  pynvml functions patched to return a constant, which times our thread alone) and while the RAPL poll
  thread runs at 10 ms (3000x its default rate), as a percentage of one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

from carbon_callbacks.meters import ConstantPowerMeter, ModeledCpuMeter, RaplMeter, SensorUnavailableError


def per_window_us(meter, windows: int) -> float:
    samples = []
    for _ in range(windows):
        start = time.perf_counter()
        meter.begin_window("w")
        meter.end_window("w")
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def fake_rapl_tree(root: Path) -> Path:
    for socket in (0, 1):
        for entry, name in ((f"intel-rapl:{socket}", f"package-{socket}"), (f"intel-rapl:{socket}:0", "dram")):
            zone = root / entry
            zone.mkdir(parents=True)
            (zone / "name").write_text(name + "\n")
            (zone / "energy_uj").write_text("123456789\n")
            (zone / "max_energy_range_uj").write_text("262143328850\n")
    return root


def cpu_share_percent(seconds: float) -> float:
    """This process's CPU time over `seconds` of sleeping, as % of one core."""
    before = time.process_time()
    time.sleep(seconds)
    return (time.process_time() - before) / seconds * 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20000)
    parser.add_argument("--sampler-seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} logical CPUs, {args.windows} windows per meter")

    rows = [("ConstantPowerMeter", ConstantPowerMeter({"gpu": 300.0, "cpu": 50.0}))]
    rows.append(("ModeledCpuMeter", ModeledCpuMeter(tdp_w=100.0)))
    rows.append(("ModeledCpuMeter + DRAM", ModeledCpuMeter(tdp_w=100.0, dram_w_per_gb=0.375)))
    with tempfile.TemporaryDirectory() as tmp:
        tree = fake_rapl_tree(Path(tmp))
        rows.append(("RaplMeter (2 sockets x pkg+dram, tree on disk)", RaplMeter(tree, poll_s=None)))
        try:
            rows.append(("RaplMeter (this machine's /sys)", RaplMeter(poll_s=None)))
        except SensorUnavailableError as err:
            print(f"real RAPL: not available ({str(err)[:80]})")
        gpu = None
        try:
            from carbon_callbacks.meters import NvmlMeter

            gpu = NvmlMeter()
            rows.append((f"NvmlMeter ({len(gpu.devices)} GPU, counter)", gpu))
        except SensorUnavailableError as err:
            print(f"NVML: not available ({str(err)[:80]})")
        for name, meter in rows:
            print(f"{name:50s} {per_window_us(meter, args.windows):8.1f} us per window (begin + end)")
        for _, meter in rows:
            meter.close()

    idle = cpu_share_percent(args.sampler_seconds)
    print(f"\nbaseline (no sampler): {idle:.3f}% of one core")
    with tempfile.TemporaryDirectory() as tmp:
        rapl = RaplMeter(fake_rapl_tree(Path(tmp)), poll_s=0.01)
        share = cpu_share_percent(args.sampler_seconds)
        rapl.close()
    print(f"RAPL poll thread at 10 ms (default 30 s): {share:.3f}% of one core")

    import pynvml

    from carbon_callbacks.meters import NvmlMeter

    if gpu is not None:
        with mock.patch.object(
            pynvml, "nvmlDeviceGetTotalEnergyConsumption", autospec=True,
            side_effect=pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED),
        ):
            sampler = NvmlMeter(sample_s=0.1)  # real power reads, forced onto the sampler path
        label = "NVML power sampler at 100 ms (real GPU)"
    else:
        patches = [
            mock.patch.object(pynvml, "nvmlInit", autospec=True),
            mock.patch.object(pynvml, "nvmlShutdown", autospec=True),
            mock.patch.object(pynvml, "nvmlDeviceGetCount", autospec=True, return_value=8),
            mock.patch.object(pynvml, "nvmlDeviceGetHandleByIndex", autospec=True, side_effect=lambda i: i),
            mock.patch.object(pynvml, "nvmlDeviceGetName", autospec=True, return_value="fake"),
            mock.patch.object(pynvml, "nvmlDeviceGetUUID", autospec=True, side_effect=lambda h: f"GPU-{h}"),
            mock.patch.object(
                pynvml, "nvmlDeviceGetTotalEnergyConsumption", autospec=True,
                side_effect=pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED),
            ),
            mock.patch.object(pynvml, "nvmlDeviceGetEnforcedPowerLimit", autospec=True, return_value=300000),
            mock.patch.object(pynvml, "nvmlDeviceGetPowerUsage", autospec=True, return_value=150000),
        ]
        for patch in patches:
            patch.start()
        sampler = NvmlMeter(sample_s=0.1)
        label = "NVML power sampler at 100 ms (8 fake pre-Volta GPUs: our thread only, no driver)"
    share = cpu_share_percent(args.sampler_seconds)
    sampler.close()
    print(f"{label}: {share:.3f}% of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
