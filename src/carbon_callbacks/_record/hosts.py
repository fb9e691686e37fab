"""One job's hosts, each metered by one process, combined into one run folder through a shared file system.

A command run under a launcher (`carbon-callbacks run` under `srun`, `torchrun`, `mpirun`) has no collective of
its own. Each host's leader writes what it measured to `<run folder>/hosts/<host>.json` (atomically), and the job's
rank 0 waits for every host's file, then adds them up. The run folder must therefore be on a file system every host
reaches (a cluster's shared home or scratch), as checkpoints usually are.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from carbon_callbacks._record.folder import safe_name
from carbon_callbacks._record.store import write_json_atomic
from carbon_callbacks.meters._base import Measurement, join_methods

HOSTS_DIR = "hosts"


def write_part(folder: Path, host: str, measurement: Measurement, exit_code: int) -> None:
    """This host's measurement, for the job's rank 0 to add up.

    Raises:
        OSError: when the folder cannot be written.
    """
    parts = folder / HOSTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    write_json_atomic(parts / f"{safe_name(host)}.json", {
        "host": host, "seconds": measurement.seconds, "energy_j": measurement.energy_j,
        "methods": measurement.methods, "devices_j": measurement.devices, "exit_code": exit_code,
    })


def gather(folder: Path, hosts: int | None, timeout_s: float) -> list[dict]:
    """The hosts' measurements once `hosts` of them are there (all there are when `hosts` is `None`), or what is
    there after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    parts: list[dict] = []
    while True:
        parts = []
        for path in sorted((folder / HOSTS_DIR).glob("*.json")):
            try:
                parts.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        if hosts is None or len(parts) >= hosts or time.monotonic() >= deadline:
            return parts
        time.sleep(0.2)


def combined(parts: list[dict]) -> Measurement:
    """The job's measurement: each host's energy added up, the longest window, every method joined."""
    energy: dict[str, float] = {}
    methods: dict[str, str] = {}
    devices: dict[str, float] = {}
    for part in parts:
        for component, joules in part["energy_j"].items():
            energy[component] = energy.get(component, 0.0) + float(joules)
            method = part["methods"][component]
            methods[component] = join_methods(methods[component], method) if component in methods else method
        devices.update({f"{part['host']}/{d}": float(j) for d, j in part.get("devices_j", {}).items()})
    return Measurement(max(float(p["seconds"]) for p in parts), energy, methods, devices)
