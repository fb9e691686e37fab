"""Where the electricity comes from and how efficient the building is: PUE and gross/net carbon intensity.

The paper's two site levers. A `Site` holds the three numbers and where each came from; `resolve_site` builds one
from what the user gave, and refuses to guess a location.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from carbon_callbacks._errors import InvalidInputError, check_intensity, check_pue
from carbon_callbacks._site.tables import get_pue, get_region, table_source

#: Cloud-region prefixes and paper datacenters, mapped to the provider whose fleet PUE applies.
_PROVIDER_OF_PREFIX = {
    "gcp": "google", "google": "google", "aws": "aws", "azure": "microsoft", "microsoft": "microsoft",
}


@dataclass(frozen=True)
class Site:
    """PUE and carbon intensities of the place a run uses, each with its source.

    Attributes:
        pue: power usage effectiveness, facility energy / IT energy (>= 1).
        gross_kg_per_kwh: the grid's carbon intensity, kg CO2e per kWh.
        net_kg_per_kwh: intensity after the datacenter's carbon-free-energy purchases, kg CO2e per kWh.
        region: the region name, or `None` when only intensities were given.
        pue_source: `"given"`, or the table entry and its URL, or the labelled assumption.
        gross_source: where the gross intensity came from.
        net_source: where the net intensity came from.
    """

    pue: float
    gross_kg_per_kwh: float
    net_kg_per_kwh: float
    region: str | None
    pue_source: str
    gross_source: str
    net_source: str

    def facility_kwh(self, it_kwh: float) -> float:
        """Facility energy = IT energy x PUE."""
        return it_kwh * self.pue

    def to_dict(self) -> dict:
        return asdict(self)


def _default_pue(provider: str | None, region_provider: str | None) -> tuple[float, str]:
    name = provider or _PROVIDER_OF_PREFIX.get((region_provider or "").lower())
    if name:
        entry = get_pue(name)
        return entry.pue, table_source("pue", entry)
    entry = get_pue("industry-average")
    return entry.pue, f"assumed: industry average PUE ({entry.year}) {entry.source}"


def resolve_site(
    *,
    region: str | None = None,
    intensity: float | None = None,
    net_intensity: float | None = None,
    pue: float | None = None,
    provider: str | None = None,
) -> Site:
    """Builds a `Site` from a region name or explicit intensities, and a PUE.

    Args:
        region: a name from the regions table (country code, `provider:region`, or a paper datacenter).
            Defaults to `None`.
        intensity: gross grid intensity in kg CO2e/kWh; overrides the region's figure (the region is then only a
            label). Defaults to `None`.
        net_intensity: net intensity in kg CO2e/kWh. Defaults to `None`: the region's published net figure, else
            the gross one (no carbon-free-energy purchase known), labelled as such.
        pue: power usage effectiveness (>= 1). Defaults to `None`: the provider's published fleet PUE (from
            `provider` or the cloud region), else the industry average, labelled as an assumption.
        provider: the cloud provider whose PUE applies (`"google"`, `"aws"`, `"microsoft"`, ...). Defaults to `None`.

    Raises:
        InvalidInputError: when neither `region` nor `intensity` is given, or a number is unusable.
        UnknownNameError: for a region or provider not in the tables.
    """
    if region is None and intensity is None:
        raise InvalidInputError(
            "region and intensity are both missing: carbon-callbacks never guesses a location. "
            "Pass region='fr' (see `carbon-callbacks tables regions`) or intensity=<kg CO2e per kWh>."
        )
    table_region = get_region(region) if region is not None else None
    if intensity is not None:
        gross = check_intensity("intensity", intensity)
        gross_source = "given"
    else:
        gross = table_region.gross_kg_per_kwh
        gross_source = table_source("regions", table_region)
    if net_intensity is not None:
        net = check_intensity("net_intensity", net_intensity)
        net_source = "given"
    elif intensity is None and table_region is not None and table_region.net_kg_per_kwh is not None:
        net = table_region.net_kg_per_kwh
        net_source = table_source("regions", table_region)
    else:
        net = gross
        net_source = "= gross (no carbon-free-energy purchase known for this site)"
    if pue is not None:
        pue_value = check_pue(pue)
        pue_source = "given"
    else:
        region_provider = table_region.name.split(":")[0] if table_region and ":" in table_region.name else None
        if table_region is not None and table_region.kind == "paper":
            region_provider = table_region.provider
        pue_value, pue_source = _default_pue(provider, region_provider)
    return Site(
        pue=pue_value,
        gross_kg_per_kwh=gross,
        net_kg_per_kwh=net,
        region=table_region.name if table_region is not None else None,
        pue_source=pue_source,
        gross_source=gross_source,
        net_source=net_source,
    )
