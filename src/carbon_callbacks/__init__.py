"""carbon-callbacks: the energy and CO2e of neural-network training, next to the loss.

The core imports only the standard library; framework adapters live in `carbon_callbacks.lightning`,
`carbon_callbacks.keras` and `carbon_callbacks.flax` and import their framework when imported themselves.
pandas (`load_run`) and matplotlib (`plot_runs`) are imported only when those functions are called.
"""

import importlib.metadata as _metadata

from carbon_callbacks._errors import CarbonCallbacksError, InvalidInputError, UnknownNameError
from carbon_callbacks._paper.architectures import (
    ArchitectureFlops,
    PaperModel,
    architecture_flops,
    get_paper_model,
    paper_models,
)
from carbon_callbacks._paper.embodied import embodied_co2e
from carbon_callbacks._paper.estimate import Estimate, estimate
from carbon_callbacks._paper.table4 import reproduce_from_architectures, reproduce_table4
from carbon_callbacks._reports.frames import load_run
from carbon_callbacks._reports.plot import plot_runs
from carbon_callbacks._reports.projection import Projection, project, project_run
from carbon_callbacks._reports.report import RunReport, format_report, read_report
from carbon_callbacks._reports.whatif import Scenario, whatif
from carbon_callbacks._run.accountant import Accountant
from carbon_callbacks._run.files import read_run
from carbon_callbacks._run.session import METRIC_KEYS, RunSession
from carbon_callbacks._run.step_flops import StepFlops
from carbon_callbacks._site.site import Site, resolve_site
from carbon_callbacks._site.tables import Chip, PueEntry, Region, get_chip, get_pue, get_region
from carbon_callbacks.flops import (
    MOE_IMPLEMENTATIONS,
    FlopCount,
    TransformerConfig,
    TransformerFlops,
    transformer_flops,
)
from carbon_callbacks.flops import count as count_flops
from carbon_callbacks.meters import (
    COMPONENTS,
    ConstantPowerMeter,
    Measurement,
    Meter,
    MeterBase,
    ReplayMeter,
    create_meter,
)

try:  # pyproject.toml is the one source of the version; a source tree that was never installed has none.
    __version__ = _metadata.version("carbon-callbacks")
except _metadata.PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = [
    "Accountant",
    "ArchitectureFlops",
    "COMPONENTS",
    "CarbonCallbacksError",
    "Chip",
    "ConstantPowerMeter",
    "Estimate",
    "FlopCount",
    "InvalidInputError",
    "METRIC_KEYS",
    "MOE_IMPLEMENTATIONS",
    "Measurement",
    "Meter",
    "MeterBase",
    "PaperModel",
    "Projection",
    "PueEntry",
    "Region",
    "ReplayMeter",
    "RunReport",
    "RunSession",
    "Scenario",
    "Site",
    "StepFlops",
    "TransformerConfig",
    "TransformerFlops",
    "UnknownNameError",
    "architecture_flops",
    "count_flops",
    "create_meter",
    "embodied_co2e",
    "estimate",
    "format_report",
    "get_chip",
    "get_paper_model",
    "get_pue",
    "get_region",
    "load_run",
    "paper_models",
    "plot_runs",
    "project",
    "project_run",
    "read_report",
    "read_run",
    "reproduce_from_architectures",
    "reproduce_table4",
    "resolve_site",
    "transformer_flops",
    "whatif",
]


def __getattr__(name: str):
    """Old names still work for a while, with a warning that names the replacement (see `_deprecations`)."""
    from carbon_callbacks._deprecations import renamed

    return renamed(name, globals())
