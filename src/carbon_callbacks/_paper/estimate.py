"""The paper's formulas for a whole run, before or after the fact (Patterson et al. 2021, Section 2.5).

energy (kWh) = hours x chips x average system power per chip (W) x PUE / 1000;
tCO2e = energy (MWh) x kg CO2e per kWh, gross (the grid's) and net (after carbon-free-energy purchases).

Before training, the hours can come from the architecture: total FLOPs = tokens x model FLOPs per token
(`architecture_flops`), hours = FLOPs / (chips x achieved FLOP/s), the achieved FLOP/s given or MFU x the chip's
dense peak. The embodied (manufacturing) share of the chips (`embodied_co2e`) is reported beside the operational
CO2e, never added into it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from carbon_callbacks._errors import InvalidInputError, check_number, check_watts
from carbon_callbacks._paper.architectures import architecture_flops, get_paper_model, with_lengths
from carbon_callbacks._paper.embodied import embodied_co2e
from carbon_callbacks._site.site import Site, resolve_site
from carbon_callbacks._site.tables import Chip, get_chip
from carbon_callbacks.flops.analytic import TransformerConfig


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
        total_model_flops: training FLOPs counted from the architecture (`model`), else `None`.
        flops_method: how the FLOPs were obtained (`"given"`, or the analytic formula), else `None`.
        flops_6n: the rule of thumb 6 x `params_active_per_token` x tokens, beside `total_model_flops`.
        params_total / params_active_per_token: the architecture's parameters, all and per token.
        tokens: training tokens, when the FLOPs come from the architecture.
        chip: the chips-table name of `chip`, when one was given.
        embodied_co2e_kg: the chips' manufacturing share, in kg CO2e: chip (+ host) footprint x chips x hours /
            lifetime; `None` without a published footprint. Not included in `gross_tco2e` / `net_tco2e`.
        embodied_kgco2e_per_chip: chip footprint plus host share used, in kg CO2e, or `None`.
        lifetime_years: the service life the footprint is spread over.
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
    total_model_flops: float | None = None
    flops_method: str | None = None
    flops_6n: float | None = None
    params_total: int | None = None
    params_active_per_token: int | None = None
    tokens: float | None = None
    chip: str | None = None
    embodied_co2e_kg: float | None = None
    embodied_kgco2e_per_chip: float | None = None
    lifetime_years: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def energy_kwh(hours: float, chips: float, watts_per_chip: float, pue: float) -> float:
    """Facility energy in kWh: hours x chips x average system power per chip x PUE / 1000."""
    return hours * chips * watts_per_chip * pue / 1000.0


def _model_config(model: str | TransformerConfig) -> tuple[TransformerConfig, str]:
    """(shape, where it comes from) of a bundled model name or a `TransformerConfig`."""
    if isinstance(model, TransformerConfig):
        return model, "given"
    if isinstance(model, str):
        paper = get_paper_model(model)
        how = f"table:paper_models/{paper.name} {paper.source}"
        if paper.assumptions:
            how += f"; assumed: {paper.assumptions}"
        return paper.config, how
    raise InvalidInputError(
        f"model must be a bundled model name or a TransformerConfig (TransformerConfig.from_hf for a Hugging Face "
        f"config), got {type(model).__name__}."
    )


def _achieved_flops(
    tflops_achieved: float | None, mfu: float | None, chip: Chip | None, dtype: str
) -> tuple[float, str]:
    """(achieved FLOP/s per chip, how) from `tflops_achieved`, or from `mfu` x the chip's dense peak."""
    if tflops_achieved is not None and mfu is not None:
        raise InvalidInputError("Give the achieved speed one way: tflops_achieved or mfu, not both.")
    if tflops_achieved is not None:
        return check_number("tflops_achieved", tflops_achieved, positive=True) * 1e12, "tflops_achieved (given)"
    if mfu is None:
        raise InvalidInputError(
            "tflops_achieved is required with flops or model (time = FLOPs / (chips x TFLOP/s)); or give mfu "
            "with chip."
        )
    fraction = check_number("mfu", mfu, positive=True, at_most=1.0)
    if chip is None:
        raise InvalidInputError("mfu needs chip: the achieved FLOP/s are mfu x the chip's dense peak FLOP/s.")
    peak = chip.peak_flops(dtype)
    how = f"mfu {fraction:g} x table:chips/{chip.name} dense {dtype.lower()} peak {peak / 1e12:g} TFLOP/s"
    return fraction * peak, how


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
    model: str | TransformerConfig | None = None,
    tokens: float | None = None,
    seq_len: int | None = None,
    decoder_seq_len: int | None = None,
    causal: bool = True,
    mfu: float | None = None,
    dtype: str = "bf16",
    lifetime_years: float | None = None,
) -> Estimate:
    """Estimates a run's energy and CO2e with the paper's formulas, and the chips' embodied share beside them.

    Args:
        chips: number of processors.
        days: training time in days; or give `hours`, `flops`, or `model` with `tokens`.
        hours: training time in hours.
        flops: total FLOPs of the run; time = flops / (chips x achieved FLOP/s).
        tflops_achieved: measured TFLOP/s per chip (with `flops` or `model`).
        watts: average system power per chip, in W. Or give `chip` to use the table's measured system power
            (else its TDP, labelled as such).
        chip: a name from the chips table: power when `watts` is not given, dense peak for `mfu`, and the
            manufacturing footprint for the embodied share. Defaults to `None`.
        pue: power usage effectiveness. Defaults to `None`: the provider's, else the industry average (labelled).
        provider: cloud provider for the PUE default. Defaults to `None`.
        region: a name from the regions table; or give `intensity`. Defaults to `None`.
        intensity: gross kg CO2e per kWh. Defaults to `None`.
        net_intensity: net kg CO2e per kWh. Defaults to `None`: the region's net figure, else the gross one.
        model: the architecture: a bundled model name (`paper_models()`: `"gpt3"`, `"t5-11b"`, ...) or a
            `TransformerConfig` (e.g. `TransformerConfig.from_hf(config)`). Needs `tokens`. Defaults to `None`.
        tokens: training tokens (input tokens for an encoder-decoder). Defaults to `None`.
        seq_len: training sequence length, replacing the model's. Defaults to `None`.
        decoder_seq_len: target length of an encoder-decoder, replacing the model's. Defaults to `None`.
        causal: count decoder self-attention on the lower triangle only. Defaults to `True`.
        mfu: model FLOPs utilization, instead of `tflops_achieved`: achieved = mfu x the chip's dense peak.
            Defaults to `None`.
        dtype: the dtype whose dense peak `mfu` refers to. Defaults to `"bf16"`.
        lifetime_years: service life the chips' footprint is spread over. Defaults to `None`: 6 years (sourced:
            `carbon_callbacks._paper.embodied.LIFETIME_SOURCE`).

    Raises:
        InvalidInputError: for missing, conflicting or unusable inputs; the message names the field.
        UnknownNameError: for a chip, region, provider or model not in the tables.

    Example:
        >>> run = estimate(chips=10000, model="gpt3", tokens=300e9, tflops_achieved=24.6, watts=330, pue=1.1,
        ...                intensity=0.429)
        >>> round(run.energy_kwh / 1000)
        1306
    """
    chips_n = check_number("chips", chips, positive=True)
    if chips_n != int(chips_n):
        raise InvalidInputError(f"chips must be a whole number, got {chips!r}.")
    sources: dict[str, str] = {"chips": "given"}
    for name, value in (("tokens", tokens), ("seq_len", seq_len), ("decoder_seq_len", decoder_seq_len)):
        if value is not None and model is None:
            raise InvalidInputError(
                f"{name} needs model (a bundled model name, or a TransformerConfig / --hf-config)."
            )
    time_inputs = [
        n for n, v in (("days", days), ("hours", hours), ("flops", flops), ("model", model)) if v is not None
    ]
    if len(time_inputs) != 1:
        raise InvalidInputError(
            "Give the training time exactly one way: days, hours, flops with tflops_achieved (or mfu), or model with "
            f"tokens; got {', '.join(time_inputs) or 'none'}."
        )
    chip_entry = get_chip(chip) if chip is not None else None
    total_flops = None
    arch = None
    if days is not None:
        run_hours = check_number("days", days, positive=True) * 24.0
        sources["hours"] = "given: days x 24"
    elif hours is not None:
        run_hours = check_number("hours", hours, positive=True)
        sources["hours"] = "given"
    else:
        if model is not None:
            if tokens is None:
                raise InvalidInputError(
                    "tokens is required with model: total FLOPs = tokens x FLOPs per token of the architecture; "
                    "give the training tokens (--tokens)."
                )
            config, shape_source = _model_config(model)
            config = with_lengths(config, seq_len, decoder_seq_len)
            arch = architecture_flops(config, tokens, causal=causal)
            total_flops = arch.total_model_flops
            sources.update(model=shape_source, tokens="given", total_flops=arch.flops_method)
        else:
            total_flops = check_number("flops", flops, positive=True)
            sources["total_flops"] = "given"
        achieved, achieved_how = _achieved_flops(tflops_achieved, mfu, chip_entry, dtype)
        run_hours = total_flops / (chips_n * achieved) / 3600.0
        if mfu is None:
            sources["hours"] = "flops / (chips x tflops_achieved x 1e12) / 3600"
        else:
            sources["hours"] = f"flops / (chips x achieved FLOP/s) / 3600; achieved = {achieved_how}"

    if watts is not None:
        watts_per_chip = check_watts("watts", watts)
        sources["watts_per_chip"] = "given"
    elif chip_entry is not None:
        entry = chip_entry
        if entry.system_power_w is not None:
            watts_per_chip = entry.system_power_w
            sources["watts_per_chip"] = f"table:chips/{entry.name} measured system power {entry.source}"
        elif entry.tdp_w is not None:
            watts_per_chip = entry.tdp_w
            sources["watts_per_chip"] = (
                f"modeled:tdp table:chips/{entry.name} TDP (no published system power) {entry.source}"
            )
        else:
            raise InvalidInputError(f"chip {entry.name!r} has neither system power nor TDP in the table; pass watts.")
    else:
        raise InvalidInputError("watts (average system power per chip) or chip is required.")

    embodied = embodied_co2e(chip_entry, chips_n, run_hours, lifetime_years)
    sources["embodied_co2e_kg"] = embodied.source
    site: Site = resolve_site(
        region=region, intensity=intensity, net_intensity=net_intensity, pue=pue, provider=provider
    )
    if site.traced:
        raise InvalidInputError("estimate takes one intensity, not a trace: its value over the run depends on when "
                                "the run starts (`carbon-callbacks estimate --intensity-trace FILE --start TIME`).")
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
        total_model_flops=arch.total_model_flops if arch else None,
        flops_method=arch.flops_method if arch else ("given" if flops is not None else None),
        flops_6n=arch.six_n_flops if arch else None,
        params_total=arch.params_total if arch else None,
        params_active_per_token=arch.params_active_per_token if arch else None,
        tokens=arch.tokens if arch else None,
        chip=chip_entry.name if chip_entry is not None else None,
        embodied_co2e_kg=embodied.co2e_kg,
        embodied_kgco2e_per_chip=embodied.kgco2e_per_chip,
        lifetime_years=embodied.lifetime_years,
    )
