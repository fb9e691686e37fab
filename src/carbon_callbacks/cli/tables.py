"""`carbon-callbacks tables chips|regions|pue`: the bundled data, with a source for every row."""

from __future__ import annotations

import json
from dataclasses import asdict

from carbon_callbacks._reports.format import text_table
from carbon_callbacks._site.tables import chips, pue_entries, regions


def register(subparsers) -> None:
    parser = subparsers.add_parser("tables", help="list the bundled chip, region and PUE tables")
    parser.add_argument("table", choices=("chips", "regions", "pue"))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args) -> int:
    entries = {"chips": chips, "regions": regions, "pue": pue_entries}[args.table]().values()
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return 0
    if args.table == "chips":
        header = ["name", "kind", "bf16 TFLOP/s", "fp32 TFLOP/s", "TDP W", "system W", "source"]
        rows = [[c.name, c.kind, c.peak_tflops.get("bf16"), c.peak_tflops.get("fp32"), c.tdp_w, c.system_power_w,
                 c.source.split(" ; ")[0]] for c in entries]
    elif args.table == "regions":
        header = ["name", "kind", "gross kg/kWh", "net kg/kWh", "CFE %", "year", "source"]
        rows = [[r.name, r.kind, r.gross_kg_per_kwh, r.net_kg_per_kwh, r.cfe_percent, r.year,
                 r.source.split(" ; ")[0]] for r in entries]
    else:
        header = ["name", "kind", "PUE", "year", "source"]
        rows = [[p.name, p.kind, p.pue, p.year, p.source.split(" ; ")[0]] for p in entries]
    print(text_table(header, rows))
    return 0
