"""`create_meter`: the best meter this machine offers, with every fallback warned once and labelled."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from carbon_callbacks._errors import InvalidInputError, check_count, check_watts
from carbon_callbacks._host import Host, from_framework
from carbon_callbacks._site.tables import Chip, get_chip
from carbon_callbacks._warnings import warn_once
from carbon_callbacks.meters._base import Meter, SensorUnavailableError
from carbon_callbacks.meters._composite import CompositeMeter
from carbon_callbacks.meters.modeled import (
    ConstantPowerMeter,
    HostShareMeter,
    ModeledAcceleratorMeter,
    ModeledCpuMeter,
)
from carbon_callbacks.meters.rapl import DEFAULT_ROOT, POWERCAP_ENV, RaplMeter

logger = logging.getLogger(__name__)


def create_meter(
    chip: str | Chip | None = None,
    num_chips: int | None = None,
    devices: str | Sequence[int] = "auto",
    host_share: bool | float = False,
    *,
    nvml: bool = True,
    rapl: bool = True,
    rapl_root: str | None = None,
    tdp_w: float | None = None,
    dram_w_per_gb: float | None = None,
    utilization: float | None = None,
    include_children: bool = True,
    local_rank: int = 0,
    host: Host | None = None,
    cpu_scope: str = "process",
) -> Meter:
    """Builds the meter for this process: NVML for NVIDIA GPUs, RAPL for CPU and DRAM, modeled where neither works.

    Each missing sensor is warned about once per process, with the fix and the opt-out; what was detected is
    logged at INFO level and kept in the meter's `notes`.

    Args:
        chip: the accelerator (a `Chip` or a chips-table name). `None` meters NVIDIA GPUs if any are visible, and
            the CPU. A TPU (no sensor) is modeled from the table; a GPU without NVML too. A CPU chip sets the TDP
            of the modeled CPU meter. Defaults to `None`.
        num_chips: accelerators this process owns, for modeled accelerators and the host share. Defaults to
            `None`: the GPUs NVML meters, else 1.
        devices: CUDA ordinals for NVML, `"auto"` for every visible GPU, or `"host"` for every GPU of the host.
            Defaults to `"auto"`.
        host_share: add the accelerators' share of the host (CPU, memory, network, fans) as component `"host"`,
            `modeled:host-share`, instead of metering the CPU and DRAM: `True` for the default figure
            (`HOST_SHARE_W_PER_ACCELERATOR`), or watts per accelerator. Defaults to `False`.
        nvml: try NVML. Defaults to `True`.
        rapl: try RAPL; `False` uses the modeled CPU meter without a warning. Defaults to `True`.
        rapl_root: the powercap directory. Defaults to `None`: `CARBON_CALLBACKS_POWERCAP` if set (sysfs mounted
            elsewhere, a test's tree), else `"/sys/class/powercap"`.
        tdp_w: CPU TDP per socket for the modeled CPU meter, in W. Defaults to `None`: the chips table.
        dram_w_per_gb: model DRAM from resident memory at this many W/GB when RAPL is unavailable. Defaults to
            `None`: DRAM is not modeled.
        utilization: the TDP share assumed for a modeled accelerator. Defaults to `None`: the table's system power.
        include_children: count waited-for child processes in the modeled CPU meter. Defaults to `True`.
        local_rank: this process's rank on its node. RAPL counters cover the whole node, so only local rank 0
            reads them; the other ranks then report their CPU as 0 J, labelled `measured:rapl-by-local-rank-0`.
            Without RAPL, every rank models its own process's CPU time, which counts nothing twice.
            Defaults to `0`.
        host: this process's place in the job (`carbon_callbacks._host`); gives `local_rank` and, where it names
            them, the `devices`. A process that cannot know its place among several reads the host's counters, and
            a warning, once, says how to tell it. Defaults to `None`: `local_rank` and `devices` as given.
        cpu_scope: what a modeled CPU covers where RAPL cannot be read: `"process"` (this process and its waited-for
            children) or `"host"` (every process of the host, from `/proc/stat`: one process meters the host).
            Defaults to `"process"`.

    Raises:
        InvalidInputError: a bad number, or a host share without any accelerator.
        UnknownNameError: a chip not in the table.

    Example:
        >>> meter = create_meter(nvml=False, rapl=False, tdp_w=100.0)
        >>> meter.begin_window("run")
        >>> sorted(meter.end_window("run").methods.items())
        [('cpu', 'modeled:tdp*util')]
    """
    if host is not None:
        local_rank = host.local_rank or 0
        devices = list(host.devices) if host.devices is not None else devices
        if not host.known:
            warn_once("create_meter:local-rank", f"carbon-callbacks: this is process {host.rank} of {host.world}, "
                      "and nothing says which process it is on its host: if several share a host, each reads its "
                      "CPU and DRAM counters and the host is counted once per process. Set LOCAL_RANK (or "
                      "CARBON_CALLBACKS_LOCAL_RANK) to this process's index on its host.")
    rapl_root = rapl_root or os.environ.get(POWERCAP_ENV) or DEFAULT_ROOT
    chip = get_chip(chip) if isinstance(chip, str) else chip
    kind = chip.kind if chip is not None else None
    chips = None if num_chips is None else check_count("num_chips", num_chips)
    meters: list[Meter] = []
    accelerators = 0

    if kind in (None, "gpu") and nvml:
        try:
            from carbon_callbacks.meters.nvml import NvmlMeter

            meter = NvmlMeter(devices)
            meters.append(meter)
            accelerators = len(meter.devices)
        except SensorUnavailableError as err:
            if kind == "gpu":
                warn_once(
                    "create_meter:nvml",
                    f"GPU energy cannot be measured: {err} GPU energy is modeled from the chips table for "
                    f"{chip.name} instead. Pass nvml=False (to the callback, track(...) or create_meter; CLI: "
                    "--no-nvml) to choose the model without this warning.",
                )
            else:
                logger.info("no NVIDIA GPU metered: %s", err)
    if kind in ("gpu", "tpu") and not meters:
        accelerators = chips or 1
        meters.append(ModeledAcceleratorMeter(chip, accelerators, utilization))

    if host_share is not False and host_share is not None:
        if accelerators == 0:
            raise InvalidInputError(
                "host_share needs an accelerator (a GPU NVML can see, or chip='<gpu or tpu>'), found none."
            )
        per_chip = None if host_share is True else check_watts("host_share", host_share, positive=False)
        modeled = meters[-1] if isinstance(meters[-1], ModeledAcceleratorMeter) else None
        if modeled is not None and "modeled:system-power" in modeled.methods.values():
            warn_once(
                "create_meter:host-share-included",
                f"host_share is already part of {chip.name}'s table system power (the paper's figure); "
                "no separate host share is added. Pass utilization= to model the chip alone.",
            )
        else:
            meters.append(HostShareMeter(chips or accelerators, per_chip))
        logger.info("host share replaces CPU and DRAM metering (the paper's system-power convention)")
    else:
        cpu_meter: Meter | None = None
        if rapl and check_count("local_rank", local_rank, minimum=0) > 0:
            try:
                RaplMeter(rapl_root).close()
                cpu_meter = ConstantPowerMeter({"cpu": 0.0}, "measured:rapl-by-local-rank-0")
            except SensorUnavailableError:
                pass  # no RAPL on this node: every rank models its own process below
        elif rapl:
            try:
                cpu_meter = RaplMeter(rapl_root)
            except SensorUnavailableError as err:
                warn_once(
                    "create_meter:rapl",
                    f"CPU energy cannot be measured: {err} CPU energy is modeled as TDP x process CPU "
                    "utilisation (modeled:tdp*util) instead. Pass rapl=False (to the callback, track(...) or "
                    "create_meter; CLI: --no-rapl) to choose the model "
                    "without this warning.",
                )
        if cpu_meter is None:
            cpu_tdp = tdp_w
            if cpu_tdp is None and kind == "cpu" and chip.tdp_w is not None:
                cpu_tdp = chip.tdp_w
            cpu_meter = ModeledCpuMeter(tdp_w=cpu_tdp, dram_w_per_gb=dram_w_per_gb, include_children=include_children,
                                        host_wide=cpu_scope == "host")
        meters.append(cpu_meter)

    for meter in meters:
        for note in meter.notes:
            logger.info("meter: %s", note)
    return meters[0] if len(meters) == 1 else CompositeMeter(meters)


def torch_host(device, local_rank: int, rank: int, world: int, source: str) -> Host:
    """A torch process that meters each device once: the rank's own GPU (`device`, a `torch.device`: its `type` and
    `index`), and the host's CPU counters read by local rank 0 only."""
    devices = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    return from_framework(local_rank, rank, world, devices, source)
