"""The bundled data tables: chips, grid carbon intensity by region, and datacenter PUE.

Each table is a CSV file under `carbon_callbacks/data/` with a `source` for every row. Tables are read once, on
first use, so `import carbon_callbacks` stays fast. A name that is not in a table is an error listing the closest
known names: this library never substitutes a default chip or location.
"""

from __future__ import annotations

import csv
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError, unknown_name

#: The bundled tables (a plain path: `importlib.resources` costs milliseconds of every import).
_DATA = Path(__file__).resolve().parents[1] / "data"

DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8")


@dataclass(frozen=True)
class Chip:
    """One accelerator or CPU, with dense peak FLOP/s per dtype and its power figures.

    Attributes:
        name: canonical id, e.g. `"h100-sxm"`.
        kind: `"gpu"`, `"tpu"` or `"cpu"`.
        vendor: who makes it.
        peak_tflops: dense (non-sparsity) peak TFLOP/s per dtype; dtypes the chip lacks are absent.
        tdp_w: thermal design power / maximum board power, in W, or `None` where unpublished.
        system_power_w: measured average system power per processor, in W (the paper's Table 3), or `None`.
        memory_gb: memory per chip, in GB, or `None`.
        source: where the row's figures come from (URLs).
        note: what the figures mean (form factor, which dtype is tensor-core, ...).
        embodied_kgco2e: manufacturing footprint of one chip, in kg CO2e, or `None` where no published figure
            exists (never estimated here). `embodied_note` says what it covers (die only, or the whole GPU).
        host_embodied_kgco2e: the chip's share of its host server's manufacturing footprint, in kg CO2e, or `None`
            where unpublished.
        embodied_source: where the two footprints come from (URLs); empty when both are `None`.
        embodied_note: what the footprints cover and how they were derived.
    """

    name: str
    kind: str
    vendor: str
    peak_tflops: dict[str, float]
    tdp_w: float | None
    system_power_w: float | None
    memory_gb: float | None
    source: str
    note: str
    embodied_kgco2e: float | None = None
    host_embodied_kgco2e: float | None = None
    embodied_source: str = ""
    embodied_note: str = ""

    @property
    def embodied_kgco2e_per_chip(self) -> float | None:
        """The chip's footprint plus its host share, in kg CO2e; `None` without a published chip footprint."""
        if self.embodied_kgco2e is None:
            return None
        return self.embodied_kgco2e + (self.host_embodied_kgco2e or 0.0)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s of one chip for `dtype` (e.g. `"bf16"`)."""
        dtype = dtype.lower()
        if dtype not in self.peak_tflops:
            raise InvalidInputError(
                f"dtype {dtype!r} has no peak FLOP/s for chip {self.name!r}; "
                f"known for this chip: {', '.join(self.peak_tflops) or 'none'}."
            )
        return self.peak_tflops[dtype] * 1e12


@dataclass(frozen=True)
class Region:
    """Grid carbon intensity of a country, cloud region or the paper's datacenters.

    Attributes:
        name: canonical id, e.g. `"fr"`, `"gcp:us-central1"`, `"google-georgia"`.
        kind: `"country"`, `"cloud-region"`, `"paper"` or `"average"`.
        provider: the cloud provider for cloud regions and paper datacenters, else empty.
        gross_kg_per_kwh: the grid's average intensity, kg CO2e per kWh.
        net_kg_per_kwh: intensity after the datacenter's carbon-free-energy purchases, or `None` where unpublished.
        cfe_percent: the datacenter's carbon-free-energy share, or `None`.
        year: the year the figure is for.
        source: where the figure comes from (URLs).
    """

    name: str
    kind: str
    provider: str
    location: str
    gross_kg_per_kwh: float
    net_kg_per_kwh: float | None
    cfe_percent: float | None
    year: str
    source: str
    note: str


@dataclass(frozen=True)
class PueEntry:
    """A published power usage effectiveness (facility energy / IT energy)."""

    name: str
    pue: float
    year: str
    kind: str
    source: str
    note: str


def normalize_name(name: str) -> str:
    """Lower case, hyphens for spaces and underscores: `"H100 SXM"` -> `"h100-sxm"`."""
    return "-".join(str(name).strip().lower().replace("_", " ").split())


def _optional_float(table: str, row: dict[str, str], column: str) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidInputError(f"{table}: row {row.get('name')!r} has a non-numeric {column}: {text!r}.") from None


def _read_rows(filename: str) -> list[dict[str, str]]:
    text = _DATA.joinpath(filename).read_text(encoding="utf-8")
    rows = [row for row in csv.DictReader(text.splitlines()) if (row.get("name") or "").strip()]
    for row in rows:
        if not (row.get("source") or "").strip():
            raise InvalidInputError(f"{filename}: row {row['name']!r} has no source.")
    return rows


def _index(entries: list, rows: list[dict[str, str]]) -> dict[str, object]:
    """Maps every canonical name and alias (normalized) to its entry."""
    index: dict[str, object] = {}
    for entry, row in zip(entries, rows):
        for key in [row["name"], *(row.get("aliases") or "").split()]:
            index.setdefault(normalize_name(key), entry)
    return index


@functools.cache
def _chips() -> tuple[dict[str, Chip], dict[str, object]]:
    rows = _read_rows("chips.csv")
    entries = []
    for row in rows:
        peaks = {d: v for d in DTYPES if (v := _optional_float("chips.csv", row, f"peak_tflops_{d}")) is not None}
        entries.append(
            Chip(
                name=normalize_name(row["name"]),
                kind=row["kind"].strip(),
                vendor=row["vendor"].strip(),
                peak_tflops=peaks,
                tdp_w=_optional_float("chips.csv", row, "tdp_w"),
                system_power_w=_optional_float("chips.csv", row, "system_power_w"),
                memory_gb=_optional_float("chips.csv", row, "memory_gb"),
                source=row["source"].strip(),
                note=(row.get("note") or "").strip(),
                **_embodied(row),
            )
        )
    return {c.name: c for c in entries}, _index(entries, rows)


def _embodied(row: dict[str, str]) -> dict[str, object]:
    """The manufacturing-footprint columns of a chips.csv row; a footprint without its source is an error."""
    chip = _optional_float("chips.csv", row, "embodied_kgco2e")
    host = _optional_float("chips.csv", row, "host_embodied_kgco2e")
    source = (row.get("embodied_source") or "").strip()
    if (chip is not None or host is not None) and not source:
        raise InvalidInputError(f"chips.csv: row {row['name']!r} has an embodied footprint without embodied_source.")
    if host is not None and chip is None:
        raise InvalidInputError(f"chips.csv: row {row['name']!r} has a host share but no chip footprint.")
    for name, value in (("embodied_kgco2e", chip), ("host_embodied_kgco2e", host)):
        if value is not None and value < 0:
            raise InvalidInputError(f"chips.csv: row {row['name']!r} has a negative {name}: {value!r}.")
    return {
        "embodied_kgco2e": chip,
        "host_embodied_kgco2e": host,
        "embodied_source": source,
        "embodied_note": (row.get("embodied_note") or "").strip(),
    }


@functools.cache
def _regions() -> tuple[dict[str, Region], dict[str, object]]:
    rows = _read_rows("regions.csv")
    entries = []
    for row in rows:
        gross = _optional_float("regions.csv", row, "gross_kg_per_kwh")
        if gross is None:
            raise InvalidInputError(f"regions.csv: row {row['name']!r} has no gross_kg_per_kwh.")
        entries.append(
            Region(
                name=normalize_name(row["name"]),
                kind=row["kind"].strip(),
                provider=(row.get("provider") or "").strip(),
                location=(row.get("location") or "").strip(),
                gross_kg_per_kwh=gross,
                net_kg_per_kwh=_optional_float("regions.csv", row, "net_kg_per_kwh"),
                cfe_percent=_optional_float("regions.csv", row, "cfe_percent"),
                year=(row.get("year") or "").strip(),
                source=row["source"].strip(),
                note=(row.get("note") or "").strip(),
            )
        )
    return {r.name: r for r in entries}, _index(entries, rows)


@functools.cache
def _pue_entries() -> tuple[dict[str, PueEntry], dict[str, object]]:
    rows = _read_rows("pue.csv")
    entries = [
        PueEntry(
            name=normalize_name(row["name"]),
            pue=float(row["pue"]),
            year=(row.get("year") or "").strip(),
            kind=(row.get("kind") or "").strip(),
            source=row["source"].strip(),
            note=(row.get("note") or "").strip(),
        )
        for row in rows
    ]
    return {p.name: p for p in entries}, _index(entries, rows)


def chips() -> dict[str, Chip]:
    """Every chip in the table, by canonical name."""
    return dict(_chips()[0])


def regions() -> dict[str, Region]:
    """Every region in the table, by canonical name."""
    return dict(_regions()[0])


def pue_entries() -> dict[str, PueEntry]:
    """Every PUE figure in the table, by canonical name."""
    return dict(_pue_entries()[0])


#: Names that stand for chips that differ (memory, power, peak): an error lists the candidates instead of picking one.
AMBIGUOUS_CHIPS = {
    "a100": ("a100-40gb", "a100-80gb"),
    "nvidia-a100": ("a100-40gb", "a100-80gb"),
    "h100": ("h100-sxm", "h100-pcie"),
    "nvidia-h100": ("h100-sxm", "h100-pcie"),
    "h100-80gb": ("h100-sxm", "h100-pcie"),
}


def get_chip(name: str) -> Chip:
    """The chip called `name` or one of its aliases (said once, on stderr, with what it became).

    Raises:
        InvalidInputError: for a name that stands for several chips (`"A100"`: 40 or 80 GB), listing them.
        UnknownNameError: for a name not in the table, listing close names.
    """
    by_name, index = _chips()
    key = normalize_name(name)
    if key in AMBIGUOUS_CHIPS:
        candidates = " or ".join(AMBIGUOUS_CHIPS[key])
        raise InvalidInputError(f"chip {name!r} is ambiguous: {candidates} (they differ in memory, power or peak "
                                "FLOP/s); pass one of them.")
    try:
        chip = index[key]
    except KeyError:
        raise unknown_name("chip", name, by_name, "See `carbon-callbacks tables chips`.") from None
    announce_alias("chip", name, chip.name)
    return chip  # type: ignore[return-value]


def get_region(name: str) -> Region:
    """The region called `name` or one of its aliases (said once, on stderr, with what it became); raises
    `UnknownNameError` listing close names."""
    by_name, index = _regions()
    try:
        region = index[normalize_name(name)]
    except KeyError:
        raise unknown_name(
            "region", name, by_name, "See `carbon-callbacks tables regions`, or pass an intensity in kg CO2e/kWh."
        ) from None
    announce_alias("region", name, region.name, region.location)
    return region  # type: ignore[return-value]


def table_source(table: str, entry: Region | PueEntry) -> str:
    """How a figure from a table is labelled: `table:<table>/<name> (<year>) <source URLs>`, the year left out where
    the row has none."""
    year = f" ({entry.year})" if str(entry.year or "").strip() else ""
    return f"table:{table}/{entry.name}{year} {entry.source}"


_ANNOUNCED: set[tuple[str, str]] = set()


def announce_alias(kind: str, given: str, name: str, place: str | None = None) -> None:
    """Says once per process, on stderr, that `given` was read as the table's `name` (an alias: `france` is `fr`),
    so a name that resolves to another entry than meant is seen at the start."""
    if normalize_name(given) == name or (kind, given) in _ANNOUNCED:
        return
    _ANNOUNCED.add((kind, given))
    where = f" ({place})" if place else ""
    print(f"carbon-callbacks: {kind} {given!r} is {name!r}{where} in the {kind}s table", file=sys.stderr, flush=True)


def get_pue(name: str) -> PueEntry:
    """The PUE entry called `name` (a provider such as `"google"`, or `"industry-average"`)."""
    by_name, index = _pue_entries()
    try:
        return index[normalize_name(name)]  # type: ignore[return-value]
    except KeyError:
        raise unknown_name("provider", name, by_name, "See `carbon-callbacks tables pue`, or pass a PUE.") from None
