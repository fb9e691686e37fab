"""Where the electricity comes from and how efficient the building is: PUE and gross/net carbon intensity.

The paper's two site levers. A `Site` holds the three numbers and where each came from; `resolve_site` builds one
from what the user gave, and refuses to guess a location.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from carbon_callbacks._errors import InvalidInputError, check_intensity, check_pue
from carbon_callbacks._site.tables import get_pue, get_region, table_source
from carbon_callbacks._site.trace import IntensityTrace, as_trace, iso_time

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
        gross_trace / net_trace: the intensity through time, where one was given (`IntensityTrace`); the figures
            above are then its time-average, and a run's CO2e integrates the trace over each interval.
        annual_kg_per_kwh: the region's annual gross figure a gross trace replaced (`None`: no region), which is
            also what a trace allowed to (`outside="annual"`) uses outside its span.
    """

    pue: float
    gross_kg_per_kwh: float
    net_kg_per_kwh: float
    region: str | None
    pue_source: str
    gross_source: str
    net_source: str
    gross_trace: IntensityTrace | None = None
    net_trace: IntensityTrace | None = None
    annual_kg_per_kwh: float | None = None

    def facility_kwh(self, it_kwh: float) -> float:
        """Facility energy = IT energy x PUE."""
        return it_kwh * self.pue

    @property
    def traced(self) -> bool:
        """Whether an intensity varies in time."""
        return self.gross_trace is not None or self.net_trace is not None

    def intensities_over(self, t0: float, t1: float) -> tuple[float, float, float]:
        """(gross, net) mean intensity over `[t0, t1]` (UTC seconds), and the share of it outside a trace."""
        gross, outside = self._over(self.gross_trace, self.gross_kg_per_kwh, t0, t1)
        if self.net_trace is not None:
            net, net_outside = self._over(self.net_trace, self.net_kg_per_kwh, t0, t1)
            outside = max(outside, net_outside)
        else:
            net = gross if self.net_varies else self.net_kg_per_kwh
        return gross, net, outside

    @property
    def net_varies(self) -> bool:
        """Whether the net intensity varies in time: a trace of its own, or the gross trace followed (no
        carbon-free-energy purchase known)."""
        return self.net_trace is not None or (self.gross_trace is not None and self.net_source.startswith("="))

    def _over(self, trace: IntensityTrace | None, constant: float, t0: float, t1: float) -> tuple[float, float]:
        if trace is None:
            return constant, 0.0
        if t1 <= t0:  # no time: the value at t0
            t1 = t0 + 1e-6
        total, covered = trace.integral(t0, t1)
        outside = (t1 - t0) - covered
        return (total + self.outside_kg_per_kwh(trace) * outside) / (t1 - t0), outside / (t1 - t0)

    def outside_kg_per_kwh(self, trace: IntensityTrace) -> float:
        """What stands for `trace` outside its span: the region's annual figure, else the trace's own average."""
        return self.annual_kg_per_kwh if self.annual_kg_per_kwh is not None else trace.mean()

    def check_start(self, now: float) -> None:
        """Refuses a run starting outside a trace's span, unless the trace allows the annual figure there."""
        for name, trace in (("intensity", self.gross_trace), ("net_intensity", self.net_trace)):
            if trace is not None and not trace.covers(now, now) and trace.outside != "annual":
                span = trace.describe()
                raise InvalidInputError(
                    f"{name}: the run starts at {iso_time(now)}, outside the trace {trace.source} ({span['start']} to "
                    f"{span['end']}); bring a trace that covers the run, or read it with outside='annual' "
                    "(`read_trace`) to use the region's annual figure there, labelled.")

    def to_dict(self) -> dict:
        """The site's figures and sources; a trace as what it is (`IntensityTrace.describe`), not its points."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("gross_trace", "net_trace"):
            out[key] = None if out[key] is None else out[key].describe()
        return out


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
    intensity: float | IntensityTrace | str | None = None,
    net_intensity: float | IntensityTrace | str | None = None,
    pue: float | None = None,
    provider: str | None = None,
) -> Site:
    """Builds a `Site` from a region name or explicit intensities, and a PUE.

    Args:
        region: a name from the regions table (country code, `provider:region`, or a paper datacenter).
            Defaults to `None`.
        intensity: gross grid intensity in kg CO2e/kWh, or one varying in time (an `IntensityTrace`, the path of
            a trace CSV, a pandas Series: `carbon_callbacks._site.trace`); overrides the region's figure (the
            region is then a label, and its annual figure is recorded beside the trace). Defaults to `None`.
        net_intensity: net intensity in kg CO2e/kWh, or a trace. Defaults to `None`: the region's published net
            figure (with a constant gross), else the gross one (no carbon-free-energy purchase known), labelled.
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
    gross_trace, net_trace = as_trace(intensity, "intensity"), as_trace(net_intensity, "net_intensity")
    for name, trace in (("intensity", gross_trace), ("net_intensity", net_trace)):
        if trace is not None and trace.outside == "annual" and table_region is None:
            raise InvalidInputError(f"{name}: a trace read with outside='annual' needs region= for the annual "
                                    "figure it falls back to.")
    if gross_trace is not None:
        gross = gross_trace.mean()
        gross_source = _trace_source(gross_trace)
    elif intensity is not None:
        gross = check_intensity("intensity", intensity)
        gross_source = "given"
    else:
        gross = table_region.gross_kg_per_kwh
        gross_source = table_source("regions", table_region)
    if net_trace is not None:
        net, net_source = net_trace.mean(), _trace_source(net_trace)
    elif net_intensity is not None:
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
        gross_trace=gross_trace,
        net_trace=net_trace,
        annual_kg_per_kwh=table_region.gross_kg_per_kwh if table_region is not None and gross_trace else None,
    )


def _trace_source(trace: IntensityTrace) -> str:
    every = {3600.0: "an hourly", 86400.0: "a daily"}.get(trace.resolution_s, f"a {trace.resolution_s / 60:g}-minute")
    return f"energy-weighted over {every} trace: {trace.source} ({trace.column})"
