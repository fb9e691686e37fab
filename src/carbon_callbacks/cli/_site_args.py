"""The site flags shared by `estimate` and `run`: where the electricity comes from, and the PUE."""

from __future__ import annotations

import argparse


def add_site_arguments(parser: argparse.ArgumentParser, title: str = "site") -> None:
    """Adds `--region`, `--intensity`, `--net-intensity`, `--pue` and `--provider` (see `resolve_site`)."""
    site = parser.add_argument_group(title)
    site.add_argument("--region", help="region name from `carbon-callbacks tables regions`")
    site.add_argument("--intensity", type=float, help="gross grid intensity, kg CO2e per kWh")
    site.add_argument("--net-intensity", type=float, help="net intensity, kg CO2e per kWh (default: the region's)")
    site.add_argument("--pue", type=float, help="PUE (default: --provider's, else the industry average)")
    site.add_argument("--provider", help="cloud provider whose published PUE applies")


def site_kwargs(args: argparse.Namespace) -> dict:
    """The parsed site flags as keyword arguments of `resolve_site` and `estimate`."""
    return {
        "region": args.region,
        "intensity": args.intensity,
        "net_intensity": args.net_intensity,
        "pue": args.pue,
        "provider": args.provider,
    }
