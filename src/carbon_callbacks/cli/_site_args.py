"""The site flags shared by `estimate` and `run`: where the electricity comes from, and the PUE."""

from __future__ import annotations

import argparse

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._site.trace import COLUMNS, read_trace


def add_site_arguments(parser: argparse.ArgumentParser, title: str = "site") -> None:
    """Adds `--region`, `--intensity` (or `--intensity-trace`), `--net-intensity`, `--pue` and `--provider` (see
    `resolve_site`)."""
    site = parser.add_argument_group(title)
    site.add_argument("--region", help="region name from `carbon-callbacks tables regions`")
    site.add_argument("--intensity", type=float, help="gross grid intensity, kg CO2e per kWh")
    add_trace_arguments(site)
    site.add_argument("--net-intensity", type=float, help="net intensity, kg CO2e per kWh (default: the region's)")
    site.add_argument("--pue", type=float, help="PUE (default: --provider's, else the industry average)")
    site.add_argument("--provider", help="cloud provider whose published PUE applies")


def add_trace_arguments(group) -> None:
    """`--intensity-trace FILE` and `--intensity-column` (docs/when.md)."""
    group.add_argument("--intensity-trace", metavar="FILE",
                       help="gross intensity through time: an Electricity Maps CSV export or timestamp,kg_per_kwh")
    group.add_argument("--intensity-column", choices=COLUMNS,
                       help="which intensity of an Electricity Maps export (default: direct)")


def trace_from_args(args: argparse.Namespace):
    """The `--intensity-trace` file read (`IntensityTrace`), or `None`."""
    if getattr(args, "intensity_trace", None) is None:
        if getattr(args, "intensity_column", None) is not None:
            raise InvalidInputError("--intensity-column applies to --intensity-trace, which is missing.")
        return None
    return read_trace(args.intensity_trace, args.intensity_column)


def site_kwargs(args: argparse.Namespace) -> dict:
    """The parsed site flags as keyword arguments of `resolve_site` and `estimate`."""
    trace = trace_from_args(args)
    if trace is not None and args.intensity is not None:
        raise InvalidInputError("--intensity and --intensity-trace both give the gross intensity; give one.")
    return {
        "region": args.region,
        "intensity": trace if trace is not None else args.intensity,
        "net_intensity": args.net_intensity,
        "pue": args.pue,
        "provider": args.provider,
    }
