"""Embodied (manufacturing) carbon of the chips a run used, amortized over their service life.

embodied kg CO2e = (chip footprint + its host share) x chips x training hours / (service life in hours).

It is always reported beside the operational CO2e (energy x intensity), never added into it: the two come from
different inventories (the hardware maker's, the grid's) and a reader must be able to compare like with like.
The footprints come from the chips table (`embodied_kgco2e`, `host_embodied_kgco2e`, each with its source); a chip
without a published footprint gets `None` and a source that says so, never a guess.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from carbon_callbacks._errors import check_number
from carbon_callbacks._site.tables import Chip

#: Default service life of an accelerator and its host, in years: the 6-year replacement rate of the BLOOM
#: footprint (Luccioni et al. 2022, Section 4.1) and the six-year functional unit of Google's TPU life-cycle
#: assessment (Schneider et al. 2025).
DEFAULT_LIFETIME_YEARS = 6.0
LIFETIME_SOURCE = (
    "default 6 years: BLOOM footprint's replacement rate (Luccioni et al. 2022, https://arxiv.org/abs/2211.02001) "
    "and the six-year functional unit of Google's TPU LCA (Schneider et al. 2025, https://arxiv.org/abs/2502.01671)"
)
#: Hours in one year of the service life (365 days).
HOURS_PER_YEAR = 365 * 24


@dataclass(frozen=True)
class Embodied:
    """The manufacturing share of one run.

    Attributes:
        co2e_kg: embodied kg CO2e of the run, or `None` when the chip has no published footprint.
        kgco2e_per_chip: chip footprint plus its host share, in kg CO2e, or `None`.
        chip_kg: the part of `co2e_kg` from the chips themselves, or `None`.
        host_kg: the part of `co2e_kg` from their hosts' shares, or `None` where unpublished.
        lifetime_years: the service life the footprint is spread over.
        source: how the figure was obtained (formula, table row and URLs), or why there is none.
    """

    co2e_kg: float | None
    kgco2e_per_chip: float | None
    chip_kg: float | None
    host_kg: float | None
    lifetime_years: float
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_lifetime(lifetime_years: float | None) -> tuple[float, str]:
    """(`lifetime_years` checked, its source); `None` gives the default and says where it comes from."""
    if lifetime_years is None:
        return DEFAULT_LIFETIME_YEARS, LIFETIME_SOURCE
    return check_number("lifetime_years", lifetime_years, positive=True), "given"


def embodied_co2e(chip: Chip | None, num_chips: float, hours: float, lifetime_years: float | None = None) -> Embodied:
    """The embodied kg CO2e of `num_chips` chips used for `hours`, spread over `lifetime_years`.

    Args:
        chip: the chips table row (`get_chip`), or `None` when the run names no chip.
        num_chips: chips used.
        hours: training hours (wall clock).
        lifetime_years: service life. Defaults to `None`: `DEFAULT_LIFETIME_YEARS` (sourced in `LIFETIME_SOURCE`).

    Raises:
        InvalidInputError: for a negative or zero lifetime, negative chips or hours.
    """
    life, life_source = check_lifetime(lifetime_years)
    chips = check_number("num_chips", num_chips, non_negative=True)
    hours = check_number("hours", hours, non_negative=True)
    if chip is None:
        return Embodied(None, None, None, None, life, "unknown: no chip given, so no manufacturing footprint")
    if chip.embodied_kgco2e is None:
        return Embodied(
            None, None, None, None, life,
            f"unknown: no published manufacturing footprint for chip {chip.name!r} in the chips table",
        )
    share = hours / (life * HOURS_PER_YEAR)
    chip_kg = chip.embodied_kgco2e * chips * share
    host_kg = chip.host_embodied_kgco2e * chips * share if chip.host_embodied_kgco2e is not None else None
    per_chip = chip.embodied_kgco2e_per_chip
    host = chip.host_embodied_kgco2e
    host_text = f" + host share {host:g}" if host is not None else ", no host share published"
    source = (
        f"footprint x chips x hours / lifetime = ({chip.embodied_kgco2e:g}{host_text}) kg x {chips:g} chips x "
        f"{hours:.4g} h / ({life:g} y x {HOURS_PER_YEAR} h); lifetime {life_source}; table:chips/{chip.name}: "
        f"{chip.embodied_note} {chip.embodied_source}"
    )
    return Embodied(chip_kg + (host_kg or 0.0), per_chip, chip_kg, host_kg, life, source)
