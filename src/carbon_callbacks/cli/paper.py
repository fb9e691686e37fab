"""`carbon-callbacks paper`: Table 4 of Patterson et al. 2021, recomputed beside the published figures."""

from __future__ import annotations

import json

from carbon_callbacks._paper.table4 import PAPER, reproduce_table4
from carbon_callbacks._reports.format import text_table

_JSON_KEYS = (
    "model", "energy_mwh", "gross_tco2e", "net_tco2e", "paper_energy_mwh", "paper_gross_tco2e", "paper_net_tco2e"
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("paper", help="reproduce the paper's Table 4 (energy, gross and net tCO2e)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run)


def run(args) -> int:
    rows = reproduce_table4()
    if args.json:
        out = []
        for row in rows:
            item = {k: getattr(row, k) for k in _JSON_KEYS}
            item.update(
                hours=row.hours,
                energy_mwh_from_days=row.energy_mwh_from_days,
                chained_gross_tco2e=row.chained_gross_tco2e,
                chained_net_tco2e=row.chained_net_tco2e,
                rel_error={f: row.rel_error(f) for f in ("energy_mwh", "gross_tco2e", "net_tco2e")},
                computed_from=row.computed_from,
            )
            out.append(item)
        print(json.dumps(out, indent=2))
        return 0
    table = [
        [
            row.model,
            row.energy_mwh, row.paper_energy_mwh, f"{row.rel_error('energy_mwh'):+.2%}",
            row.gross_tco2e, row.paper_gross_tco2e, f"{row.rel_error('gross_tco2e'):+.2%}",
            row.net_tco2e, row.paper_net_tco2e, f"{row.rel_error('net_tco2e'):+.2%}",
        ]
        for row in rows
    ]
    header = ["model", "MWh", "paper", "err", "gross t", "paper", "err", "net t", "paper", "err"]
    print(f"Reproduction of {PAPER}\n")
    print(text_table(header, table))
    print(
        "\nMWh = hours x chips x measured system W x PUE / 1e6, hours = total FLOPs / (chips x measured FLOP/s)."
        "\ntCO2e = paper MWh x gross or net kg CO2e/kWh. Chained through our MWh instead:"
    )
    for row in rows:
        print(
            f"  {row.model}: {row.chained_gross_tco2e:.4g} t gross, {row.chained_net_tco2e:.4g} t net; "
            f"MWh from the rounded training days: {row.energy_mwh_from_days:.4g}"
        )
    return 0
