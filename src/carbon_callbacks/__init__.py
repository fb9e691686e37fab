"""carbon-callbacks: the energy and CO2e of neural-network training, next to the loss.

The core imports only the standard library; framework adapters live in `carbon_callbacks.lightning`,
`carbon_callbacks.keras`, `carbon_callbacks.flax` and `carbon_callbacks.transformers` and import their framework
when imported themselves. pandas (`load_run`) and matplotlib (`plot_runs`) are imported only when those functions
are called.
"""

from carbon_callbacks._errors import CarbonCallbacksError as CarbonCallbacksError
from carbon_callbacks._errors import InvalidInputError as InvalidInputError
from carbon_callbacks._errors import UnknownNameError as UnknownNameError
from carbon_callbacks._version import __version__  # noqa: F401 - the package version

#: Every other public name -> the submodule that defines it (and its name there, where it differs). Each is imported
#: on first use, so `import carbon_callbacks` costs the errors and the version alone.
_PUBLIC = {
    "Accountant": "_run.accountant",
    "ArchitectureFlops": "_paper.architectures",
    "COMPONENTS": "meters",
    "Chip": "_site.tables",
    "ConstantPowerMeter": "meters",
    "Estimate": "_paper.estimate",
    "FlopCount": "flops",
    "IntensityTrace": "_site.trace",
    "METRIC_KEYS": "_run.session",
    "MOE_IMPLEMENTATIONS": "flops",
    "Measurement": "meters",
    "Meter": "meters",
    "MeterBase": "meters",
    "PaperModel": "_paper.architectures",
    "Projection": "_reports.projection",
    "PueEntry": "_site.tables",
    "Region": "_site.tables",
    "ReplayMeter": "meters",
    "RunReport": "_reports.report",
    "RunSession": "_run.session",
    "Scenario": "_reports.whatif",
    "Site": "_site.site",
    "StepFlops": "_run.step_flops",
    "TransformerConfig": "flops",
    "TransformerFlops": "flops",
    "architecture_flops": "_paper.architectures",
    "count_flops": ("flops", "count"),
    "create_meter": "meters",
    "embodied_co2e": "_paper.embodied",
    "estimate": "_paper.estimate",
    "format_report": "_reports.report",
    "get_chip": "_site.tables",
    "get_paper_model": "_paper.architectures",
    "get_pue": "_site.tables",
    "get_region": "_site.tables",
    "load_run": "_reports.frames",
    "paper_models": "_paper.architectures",
    "plot_runs": "_reports.plot",
    "project": "_reports.projection",
    "project_run": "_reports.projection",
    "read_report": "_reports.report",
    "read_run": "_record.reader",
    "read_trace": "_site.trace",
    "reproduce_from_architectures": "_paper.table4",
    "reproduce_table4": "_paper.table4",
    "resolve_site": "_site.site",
    "transformer_flops": "flops",
    "whatif": "_reports.whatif",
}

__all__ = sorted(["CarbonCallbacksError", "InvalidInputError", "UnknownNameError", *_PUBLIC])


def __getattr__(name: str):
    """Imports a public name from its submodule on first use; old names still work for a while, with a warning
    that names the replacement (see `_deprecations`)."""
    if name in _PUBLIC:
        import importlib

        module, attribute = (_PUBLIC[name], name) if isinstance(_PUBLIC[name], str) else _PUBLIC[name]
        value = getattr(importlib.import_module(f"carbon_callbacks.{module}"), attribute)
        globals()[name] = value
        return value
    from carbon_callbacks._deprecations import renamed

    return renamed(name, __getattr__)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
