"""NVIDIA GPUs through NVML (`nvidia-ml-py`, imported as `pynvml` only when this meter is built).

Volta and newer GPUs have a total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver
loaded), read at window edges. Older GPUs only report power (`nvmlDeviceGetPowerUsage`, mW), which a background
thread samples and integrates. Devices are the ones CUDA shows this process (`CUDA_VISIBLE_DEVICES` with indices,
UUIDs or MIG device strings).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from carbon_callbacks._errors import InvalidInputError, check_count, check_number
from carbon_callbacks.meters._base import CounterMeter, SensorUnavailableError

logger = logging.getLogger(__name__)

#: How often the NVML energy counter updates, in s: "for newer GPUs, energy readings are updated every 20-100ms"
#: (PETSc, https://petsc.org/main/manualpages/Log/PetscLogGpuEnergyMeter); Zeus reports windows shorter than the
#: update period reading 0 J (https://github.com/ml-energy/zeus/releases/tag/v0.6.1). We take the slow end.
COUNTER_UPDATE_S = 0.1

_INSTALL = "pip install 'carbon-callbacks[nvidia]'"


def import_pynvml() -> Any:
    """Imports the official NVML binding, or raises `SensorUnavailableError` saying how to install it.

    Raises:
        SensorUnavailableError: when `pynvml` is missing, or is the old community package without the functions
            this meter calls.
    """
    try:
        import pynvml
    except ImportError:
        raise SensorUnavailableError(f"The NVML binding is not installed: `{_INSTALL}`.") from None
    if not hasattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption"):
        raise SensorUnavailableError(
            f"The installed `pynvml` module is not NVIDIA's binding (nvidia-ml-py). Run `{_INSTALL}`."
        )
    return pynvml


@dataclass
class _Gpu:
    device: str  # "gpu:<CUDA ordinal>"
    handle: Any  # the handle whose power/energy is read (the parent GPU for a MIG device)
    name: str
    uuid: str
    share: float  # the fraction of the handle's energy attributed to this device (MIG slice share, else 1)
    counter: bool  # True: total-energy counter; False: sampled power
    limit_w: float | None


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_handles(pynvml: Any, cuda_visible_devices: str | None) -> list[tuple[Any, float, str]]:
    """The NVML handles CUDA shows this process, in CUDA ordinal order, with the share of each handle's energy.

    Args:
        pynvml: the NVML module (already initialised).
        cuda_visible_devices: the `CUDA_VISIBLE_DEVICES` value, or `None` when unset (every GPU, NVML order).

    Returns:
        `(handle, share, description)` per visible device; for a MIG device the handle is its parent GPU's and the
        share is its compute slices over the parent's maximum (NVML has no per-MIG energy counter).

    Notes:
        Like CUDA, parsing stops at the first entry that names no device. With `CUDA_VISIBLE_DEVICES` unset, CUDA
        orders devices fastest first unless `CUDA_DEVICE_ORDER=PCI_BUS_ID`; NVML uses PCI bus order, so set
        `CUDA_DEVICE_ORDER=PCI_BUS_ID` (or list devices explicitly) on machines mixing GPU models.
    """
    count = pynvml.nvmlDeviceGetCount()
    if cuda_visible_devices is None:
        return [(pynvml.nvmlDeviceGetHandleByIndex(i), 1.0, f"index {i}") for i in range(count)]
    uuids: list[str] | None = None
    out: list[tuple[Any, float, str]] = []
    for token in (t.strip() for t in cuda_visible_devices.split(",")):
        if not token:
            break
        if token.lstrip("-").isdigit():
            index = int(token)
            if not 0 <= index < count:
                break
            out.append((pynvml.nvmlDeviceGetHandleByIndex(index), 1.0, f"index {index}"))
        elif token.startswith("GPU-"):
            if uuids is None:
                uuids = [_decode(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(token)]
            if len(matches) != 1:  # CUDA accepts a unique UUID prefix only
                break
            out.append((pynvml.nvmlDeviceGetHandleByIndex(matches[0]), 1.0, token))
        elif token.startswith("MIG-GPU-"):  # CUDA 11.0-11.3 form: MIG-GPU-<parent uuid>/<gpu instance>/<compute>
            parent_uuid = token[len("MIG-"):].split("/")[0]
            handle = pynvml.nvmlDeviceGetHandleByUUID(parent_uuid)
            out.append((handle, 1.0, f"{token} (whole parent GPU: slice share unknown in this form)"))
        elif token.startswith("MIG-"):
            mig = pynvml.nvmlDeviceGetHandleByUUID(token)
            parent = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
            slices = pynvml.nvmlDeviceGetAttributes(mig).gpuInstanceSliceCount
            share = slices / max(pynvml.nvmlDeviceGetMaxMigDeviceCount(parent), 1)
            out.append((parent, share, f"{token} ({slices} slice(s), share {share:.3g} of the parent GPU)"))
        else:
            break
    return out


class NvmlMeter(CounterMeter):
    """GPU energy from NVML: the total-energy counter where the GPU has one, else integrated power samples.

    Args:
        devices: CUDA ordinals to meter (positions in `CUDA_VISIBLE_DEVICES`), `"auto"` for every visible GPU, or
            `"host"` for every GPU of the host in NVML's order, whatever `CUDA_VISIBLE_DEVICES` shows this process
            (the one process per host that meters the host). Under data parallelism give each process its own
            device so every GPU is metered once. Defaults to `"auto"`.
        sample_s: the power sampling period for GPUs without an energy counter, in s. Defaults to `0.1`.
        min_window_s: windows shorter than this take their energy from the counter's average power over the
            last `min_window_s` or more instead of its raw difference. Defaults to `1.0` (10 counter updates).
        clock: the clock windows are timed with, in s. Defaults to `time.perf_counter`.

    Raises:
        SensorUnavailableError: no binding, NVML fails to initialise, or no GPU is visible.
        InvalidInputError: a requested device that is not visible.

    Notes:
        The counter updates about every `COUNTER_UPDATE_S` (100 ms), so a window shorter than that can read 0 J.
        Windows under `min_window_s` are attributed from a longer span (energy = seconds x the average power of
        the readings at least `min_window_s` back), or `nvmlDeviceGetPowerUsage` (a 1 s average on recent GPUs)
        when no such reading exists yet; totals over a run should come from a run-long window. A MIG device
        gets its parent GPU's energy times its slice share (`measured:nvml*mig-share`). A call that fails
        mid-run switches that GPU to its average power so far (`modeled:last-avg-power`), else its power
        limit (`modeled:power-limit`), with one warning.
    """

    def __init__(
        self,
        devices: str | Sequence[int] = "auto",
        *,
        sample_s: float = 0.1,
        min_window_s: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(clock=clock)
        self._sample_s = check_number("sample_s", sample_s, positive=True)
        self._min_window_s = check_number("min_window_s", min_window_s, non_negative=True)
        pynvml = self._nvml = import_pynvml()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            raise SensorUnavailableError(f"NVML failed to initialise ({err}): no NVIDIA driver?") from None
        self._initialised = True
        try:
            whole_host = devices == "host"  # the host's every GPU, whatever this process is shown
            visible = visible_handles(pynvml, None if whole_host else os.environ.get("CUDA_VISIBLE_DEVICES"))
            if not visible:
                raise SensorUnavailableError("NVML found no visible NVIDIA GPU (check CUDA_VISIBLE_DEVICES).")
            if isinstance(devices, str):
                if devices not in ("auto", "host"):
                    raise InvalidInputError(f"devices must be 'auto', 'host' or a list of CUDA ordinals, got "
                                            f"{devices!r}.")
                ordinals = list(range(len(visible)))
            else:
                ordinals = [check_count("devices[i]", d, minimum=0) for d in devices]
                bad = [d for d in ordinals if d >= len(visible)]
                if bad:
                    raise InvalidInputError(
                        f"devices {bad} are not visible: this process sees {len(visible)} GPU(s) "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})."
                    )
            self._gpus = {}
            for ordinal in ordinals:
                self._gpus[f"gpu:{ordinal}"] = self._probe(f"gpu:{ordinal}", *visible[ordinal])
        except pynvml.NVMLError as err:
            self.close()
            raise SensorUnavailableError(f"NVML failed while listing GPUs ({err}).") from None
        except Exception:
            self.close()
            raise
        # Counter devices keep a sparse trail of (time, J) readings for short-window attribution.
        self._trail: dict[str, collections.deque] = {
            d: collections.deque(maxlen=32) for d, g in self._gpus.items() if g.counter
        }
        self._sampled: dict[str, list[float]] = {}  # device -> [last t, last W, cumulative J]
        self._sample_error: dict[str, Exception] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if any(not g.counter for g in self._gpus.values()):
            self._sample_all(self._clock())
            self._thread = threading.Thread(target=self._sample_loop, name="carbon-callbacks-nvml", daemon=True)
            self._thread.start()
        logger.info("NVML meter: %s", "; ".join(self.notes))

    def _probe(self, device: str, handle: Any, share: float, description: str) -> _Gpu:
        nvml = self._nvml
        name = _decode(nvml.nvmlDeviceGetName(handle))
        uuid = _decode(nvml.nvmlDeviceGetUUID(handle))
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            counter = True
        except nvml.NVMLError:  # pre-Volta: NVML_ERROR_NOT_SUPPORTED
            counter = False
        try:
            limit_w = nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
        except nvml.NVMLError:
            limit_w = None
        label = "measured:nvml" if share == 1.0 else "measured:nvml*mig-share"
        if not counter:
            label = "measured:nvml-power-sampled" if share == 1.0 else "measured:nvml-power-sampled*mig-share"
        if share != 1.0 or description.startswith("MIG-GPU-"):
            self._warn(
                f"mig:{device}",
                f"{device} is a MIG device ({description}); NVML has no per-MIG energy counter, so it is "
                "attributed its share of the parent GPU's energy.",
            )
        self._devices[device] = "gpu"
        self._labels[device] = label
        how = "total-energy counter" if counter else f"power sampled every {self._sample_s:g} s"
        self.notes.append(f"{device}: {name} {uuid} ({description}), {how}, {label}")
        return _Gpu(device, handle, name, uuid, share, counter, limit_w)

    # ------------------------------------------------------------------------------------------- reading
    def _read_device(self, device: str) -> float:
        gpu = self._gpus[device]
        if gpu.counter:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle) / 1000.0 * gpu.share
        with self._lock:
            if device in self._sample_error:
                raise self._sample_error[device]
            last_t, last_w, joules = self._sampled[device]
        return joules + last_w * max(self._now() - last_t, 0.0)

    def _read(self) -> dict[str, float]:
        readings = super()._read()
        now = self._now()
        for device, trail in self._trail.items():
            if device not in self._failed_w and (not trail or now - trail[-1][0] >= self._min_window_s / 8):
                trail.append((now, readings[device]))
        return readings

    def _static_fallback_w(self, device: str) -> tuple[float, str] | None:
        gpu = self._gpus[device]
        return None if gpu.limit_w is None else (gpu.limit_w * gpu.share, "modeled:power-limit")

    def _window_energy(self, device: str, start_j: float, end_j: float, seconds: float, end_time: float) -> float:
        delta = max(end_j - start_j, 0.0)
        trail = self._trail.get(device)
        if seconds >= self._min_window_s or trail is None or device in self._failed_w:
            return delta
        for then, joules in reversed(trail):  # noqa: B007 - the reading found is used after the loop
            if end_time - then >= self._min_window_s:
                break
        else:
            then, joules = trail[0] if trail else (end_time, end_j)
        if end_time - then >= 2 * COUNTER_UPDATE_S and end_j >= joules:
            watts, how = (end_j - joules) / (end_time - then), f"the counter's average over {end_time - then:.2g} s"
        else:
            gpu = self._gpus[device]
            try:
                watts = self._nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0 * gpu.share
                how = "nvmlDeviceGetPowerUsage"
            except Exception:  # noqa: BLE001 - keep the raw difference rather than fail a window
                return delta
        self._note(
            "short-window",
            f"Windows shorter than {self._min_window_s:g} s get their GPU energy from {how} (the NVML counter "
            f"updates about every {COUNTER_UPDATE_S:g} s); take run totals from a run-long window.",
        )
        return watts * seconds

    def _note(self, key: str, message: str) -> None:
        """Records an informational message once in the next Measurement and the log (no UserWarning)."""
        if key not in self._warned_keys:
            self._warned_keys.add(key)
            self._warning_log.append(message)
            logger.info("%s", message)

    # ------------------------------------------------------------------------------------------- sampler
    def _sample_all(self, now: float) -> None:
        for device, gpu in self._gpus.items():
            if gpu.counter or device in self._sample_error:
                continue
            try:
                watts = self._nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0 * gpu.share
            except Exception as err:  # noqa: BLE001 - reported through _read_device -> fallback
                with self._lock:
                    self._sample_error[device] = err
                continue
            with self._lock:
                state = self._sampled.get(device)
                if state is None:
                    self._sampled[device] = [now, watts, 0.0]
                else:
                    last_t, last_w, joules = state
                    self._sampled[device] = [now, watts, joules + (last_w + watts) / 2 * max(now - last_t, 0.0)]

    def _sample_loop(self) -> None:
        while not self._stop.wait(self._sample_s):
            self._sample_all(self._clock())

    def close(self) -> None:
        """Stops the sampler and shuts NVML down. Safe to call twice."""
        super().close()
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout=1.0)
            self._thread = None
        if getattr(self, "_initialised", False):
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down a broken driver is best effort
                pass
