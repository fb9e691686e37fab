"""carbon-callbacks: the energy and CO2e of neural-network training, next to the loss.

The core imports only the standard library; framework adapters live in `carbon_callbacks.lightning`,
`carbon_callbacks.keras` and `carbon_callbacks.flax` and import their framework when imported themselves.
"""

from carbon_callbacks._accounting import COMPONENTS
from carbon_callbacks._accounting import Accountant
from carbon_callbacks._report import format_report
from carbon_callbacks._tracker import Tracker
from carbon_callbacks._errors import CarbonCallbacksError
from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._errors import UnknownNameError
from carbon_callbacks._estimate import Estimate
from carbon_callbacks._estimate import estimate
from carbon_callbacks._paper import reproduce_table4
from carbon_callbacks._run_dir import read_run
from carbon_callbacks._site import Site
from carbon_callbacks._site import resolve_site
from carbon_callbacks._tables import Chip
from carbon_callbacks._tables import PueEntry
from carbon_callbacks._tables import Region
from carbon_callbacks._tables import get_chip
from carbon_callbacks._tables import get_pue
from carbon_callbacks._tables import get_region

__version__ = "0.1.0"

__all__ = [
    "Accountant",
    "COMPONENTS",
    "CarbonCallbacksError",
    "Chip",
    "Estimate",
    "InvalidInputError",
    "PueEntry",
    "Region",
    "Site",
    "Tracker",
    "UnknownNameError",
    "estimate",
    "format_report",
    "get_chip",
    "get_pue",
    "get_region",
    "read_run",
    "reproduce_table4",
    "resolve_site",
]
