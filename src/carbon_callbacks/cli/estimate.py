"""`carbon-callbacks estimate`: a run's energy and CO2e from its size, before or after the fact."""

from __future__ import annotations

import json

from carbon_callbacks.cli._site_args import add_site_arguments, site_kwargs
from carbon_callbacks._paper.estimate import estimate
from carbon_callbacks._reports.format import fmt_number, text_table


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="estimate a run's energy and CO2e (hours x chips x W x PUE x intensity)",
        description="Energy = hours x chips x average system power per chip x PUE; CO2e = energy x intensity.",
    )
    parser.add_argument("--chips", type=float, required=True, help="number of processors")
    time = parser.add_argument_group("training time (one of)")
    time.add_argument("--days", type=float, help="training days")
    time.add_argument("--hours", type=float, help="training hours")
    time.add_argument("--flops", type=float, help="total FLOPs of the run (needs --tflops-achieved)")
    time.add_argument("--tflops-achieved", type=float, help="measured TFLOP/s per chip")
    power = parser.add_argument_group("power (one of)")
    power.add_argument("--watts", type=float, help="average system power per chip, W")
    power.add_argument("--chip", help="chip name: use the table's measured system power (else TDP)")
    add_site_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    parser.set_defaults(func=run)


def run(args) -> int:
    result = estimate(
        chips=args.chips,
        days=args.days,
        hours=args.hours,
        flops=args.flops,
        tflops_achieved=args.tflops_achieved,
        watts=args.watts,
        chip=args.chip,
        **site_kwargs(args),
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    s = result.sources
    rows = [
        ["hours", result.hours, s["hours"]],
        ["chips", result.chips, s["chips"]],
        ["W per chip", result.watts_per_chip, s["watts_per_chip"]],
        ["PUE", result.pue, s["pue"]],
        ["gross kg/kWh", result.gross_kg_per_kwh, s["gross_kg_per_kwh"]],
        ["net kg/kWh", result.net_kg_per_kwh, s["net_kg_per_kwh"]],
    ]
    print(text_table(["input", "value", "source"], rows))
    print(
        f"\nenergy: {fmt_number(result.energy_kwh)} kWh (facility; IT {fmt_number(result.it_energy_kwh)} kWh)"
        f"\ngross:  {fmt_number(result.gross_tco2e)} t CO2e"
        f"\nnet:    {fmt_number(result.net_tco2e)} t CO2e"
    )
    return 0
