"""The paper's formulas for a whole run, before or after the fact (Patterson et al. 2021, Section 2.5).

energy (kWh) = hours x chips x average system power per chip (W) x PUE / 1000;
tCO2e = energy (MWh) x kg CO2e per kWh, gross (the grid's) and net (after carbon-free-energy purchases).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from carbon_callbacks._errors import InvalidInputError, check_number
from carbon_callbacks._site.site import Site, resolve_site
from carbon_callbacks._site.tables import get_chip


@dataclass(frozen=True)
class Estimate:
    """A run's footprint from its size, with the source of every input.

    Attributes:
        hours: training time, in h.
        chips: processors used.
        watts_per_chip: average system power per processor, in W.
        pue: power usage effectiveness.
        it_energy_kwh: energy drawn by the processors (and their host share), in kWh.
        energy_kwh: facility energy (IT x PUE), in kWh.
        gross_kg_per_kwh / net_kg_per_kwh: carbon intensities used, in kg CO2e per kWh.
        gross_tco2e / net_tco2e: emissions, in metric tons CO2e.
        total_flops: the run's FLOPs when known, else `None`.
        sources: how each input was obtained (`"given"`, a table row and its URL, or a derivation).
    """

    hours: float
    chips: int
    watts_per_chip: float
    pue: float
    it_energy_kwh: float
    energy_kwh: float
    gross_kg_per_kwh: float
    net_kg_per_kwh: float
    gross_tco2e: float
    net_tco2e: float
    total_flops: float | None
    region: str | None
    sources: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)


def energy_kwh(hours: float, chips: float, watts_per_chip: float, pue: float) -> float:
    """Facility energy in kWh: hours x chips x average system power per chip x PUE / 1000."""
    return hours * chips * watts_per_chip * pue / 1000.0


def estimate(
    *,
    chips: int,
    days: float | None = None,
    hours: float | None = None,
    flops: float | None = None,
    tflops_achieved: float | None = None,
    watts: float | None = None,
    chip: str | None = None,
    pue: float | None = None,
    provider: str | None = None,
    region: str | None = None,
    intensity: float | None = None,
    net_intensity: float | None = None,
) -> Estimate:
    """Estimates a run's energy and CO2e with the paper's formulas.

    Args:
        chips: number of processors.
        days: training time in days; or give `hours`, or `flops` with `tflops_achieved`.
        hours: training time in hours.
        flops: total FLOPs of the run; time = flops / (chips x tflops_achieved x 1e12).
        tflops_achieved: measured TFLOP/s per chip.
        watts: average system power per chip, in W. Or give `chip` to use the table's measured system power
            (else its TDP, labelled as such).
        chip: a name from the chips table. Defaults to `None`.
        pue: power usage effectiveness. Defaults to `None`: the provider's, else the industry average (labelled).
        provider: cloud provider for the PUE default. Defaults to `None`.
        region: a name from the regions table; or give `intensity`. Defaults to `None`.
        intensity: gross kg CO2e per kWh. Defaults to `None`.
        net_intensity: net kg CO2e per kWh. Defaults to `None`: the region's net figure, else the gross one.

    Raises:
        InvalidInputError: for missing, conflicting or unusable inputs; the message names the field.
        UnknownNameError: for a chip, region or provider not in the tables.
    """
    chips_n = check_number("chips", chips, positive=True)
    if chips_n != int(chips_n):
        raise InvalidInputError(f"chips must be a whole number, got {chips!r}.")
    sources: dict[str, str] = {"chips": "given"}
    time_inputs = [n for n, v in (("days", days), ("hours", hours), ("flops", flops)) if v is not None]
    if len(time_inputs) != 1:
        raise InvalidInputError(
            "Give the training time exactly one way: days, hours, or flops with tflops_achieved; "
            f"got {', '.join(time_inputs) or 'none'}."
        )
    total_flops = None
    if days is not None:
        run_hours = check_number("days", days, positive=True) * 24.0
        sources["hours"] = "given: days x 24"
    elif hours is not None:
        run_hours = check_number("hours", hours, positive=True)
        sources["hours"] = "given"
    else:
        total_flops = check_number("flops", flops, positive=True)
        if tflops_achieved is None:
            raise InvalidInputError("tflops_achieved is required with flops (time = flops / (chips x TFLOP/s)).")
        achieved = check_number("tflops_achieved", tflops_achieved, positive=True)
        run_hours = total_flops / (chips_n * achieved * 1e12) / 3600.0
        sources["hours"] = "flops / (chips x tflops_achieved x 1e12) / 3600"

    if watts is not None:
        watts_per_chip = check_number("watts", watts, positive=True)
        sources["watts_per_chip"] = "given"
    elif chip is not None:
        entry = get_chip(chip)
        if entry.system_power_w is not None:
            watts_per_chip = entry.system_power_w
            sources["watts_per_chip"] = f"table:chips/{entry.name} measured system power {entry.source}"
        elif entry.tdp_w is not None:
            watts_per_chip = entry.tdp_w
            sources["watts_per_chip"] = f"modeled:tdp table:chips/{entry.name} TDP (no published system power) {entry.source}"
        else:
            raise InvalidInputError(f"chip {entry.name!r} has neither system power nor TDP in the table; pass watts.")
    else:
        raise InvalidInputError("watts (average system power per chip) or chip is required.")

    site: Site = resolve_site(
        region=region, intensity=intensity, net_intensity=net_intensity, pue=pue, provider=provider
    )
    sources.update(pue=site.pue_source, gross_kg_per_kwh=site.gross_source, net_kg_per_kwh=site.net_source)
    facility = energy_kwh(run_hours, chips_n, watts_per_chip, site.pue)
    return Estimate(
        hours=run_hours,
        chips=int(chips_n),
        watts_per_chip=watts_per_chip,
        pue=site.pue,
        it_energy_kwh=facility / site.pue,
        energy_kwh=facility,
        gross_kg_per_kwh=site.gross_kg_per_kwh,
        net_kg_per_kwh=site.net_kg_per_kwh,
        gross_tco2e=facility / 1000.0 * site.gross_kg_per_kwh,
        net_tco2e=facility / 1000.0 * site.net_kg_per_kwh,
        total_flops=total_flops,
        region=site.region,
        sources=sources,
    )
