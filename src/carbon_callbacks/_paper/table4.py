"""Reproduction of Table 4 of Patterson et al. 2021 from the paper's own inputs.

Two formulas, checked separately against the printed figures:
- energy: training hours x chips x measured system power x PUE. The hours come from total FLOPs / (chips x
  measured FLOP/s per chip), which carries more digits than the printed (rounded) training days; the days-based
  figure is reported beside it.
- tCO2e: the printed energy x the gross and net intensities. Chaining our own energy into it is also reported
  (`chained_*`): for GShard-600B the printed 4.8 / 4.3 t carry two significant figures, a rounding of about 1%.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from importlib import resources

from carbon_callbacks._paper.estimate import energy_kwh, estimate

PAPER = "Patterson et al. 2021, Carbon Emissions and Large Neural Network Training, Table 4 (arXiv:2104.10350)"


@dataclass(frozen=True)
class PaperRow:
    """One model of Table 4: our figures, the paper's, and what ours were computed from."""

    model: str
    energy_mwh: float
    gross_tco2e: float
    net_tco2e: float
    paper_energy_mwh: float
    paper_gross_tco2e: float
    paper_net_tco2e: float
    hours: float
    energy_mwh_from_days: float
    chained_gross_tco2e: float
    chained_net_tco2e: float
    computed_from: dict[str, str]

    def rel_error(self, field: str) -> float:
        """Relative error of our `field` against the paper's, e.g. `rel_error("energy_mwh")`."""
        return getattr(self, field) / getattr(self, f"paper_{field}") - 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def table4_inputs() -> list[dict[str, str]]:
    """The bundled copy of Table 4, one dict of strings per model."""
    text = resources.files("carbon_callbacks").joinpath("data", "patterson2021_table4.csv").read_text("utf-8")
    return list(csv.DictReader(text.splitlines()))


def reproduce_table4() -> list[PaperRow]:
    """Recomputes energy and gross/net tCO2e for the five models of Table 4."""
    rows = []
    for row in table4_inputs():
        chips, watts, pue = int(row["chips"]), float(row["measured_system_avg_power_w"]), float(row["pue"])
        gross, net = float(row["gross_kgco2e_per_kwh"]), float(row["net_kgco2e_per_kwh"])
        run = estimate(
            chips=chips,
            flops=float(row["total_flops"]),
            tflops_achieved=float(row["measured_tflops_per_chip"]),
            watts=watts,
            pue=pue,
            intensity=gross,
            net_intensity=net,
        )
        paper_mwh = float(row["energy_mwh"])
        rows.append(
            PaperRow(
                model=row["model"],
                energy_mwh=run.energy_kwh / 1000.0,
                gross_tco2e=paper_mwh * gross,
                net_tco2e=paper_mwh * net,
                paper_energy_mwh=paper_mwh,
                paper_gross_tco2e=float(row["gross_tco2e"]),
                paper_net_tco2e=float(row["net_tco2e"]),
                hours=run.hours,
                energy_mwh_from_days=energy_kwh(float(row["training_days"]) * 24, chips, watts, pue) / 1000.0,
                chained_gross_tco2e=run.gross_tco2e,
                chained_net_tco2e=run.net_tco2e,
                computed_from={
                    "energy_mwh": (
                        f"hours ({run.hours:.1f} = {row['total_flops']} FLOPs / ({chips} chips x "
                        f"{row['measured_tflops_per_chip']} TFLOP/s)) x {chips} chips x {watts:g} W x PUE {pue:g}"
                    ),
                    "gross_tco2e": f"paper energy {paper_mwh:g} MWh x {gross:g} kg/kWh",
                    "net_tco2e": f"paper energy {paper_mwh:g} MWh x {net:g} kg/kWh",
                    "source": PAPER,
                },
            )
        )
    return rows
