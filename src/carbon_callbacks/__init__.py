"""carbon-callbacks: the energy and CO2e of neural-network training, next to the loss.

The core imports only the standard library; framework adapters live in `carbon_callbacks.lightning`,
`carbon_callbacks.keras`, `carbon_callbacks.flax` and `carbon_callbacks.transformers` and import their framework
when imported themselves. pandas (`load_run`) and matplotlib (`plot_runs`) are imported only when those functions
are called.
"""

from carbon_callbacks._errors import CarbonCallbacksError
from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._errors import UnknownNameError
from carbon_callbacks._paper.architectures import ArchitectureFlops
from carbon_callbacks._paper.architectures import PaperModel
from carbon_callbacks._paper.architectures import architecture_flops
from carbon_callbacks._paper.architectures import get_paper_model
from carbon_callbacks._paper.architectures import paper_models
from carbon_callbacks._paper.embodied import embodied_co2e
from carbon_callbacks._paper.estimate import Estimate
from carbon_callbacks._paper.estimate import estimate
from carbon_callbacks._paper.table4 import reproduce_from_architectures
from carbon_callbacks._paper.table4 import reproduce_table4
from carbon_callbacks._reports.frames import load_run
from carbon_callbacks._reports.plot import plot_runs
from carbon_callbacks._reports.projection import Projection
from carbon_callbacks._reports.projection import project
from carbon_callbacks._reports.projection import project_run
from carbon_callbacks._reports.report import RunReport
from carbon_callbacks._reports.report import format_report
from carbon_callbacks._reports.report import read_report
from carbon_callbacks._reports.whatif import Scenario
from carbon_callbacks._reports.whatif import whatif
from carbon_callbacks._run.accountant import Accountant
from carbon_callbacks._run.files import read_run
from carbon_callbacks._run.session import METRIC_KEYS
from carbon_callbacks._run.session import RunSession
from carbon_callbacks._run.step_flops import StepFlops
from carbon_callbacks._site.site import Site
from carbon_callbacks._site.site import resolve_site
from carbon_callbacks._site.tables import Chip
from carbon_callbacks._site.tables import PueEntry
from carbon_callbacks._site.tables import Region
from carbon_callbacks._site.tables import get_chip
from carbon_callbacks._site.tables import get_pue
from carbon_callbacks._site.tables import get_region
from carbon_callbacks._version import __version__  # noqa: F401 - the package version
from carbon_callbacks.flops import MOE_IMPLEMENTATIONS
from carbon_callbacks.flops import FlopCount
from carbon_callbacks.flops import TransformerConfig
from carbon_callbacks.flops import TransformerFlops
from carbon_callbacks.flops import transformer_flops
from carbon_callbacks.flops import count as count_flops
from carbon_callbacks.meters import COMPONENTS
from carbon_callbacks.meters import ConstantPowerMeter
from carbon_callbacks.meters import Measurement
from carbon_callbacks.meters import Meter
from carbon_callbacks.meters import MeterBase
from carbon_callbacks.meters import ReplayMeter
from carbon_callbacks.meters import create_meter


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
