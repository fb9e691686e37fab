"""What-if: a finished run's footprint recomputed across the paper's four levers (model, machine, mechanization, map).

- **model**: for a dense run whose `info` carries its MoE twin's FLOPs per step (`moe_twin`), the sparse
  alternative: energy x twin FLOPs / run FLOPs, on the same chip at the same utilization (an estimate).
- **machine**: another chip from the table. Energy scales by the achieved FLOP/s per watt: the other chip is
  assumed to reach the run's MFU, so its IT energy is model FLOPs / (peak x MFU) x its power (the table's
  measured system power, else its TDP). An estimate, labelled as such.
- **mechanization**: another PUE (a number, or a provider's published PUE from the table).
- **map**: another region's gross and net intensity from the table.
- **when**: the run's measured power profile moved to another start on an hourly intensity trace (`when.Shift`:
  its energy-weighted intensity there, net = gross).

Every combination of the values given (each lever also keeps the run's own value) is one `Scenario`; the list is
sorted by net CO2e, each with its factor against the run.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from carbon_callbacks._constants import J_PER_KWH
from carbon_callbacks._errors import InvalidInputError, check_number, check_pue
from carbon_callbacks._reports.format import fmt_number, text_table
from carbon_callbacks._reports.when import Shift
from carbon_callbacks._site.tables import get_chip, get_pue, get_region

#: dtypes with the same class of tensor-core peak, tried when a chip lacks the run's dtype (V100: fp16, no bf16).
_DTYPE_TWINS = {"bf16": ("fp16",), "fp16": ("bf16",), "tf32": ("fp32",), "fp32": ("tf32",)}
ACTUAL = "actual"


@dataclass(frozen=True)
class Scenario:
    """One combination of levers and the footprint it implies.

    Attributes:
        model: `"actual"` or `"moe-twin"`.
        chip: the chip (the run's own for `"actual"`).
        region: the region name, or the run's.
        pue: the PUE used.
        it_energy_kwh: IT energy, in kWh.
        energy_kwh: facility energy (IT x PUE), in kWh.
        gross_co2e_kg / net_co2e_kg: emissions, in kg CO2e.
        factor: net CO2e / the run's net CO2e.
        how: what was recomputed and how (`"estimate: ..."` for chip and model changes).
    """

    model: str
    chip: str
    region: str
    pue: float
    it_energy_kwh: float
    energy_kwh: float
    gross_co2e_kg: float
    net_co2e_kg: float
    factor: float | None
    how: str

    @property
    def is_actual(self) -> bool:
        """Whether this is the run as it was."""
        return self.how == "actual run"

    def to_dict(self) -> dict:
        return asdict(self)


def _pue_value(value: str | float) -> tuple[float, str]:
    """A PUE given as a number or as a name from the PUE table (`"google"`, `"industry-average"`)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        entry = get_pue(str(value))
        return entry.pue, f"PUE table:pue/{entry.name}"
    return check_pue(number), "PUE given"


def _chip_power(chip) -> tuple[float, str]:
    if chip.system_power_w is not None:
        return chip.system_power_w, f"{chip.system_power_w:g} W measured system power"
    if chip.tdp_w is not None:
        return chip.tdp_w, f"{chip.tdp_w:g} W TDP"
    raise InvalidInputError(f"chip {chip.name!r} has neither system power nor TDP in the table.")


def _chip_peak(chip, dtype: str) -> tuple[float, str]:
    for candidate in (dtype, *_DTYPE_TWINS.get(dtype, ())):
        if candidate in chip.peak_tflops:
            return chip.peak_tflops[candidate] * 1e12, candidate
    raise InvalidInputError(
        f"chip {chip.name!r} has no dense peak FLOP/s for dtype {dtype!r}; "
        f"known: {', '.join(chip.peak_tflops) or 'none'}."
    )


def _twin_ratio(summary: dict) -> tuple[float, str] | None:
    """IT energy of the MoE twin / IT energy of the run, from FLOPs per step (hardware FLOPs when both have them)."""
    twin = (summary.get("info") or {}).get("moe_twin")
    steps = summary.get("steps")
    if not isinstance(twin, dict) or not steps:
        return None
    for kind in ("hardware", "model"):
        run_total = summary.get(f"total_{kind}_flops")
        twin_step = twin.get(f"{kind}_flops_per_step")
        if run_total and twin_step:
            return twin_step / (run_total / steps), f"{kind} FLOPs per step {twin_step:.4g} vs {run_total / steps:.4g}"
    return None


def whatif(
    summary: dict,
    *,
    chips: Sequence[str] = (),
    regions: Sequence[str] = (),
    pues: Sequence[str | float] = (),
    moe_twin: bool = True,
    mfu: float | None = None,
    shifts: Sequence[Shift] = (),
) -> list[Scenario]:
    """Recomputes a run's footprint for every combination of the given chips, regions and PUEs.

    Args:
        summary: the run's `run.json` (see `read_report`).
        chips: other chips from the chips table. Defaults to `()`.
        regions: other regions from the regions table. Defaults to `()`.
        pues: other PUEs, numbers or provider names from the PUE table. Defaults to `()`.
        moe_twin: add the sparse alternative when the run's `info` carries `moe_twin` FLOPs. Defaults to `True`.
        mfu: the utilization assumed on other chips. Defaults to `None`: the run's own MFU.
        shifts: the run moved to other starts on a trace (`when.shifted`, `when.best_start`). Defaults to `()`.

    Returns:
        Scenarios sorted by net CO2e (the run itself among them, factor 1).

    Raises:
        InvalidInputError: when the run has no energy, a chip change lacks the run's MFU and FLOPs, or a value
            is unusable.
        UnknownNameError: for a chip, region or PUE name not in the tables.
    """
    energy = summary.get("energy_kwh")
    if energy is None or summary.get("pue") is None or summary.get("gross_kg_per_kwh") is None:
        raise InvalidInputError("the run has no energy total, PUE or intensity (run.json missing or empty?).")
    pue0 = float(summary["pue"])
    it0 = summary.get("it_energy_kwh")
    it0 = float(it0) if it0 is not None else energy / pue0
    gross0 = float(summary["gross_kg_per_kwh"])
    net0 = float(summary.get("net_kg_per_kwh") if summary.get("net_kg_per_kwh") is not None else gross0)
    run_chip = summary.get("chip") or "(not given)"
    run_region = summary.get("region") or "given intensity"

    chip_options: list[tuple[str, float, str]] = [(run_chip, it0, "")]
    if chips:
        flops = summary.get("total_model_flops")
        use_mfu = check_number("mfu", mfu, positive=True, at_most=1.0) if mfu is not None else summary.get("mfu")
        if not flops or not use_mfu:
            raise InvalidInputError(
                "a chip what-if needs the run's model FLOPs and MFU (the run's chip has no dense peak FLOP/s for "
                "its dtype, or FLOPs were not counted); pass mfu= (--mfu) to assume a utilization."
            )
        mfu_text = f"MFU {use_mfu:.3g} " + ("assumed" if mfu is not None else "of the run")
        dtype = (summary.get("dtype") or "bf16").lower()
        for name in chips:
            chip = get_chip(name)
            peak, used_dtype = _chip_peak(chip, dtype)
            watts, power_text = _chip_power(chip)
            it_kwh = flops / (peak * use_mfu) * watts / J_PER_KWH
            how = f"estimate: FLOPs / ({peak / 1e12:g} TFLOP/s {used_dtype} x {mfu_text}) x {power_text}"
            chip_options.append((chip.name, it_kwh, how))

    region_options: list[tuple[str, float, float, str]] = [(run_region, gross0, net0, "")]
    for name in regions:
        region = get_region(name)
        net = region.net_kg_per_kwh if region.net_kg_per_kwh is not None else region.gross_kg_per_kwh
        region_options.append((region.name, region.gross_kg_per_kwh, net, f"region table:regions/{region.name}"))

    for shift in shifts:
        region_options.append((f"{run_region}, {shift.label}", shift.kg_per_kwh, shift.kg_per_kwh,
                               f"when: the run's measured power profile moved on the trace {shift.trace}, "
                               f"energy-weighted {shift.kg_per_kwh:.4g} kg/kWh"))

    pue_options: list[tuple[float, str]] = [(pue0, "")]
    for value in pues:
        pue_options.append(_pue_value(value))

    model_options: list[tuple[str, float, str]] = [(ACTUAL, 1.0, "")]
    twin = _twin_ratio(summary) if moe_twin else None
    if twin is not None:
        model_options.append(("moe-twin", twin[0], f"estimate: MoE twin, energy x {twin[0]:.4g} ({twin[1]})"))

    scenarios = []
    net_actual = energy * net0
    for (model, ratio, model_how), (chip, it_kwh, chip_how), (region, gross, net, region_how), (pue, pue_how) in (
        itertools.product(model_options, chip_options, region_options, pue_options)
    ):
        it = it_kwh * ratio
        facility = it * pue
        how = "; ".join(h for h in (model_how, chip_how, region_how, pue_how) if h) or "actual run"
        scenarios.append(
            Scenario(
                model=model,
                chip=chip,
                region=region,
                pue=pue,
                it_energy_kwh=it,
                energy_kwh=facility,
                gross_co2e_kg=facility * gross,
                net_co2e_kg=facility * net,
                factor=facility * net / net_actual if net_actual > 0 else None,
                how=how,
            )
        )
    scenarios.sort(key=lambda s: (s.net_co2e_kg, not s.is_actual))
    return scenarios


def format_whatif(scenarios: Sequence[Scenario]) -> str:
    """The scenarios as a text table (the run itself marked `*`)."""
    rows = [
        (
            ("* " if s.is_actual else "") + s.model,
            s.chip,
            s.region,
            s.pue,
            s.energy_kwh,
            s.gross_co2e_kg,
            s.net_co2e_kg,
            f"x{fmt_number(s.factor, 3)}" if s.factor is not None else "-",
            s.how,
        )
        for s in scenarios
    ]
    header = ["model", "chip", "region", "PUE", "kWh", "kg CO2e gross", "kg CO2e net", "vs run", "how"]
    return text_table(header, rows)
