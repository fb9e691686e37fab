"""Energy meters: one interface (`begin_window` / `end_window` -> `Measurement`) over NVML, RAPL and models.

`create_meter()` picks what the machine offers; `ReplayMeter` replays given energy for tests without hardware.
Nothing here imports `pynvml` until an NVML meter is built.
"""

from carbon_callbacks.meters._base import COMPONENTS
from carbon_callbacks.meters._base import CounterMeter
from carbon_callbacks.meters._base import Measurement
from carbon_callbacks.meters._base import Meter
from carbon_callbacks.meters._base import MeterBase
from carbon_callbacks.meters._base import SensorUnavailableError
from carbon_callbacks.meters._composite import CompositeMeter
from carbon_callbacks.meters._factory import create_meter
from carbon_callbacks.meters.modeled import DRAM_W_PER_GB
from carbon_callbacks.meters.modeled import HOST_SHARE_W_PER_ACCELERATOR
from carbon_callbacks.meters.modeled import ConstantPowerMeter
from carbon_callbacks.meters.modeled import CpuInfo
from carbon_callbacks.meters.modeled import HostShareMeter
from carbon_callbacks.meters.modeled import ModeledAcceleratorMeter
from carbon_callbacks.meters.modeled import ModeledCpuMeter
from carbon_callbacks.meters.modeled import cpu_info
from carbon_callbacks.meters.nvml import NvmlMeter
from carbon_callbacks.meters.rapl import RaplMeter
from carbon_callbacks.meters.replay import ReplayMeter

__all__ = [
    "COMPONENTS",
    "DRAM_W_PER_GB",
    "HOST_SHARE_W_PER_ACCELERATOR",
    "CompositeMeter",
    "ConstantPowerMeter",
    "CounterMeter",
    "CpuInfo",
    "HostShareMeter",
    "Measurement",
    "Meter",
    "MeterBase",
    "ModeledAcceleratorMeter",
    "ModeledCpuMeter",
    "NvmlMeter",
    "RaplMeter",
    "ReplayMeter",
    "SensorUnavailableError",
    "cpu_info",
    "create_meter",
]
