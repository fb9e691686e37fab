"""Modeled meters: energy from a stated power model where no sensor exists, each labelled with its assumption.

- `ConstantPowerMeter`: energy = watts x elapsed time, for users and tests that need deterministic energy.
- `ModeledCpuMeter`: CPUs without RAPL (virtual machines): TDP x sockets x this process's CPU utilisation.
- `ModeledAcceleratorMeter`: accelerators without sensors (TPUs): the chip table's measured system power per chip,
  or TDP x a stated utilisation.
- `HostShareMeter`: the accelerator's share of host CPU, memory, network and fans, as the paper's system power has.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from carbon_callbacks._errors import InvalidInputError, check_count, check_number, check_watts
from carbon_callbacks._site.tables import Chip, get_chip
from carbon_callbacks.meters._base import MeterBase, check_method

#: DRAM power per GB of resident memory, in W: "roughly 3 watts for every 8GB of DDR3 or DDR4" (Crucial,
#: https://www.crucial.com/support/articles-faq-memory/how-much-power-does-memory-use), i.e. 0.375 W/GB.
DRAM_W_PER_GB = 3.0 / 8.0

#: Host share per accelerator at full load, in W: an NVIDIA DGX A100 draws at most 6.5 kW
#: (https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/nvidia-dgx-a100-datasheet.pdf) with 8 A100 SXM
#: GPUs of 400 W TDP each (https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/
#: nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): (6500 - 8 x 400) / 8 = 412.5 W of CPUs, memory, NICs,
#: NVSwitches, storage and fans per GPU. It is an upper bound (both at maximum power); pass your own figure.
HOST_SHARE_W_PER_ACCELERATOR = (6500.0 - 8 * 400.0) / 8

#: Hardware threads per socket of the chips table's generic `cpu` row, the Intel Xeon Platinum 8380 (40 cores,
#: 80 threads: https://ark.intel.com/content/www/us/en/ark/products/212287/intel-xeon-platinum-8380-processor-60m-cache-2-30-ghz.html).
#: A virtual machine sees only its own vCPUs, not the host's threads, so its share of the socket's TDP is taken per
#: thread of this reference CPU.
REFERENCE_CPU_THREADS_PER_SOCKET = 80

_COMPONENTS = ("gpu", "tpu", "cpu", "dram", "host")


class ConstantPowerMeter(MeterBase):
    """Deterministic energy without hardware: energy = watts x elapsed time, per component.

    For tests, demos and machines whose power is known from elsewhere (a wall meter, a vendor figure).

    Args:
        watts: constant power by component (`"gpu"`, `"tpu"`, `"cpu"`, `"dram"`, `"host"`), in W.
            Defaults to `{"cpu": 50.0}`.
        method: the method label for every component, or one per component. Defaults to `"given"`.
        clock: the clock energy and windows are timed with, in s (inject a fake one in tests).
            Defaults to `time.perf_counter`.

    Raises:
        InvalidInputError: for an unknown component, a negative or non-finite power, or a bad label.

    Example:
        >>> from itertools import count
        >>> ticks = count(0.0, 2.0)
        >>> meter = ConstantPowerMeter({"gpu": 300.0}, clock=lambda: next(ticks))
        >>> meter.begin_window("step")
        >>> meter.end_window("step").energy_j
        {'gpu': 600.0}
    """

    reads_may_block = False  # clock and counter-file reads only

    def __init__(
        self,
        watts: Mapping[str, float] | None = None,
        method: str | Mapping[str, str] = "given",
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(clock=clock)
        watts = {"cpu": 50.0} if watts is None else dict(watts)
        if not watts:
            raise InvalidInputError("watts must name at least one component, got an empty mapping.")
        self._watts: dict[str, float] = {}
        for component, value in watts.items():
            if component not in _COMPONENTS:
                raise InvalidInputError(f"watts has unknown component {component!r}; valid: {', '.join(_COMPONENTS)}.")
            self._watts[component] = check_number(f"watts[{component!r}]", value, non_negative=True)
        if isinstance(method, str):
            methods = dict.fromkeys(self._watts, method)
        else:
            missing = [c for c in self._watts if c not in method]
            if missing:
                raise InvalidInputError(f"method has no entry for component(s) {', '.join(missing)}.")
            methods = {c: method[c] for c in self._watts}
        self._methods = {c: check_method("method", m) for c, m in methods.items()}
        self.notes = [f"{c}: {w:g} W constant ({self._methods[c]})" for c, w in self._watts.items()]

    @property
    def watts(self) -> dict[str, float]:
        """The constant power by component, in W."""
        return dict(self._watts)

    @property
    def methods(self) -> dict[str, str]:
        """The method label by component."""
        return dict(self._methods)

    def _read(self) -> dict[str, float]:
        now = self._now()
        return {component: watts * now for component, watts in self._watts.items()}

    def _component(self, device: str) -> str:
        return device

    def _method(self, device: str) -> str:
        return self._methods[device]


class HostShareMeter(ConstantPowerMeter):
    """The accelerators' share of the host (CPU, memory, network, fans), modeled as constant watts per accelerator.

    The paper's "measured system power per processor" includes this share; use it when the host is not metered,
    so a measured accelerator can be compared with the paper's figures. Component `"host"`, method
    `"modeled:host-share"`.

    Args:
        num_chips: accelerators this process meters. Defaults to `1`.
        watts_per_chip: host power per accelerator, in W. Defaults to `HOST_SHARE_W_PER_ACCELERATOR` (412.5 W,
            DGX A100 at maximum power: an upper bound).
        clock: the clock, in s. Defaults to `time.perf_counter`.
    """

    def __init__(
        self,
        num_chips: int = 1,
        watts_per_chip: float | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        chips = check_count("num_chips", num_chips)
        if watts_per_chip is None:
            per_chip, source = HOST_SHARE_W_PER_ACCELERATOR, "DGX A100 maximum system power minus 8 x GPU TDP, / 8"
        else:
            per_chip, source = check_number("host_share_w", watts_per_chip, non_negative=True), "given"
        super().__init__({"host": per_chip * chips}, "modeled:host-share", clock=clock)
        self.notes = [f"host: {per_chip:g} W per accelerator x {chips} ({source}), modeled:host-share"]


class ModeledAcceleratorMeter(ConstantPowerMeter):
    """Accelerators without an energy sensor (TPUs, GPUs without NVML): a power figure from the chip table.

    With no `utilization`, the chip's measured average system power (the paper's Table 3 figure, which already
    includes the host share) is used, labelled `modeled:system-power`; otherwise TDP x `utilization`, labelled
    `modeled:tdp*<utilization>`.

    Args:
        chip: a `Chip` or a name from the chips table.
        num_chips: chips this process meters. Defaults to `1`.
        utilization: the assumed share of TDP drawn on average, in [0, 1]. Defaults to `None`: use the table's
            system power, else TDP x 1.0 (an upper bound, labelled `modeled:tdp*1`).
        clock: the clock, in s. Defaults to `time.perf_counter`.

    Raises:
        InvalidInputError: when the chip has neither a system power nor a TDP in the table.
    """

    def __init__(
        self,
        chip: str | Chip,
        num_chips: int = 1,
        utilization: float | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        chip = get_chip(chip) if isinstance(chip, str) else chip
        chips = check_count("num_chips", num_chips)
        component = chip.kind if chip.kind in ("gpu", "tpu") else "gpu"
        if utilization is None and chip.system_power_w is not None:
            per_chip, label = chip.system_power_w, "modeled:system-power"
            how = f"measured average system power {per_chip:g} W per chip (includes the host share)"
        else:
            if chip.tdp_w is None:
                raise InvalidInputError(
                    f"chip {chip.name!r} has neither a system power nor a TDP in the table; "
                    "use ConstantPowerMeter({'gpu': <W>}) with your own figure."
                )
            util = 1.0 if utilization is None else check_number("utilization", utilization, at_least=0.0, at_most=1.0)
            per_chip, label = chip.tdp_w * util, f"modeled:tdp*{util:g}"
            how = f"TDP {chip.tdp_w:g} W x utilisation {util:g}"
        super().__init__({component: per_chip * chips}, label, clock=clock)
        self.notes = [f"{component}: {chip.name} x {chips}, {how} (table:chips/{chip.name} {chip.source})"]


@dataclass(frozen=True)
class CpuInfo:
    """What `/proc/cpuinfo` says about the machine's CPUs.

    Attributes:
        model: the CPU model name (e.g. `"AMD EPYC 7763 64-Core Processor"`).
        sockets: physical packages (distinct `physical id` values; 1 when not reported).
        logical_cores: logical CPUs (hardware threads) the OS shows.
        virtualized: the `hypervisor` flag is set: the CPUs are a virtual machine's vCPUs.
    """

    model: str
    sockets: int
    logical_cores: int
    virtualized: bool = False


@functools.lru_cache(maxsize=8)
def cpu_info(path: str = "/proc/cpuinfo") -> CpuInfo:
    """Reads the CPU model, socket count and logical core count (cached: read once per process).

    Args:
        path: the cpuinfo file. Defaults to `"/proc/cpuinfo"`; other systems fall back to `platform.processor()`.
    """
    model, sockets, logical, virtualized = "", set(), 0, False
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "processor":
                    logical += 1
                elif key == "model name" and not model:
                    model = value.strip()
                elif key == "physical id":
                    sockets.add(value.strip())
                elif key == "flags" and not virtualized:
                    virtualized = "hypervisor" in value.split()
    except OSError:
        pass
    return CpuInfo(
        model=model or platform.processor() or "unknown CPU",
        sockets=max(len(sockets), 1),
        logical_cores=logical or os.cpu_count() or 1,
        virtualized=virtualized,
    )


def _host_cpu_seconds(path: str = "/proc/stat") -> float:
    """Busy CPU seconds of the whole host since boot: user, nice, system, irq, softirq and steal time of the `cpu`
    line of `/proc/stat`, in clock ticks (https://www.kernel.org/doc/html/latest/filesystems/proc.html)."""
    with open(path) as handle:
        fields = handle.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds(include_children: bool) -> float:
    """User + system CPU seconds of this process (and its waited-for children), at microsecond resolution.

    `getrusage` rather than `os.times()`, whose values are in clock ticks (10 ms on Linux).
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    seconds = usage.ru_utime + usage.ru_stime
    if include_children:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds += children.ru_utime + children.ru_stime
    return seconds


_STATM: list[int] = []  # [pid, fd] of this process's /proc/self/statm, opened once per process


def _resident_gb() -> float:
    """This process's resident memory, in GB (10^9 bytes): `/proc/self/statm`, else its peak from getrusage."""
    try:
        if not _STATM or _STATM[0] != os.getpid():  # a forked child must read its own file
            _STATM[:] = [os.getpid(), os.open("/proc/self/statm", os.O_RDONLY)]
        pages = int(os.pread(_STATM[1], 128, 0).split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError, AttributeError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak * (1 if platform.system() == "Darwin" else 1024) / 1e9


def _cpu_tdp(info: CpuInfo) -> tuple[float, str]:
    """TDP per socket for the CPU model if the table knows it, else the table's generic `cpu` row."""
    try:
        chip = get_chip(info.model)
        if chip.kind == "cpu" and chip.tdp_w is not None:
            return chip.tdp_w, f"table:chips/{chip.name} {chip.source}"
    except Exception:  # an unknown model name is expected here; the generic row follows
        pass
    try:
        chip = get_chip("cpu")
    except Exception as err:
        raise InvalidInputError(
            f"No TDP for CPU {info.model!r}: the chips table has no row for it nor a generic 'cpu' row ({err}). "
            "Pass tdp_w=<W per socket>."
        ) from None
    if chip.tdp_w is None:
        raise InvalidInputError(f"The chips table's {chip.name!r} row has no tdp_w. Pass tdp_w=<W per socket>.")
    return chip.tdp_w, f"table:chips/{chip.name} (generic CPU row) {chip.source}"


class ModeledCpuMeter(MeterBase):
    """CPUs without RAPL (virtual machines): energy = TDP per hardware thread x process CPU seconds.

    Each busy hardware thread draws TDP / threads per socket, so energy per window is simply CPU seconds x TDP /
    threads per socket: no sampling, one `getrusage` pair per window edge. On bare metal the threads per socket are
    the logical cores / sockets the OS shows (so a fully busy machine draws TDP x sockets); on a virtual machine,
    whose vCPUs are a slice of a larger host socket, they are the reference CPU's
    (`REFERENCE_CPU_THREADS_PER_SOCKET`) unless `tdp_w` or `threads_per_socket` is given. Component `"cpu"`,
    method `"modeled:tdp*util"`. With `dram_w_per_gb`, DRAM is modeled from this process's resident memory as a
    separate component `"dram"`, method `"modeled:rss*w-per-gb"`.

    Args:
        tdp_w: TDP per socket, in W. Defaults to `None`: the chips table's row for this CPU model, else its generic
            `cpu` row.
        sockets: CPU sockets. Defaults to `None`: distinct `physical id` values in `/proc/cpuinfo`.
        logical_cores: logical CPUs. Defaults to `None`: the `processor` entries in `/proc/cpuinfo`.
        threads_per_socket: hardware threads sharing one socket's TDP. Defaults to `None`: logical cores /
            sockets, or on a virtual machine with the table's TDP, `REFERENCE_CPU_THREADS_PER_SOCKET`.
        include_children: count the CPU time of child processes that have been waited for (what
            `carbon-callbacks run` meters). Defaults to `True`.
        dram_w_per_gb: model DRAM at this many W per GB of resident memory, e.g. `DRAM_W_PER_GB` (0.375 W/GB).
            Defaults to `None`: DRAM is not modeled (no component `"dram"`).
        cpuinfo_path: where to read the CPU model. Defaults to `"/proc/cpuinfo"`.
        clock: the clock windows are timed with, in s. Defaults to `time.perf_counter`.
        cpu_seconds: returns the process CPU seconds so far (inject one in tests). Defaults to `getrusage`.
        host_wide: meter every process of the host (its busy CPU seconds from `/proc/stat`), labelled
            `modeled:tdp*host-util`, instead of this process (and its children): what the one task per host that
            meters the host under a launcher uses (`carbon-callbacks run`). Defaults to `False`.

    Notes:
        Idle power is not modeled (an idle process draws 0 W here). On a virtual machine the host CPU is
        unknown; the per-thread share of the reference CPU is an estimate: pass `tdp_w` and `threads_per_socket`
        of your host when you know them. Child CPU time enters only when the child has been waited for.
    """

    reads_may_block = False  # clock and counter-file reads only

    METHOD = "modeled:tdp*util"
    DRAM_METHOD = "modeled:rss*w-per-gb"

    def __init__(
        self,
        *,
        tdp_w: float | None = None,
        sockets: int | None = None,
        logical_cores: int | None = None,
        threads_per_socket: int | None = None,
        include_children: bool = True,
        dram_w_per_gb: float | None = None,
        cpuinfo_path: str = "/proc/cpuinfo",
        clock: Callable[[], float] | None = None,
        cpu_seconds: Callable[[], float] | None = None,
        host_wide: bool = False,
    ) -> None:
        super().__init__(clock=clock)
        if host_wide:
            self.METHOD, cpu_seconds = "modeled:tdp*host-util", cpu_seconds or _host_cpu_seconds
        info = cpu_info(cpuinfo_path)
        self.cpu_model = info.model
        self.sockets = info.sockets if sockets is None else check_count("sockets", sockets)
        self.logical_cores = (
            info.logical_cores if logical_cores is None else check_count("logical_cores", logical_cores)
        )
        if tdp_w is None:
            self.tdp_w, tdp_source = _cpu_tdp(info)
        else:
            self.tdp_w, tdp_source = check_watts("tdp_w", tdp_w), "given"
        if threads_per_socket is not None:
            self.threads_per_socket = check_count("threads_per_socket", threads_per_socket)
        elif info.virtualized and tdp_w is None and logical_cores is None and sockets is None:
            self.threads_per_socket = REFERENCE_CPU_THREADS_PER_SOCKET
            tdp_source += f"; virtual machine: per thread of a {REFERENCE_CPU_THREADS_PER_SOCKET}-thread socket"
        else:
            self.threads_per_socket = max(self.logical_cores // self.sockets, 1)
        self._w_per_cpu_second = self.tdp_w / self.threads_per_socket
        self._include_children = bool(include_children)
        self._cpu_seconds = cpu_seconds or functools.partial(_process_cpu_seconds, self._include_children)
        self.dram_w_per_gb = (
            None if dram_w_per_gb is None else check_number("dram_w_per_gb", dram_w_per_gb, positive=True)
        )
        self._dram: list[float] | None = None  # [last time, last GB, cumulative J]
        self.notes = [
            f"cpu: {self.cpu_model}, {self.sockets} socket(s), {self.logical_cores} logical cores, "
            f"TDP {self.tdp_w:g} W per socket ({tdp_source}); energy = TDP / {self.threads_per_socket} threads "
            f"x {'host' if host_wide else 'process'} CPU seconds ({self.METHOD})"
        ]
        if self.dram_w_per_gb is not None:
            self.notes.append(f"dram: {self.dram_w_per_gb:g} W per GB of this process's resident memory "
                              f"({self.DRAM_METHOD})")

    def _read(self) -> dict[str, float]:
        out = {"cpu:process": self._cpu_seconds() * self._w_per_cpu_second}
        if self.dram_w_per_gb is not None:
            now, gb = self._now(), _resident_gb()
            if self._dram is None:
                self._dram = [now, gb, 0.0]
            else:
                last_t, last_gb, joules = self._dram
                joules += self.dram_w_per_gb * (last_gb + gb) / 2 * max(now - last_t, 0.0)
                self._dram = [now, gb, joules]
            out["dram:process"] = self._dram[2]
        return out

    def _component(self, device: str) -> str:
        return device.partition(":")[0]

    def _method(self, device: str) -> str:
        return self.DRAM_METHOD if device.startswith("dram") else self.METHOD
