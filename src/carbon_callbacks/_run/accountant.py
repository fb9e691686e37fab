"""The framework-agnostic accounting core: observations in; energy, CO2e, MFU and the run's records out.

Pure arithmetic: an adapter's `RunSession` turns hooks into `Accountant.update(...)` calls and hands the records it
returns to the run's store (`carbon_callbacks._record`), which writes them; everything logged or written comes from
`Accountant.metrics()` and `Accountant.summary()`, so every adapter reports the same numbers.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import time
from collections.abc import Mapping

from carbon_callbacks._constants import J_PER_KWH, SCHEMA_VERSION
from carbon_callbacks._errors import InvalidInputError, check_count, check_number
from carbon_callbacks._paper.embodied import check_lifetime, embodied_co2e
from carbon_callbacks._site.site import Site
from carbon_callbacks._site.tables import Chip, get_chip
from carbon_callbacks.meters._base import COMPONENTS, check_method, join_methods

#: Additive totals reduced across ranks (data-parallel workers), in this order.
#: The totals that may be unknown (`None`), beside the energy. The CO2e sums are kept only for an intensity that
#: varies in time (`Site.traced`); otherwise CO2e is energy x intensity.
_OPTIONAL = ("model_flops", "hardware_flops", "tokens", "padding_tokens", "generation_flops", "generation_tokens",
             "gross_co2e_kg", "net_co2e_kg", "outside_trace_kwh")
REDUCED_FIELDS = (*(f"energy_j_{c}" for c in COMPONENTS), *_OPTIONAL)
#: What `mfu` covers in a run that generated tokens inside its steps.
MFU_WITH_GENERATION = ("the training passes' model FLOPs over the whole step time, which includes generation; the "
                       "generation's FLOPs (total_generation_flops) are not in it")

def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Accountant:
    """Keeps a run's running totals and turns them into kWh, gross and net CO2e, MFU and energy per token.

    Args:
        site: PUE and carbon intensities (see `resolve_site`).
        chip: the accelerator (a `Chip` or a name from the chips table), used for MFU and reports.
            Defaults to `None`.
        num_chips: chips the run uses in total, over all ranks. Defaults to `1`.
        dtype: the dtype whose dense peak FLOP/s defines MFU. Defaults to `"bf16"`.
        peak_flops: dense peak FLOP/s of one chip, overriding the table. Defaults to `None`.
        world_size: ranks (data-parallel processes) in the run. Defaults to `1`.
        lifetime_years: service life over which the chips' manufacturing footprint is spread for
            `embodied_co2e_kg`. Defaults to `None`: 6 years (`carbon_callbacks._paper.embodied.LIFETIME_SOURCE`).

    Example:
        >>> from carbon_callbacks import Accountant, resolve_site
        >>> acct = Accountant(resolve_site(intensity=0.4, pue=1.1))
        >>> _ = acct.update(seconds=1.0, energy_j={"cpu": 3.6e6}, energy_method="given")
        >>> round(acct.summary()["gross_co2e_kg"], 3)
        0.44

    Notes:
        `model_flops` and `hardware_flops` are per observation, summed over the ranks' local work. `None` means
        "not measured", never 0. Totals from other ranks enter through `set_global_totals`.
        `summary()["embodied_co2e_kg"]` (chip footprint x chips x wall-clock hours / lifetime) stands beside the
        operational CO2e and is never added into `gross_co2e_kg` / `net_co2e_kg`; it is `None` for a chip without
        a published footprint.
    """

    def __init__(
        self,
        site: Site,
        *,
        chip: str | Chip | None = None,
        num_chips: int = 1,
        dtype: str = "bf16",
        peak_flops: float | None = None,
        world_size: int = 1,
        lifetime_years: float | None = None,
    ) -> None:
        if not isinstance(site, Site):
            raise InvalidInputError(f"site must be a Site (see resolve_site), got {type(site).__name__}.")
        self.site = site
        self.chip = get_chip(chip) if isinstance(chip, str) else chip
        self.num_chips = check_count("num_chips", num_chips)
        self.world_size = check_count("world_size", world_size)
        check_lifetime(lifetime_years)
        self.lifetime_years = lifetime_years
        self.dtype = dtype
        if peak_flops is not None:
            self.peak_flops: float | None = check_number("peak_flops", peak_flops, positive=True)
            self.peak_source = "given"
        elif self.chip is not None and dtype.lower() in self.chip.peak_tflops:
            self.peak_flops = self.chip.peak_flops(dtype)
            self.peak_source = f"table:chips/{self.chip.name} dense {dtype.lower()} {self.chip.source}"
        else:
            self.peak_flops, self.peak_source = None, "unknown (no chip with a peak for this dtype)"
        self.info: dict = {}
        self.reset()

    # ----------------------------------------------------------------------------------------------- state
    def reset(self) -> None:
        """Clears every total and buffered record: call at the start of a run to reuse one instance."""
        self.steps = 0
        self.seconds = 0.0
        self.seconds_with_model_flops = 0.0
        self.energy_j = dict.fromkeys(COMPONENTS, 0.0)
        self.methods: dict[str, str] = {}
        self.model_flops: float | None = None
        self.hardware_flops: float | None = None
        self.tokens: float | None = None
        self.padding_tokens: float | None = None
        self.generation_flops: float | None = None
        self.generation_tokens: float | None = None
        self.gross_co2e_kg: float | None = None  # with a trace: each interval's energy x the trace over it
        self.net_co2e_kg: float | None = None
        self.outside_trace_kwh: float | None = None  # energy spent outside the trace's span
        self.last_model_flops: float | None = None
        self.last_seconds: float | None = None
        self.status = "running"
        self.started_at = _now_iso()
        self._global: dict[str, float] | None = None
        self.pending_record: dict | None = None  # a preview's record of the observation it added

    def state_dict(self) -> dict:
        """The totals, to be saved with a checkpoint and restored with `load_state_dict`."""
        return {
            "schema_version": SCHEMA_VERSION,
            "steps": self.steps,
            "seconds": self.seconds,
            "seconds_with_model_flops": self.seconds_with_model_flops,
            "energy_j": dict(self.energy_j),
            "methods": dict(self.methods),
            "model_flops": self.model_flops,
            "hardware_flops": self.hardware_flops,
            "tokens": self.tokens,
            "padding_tokens": self.padding_tokens,
            "generation_flops": self.generation_flops,
            "generation_tokens": self.generation_tokens,
            "gross_co2e_kg": self.gross_co2e_kg,
            "net_co2e_kg": self.net_co2e_kg,
            "outside_trace_kwh": self.outside_trace_kwh,
            "started_at": self.started_at,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continues the totals saved by `state_dict`.

        Raises:
            InvalidInputError: for a state of another schema, or one that is cut short or holds unusable numbers.
        """
        if state.get("schema_version") != SCHEMA_VERSION:
            raise InvalidInputError(
                f"state_dict schema_version must be {SCHEMA_VERSION}, got {state.get('schema_version')!r}."
            )
        try:
            steps = check_count("state_dict['steps']", state["steps"], minimum=0)
            seconds = check_number("state_dict['seconds']", state["seconds"], non_negative=True)
            with_flops = check_number("state_dict['seconds_with_model_flops']", state["seconds_with_model_flops"],
                                      non_negative=True)
            energy = {c: check_number(f"state_dict['energy_j'][{c!r}]", state["energy_j"].get(c, 0.0),
                                      non_negative=True) for c in COMPONENTS}
            methods = {c: check_method(f"state_dict['methods'][{c!r}]", m) for c, m in state["methods"].items()}
            optional = {key: None if state.get(key) is None else check_number(f"state_dict[{key!r}]", state[key],
                                                                               non_negative=True)
                        for key in _OPTIONAL}
        except (KeyError, TypeError, AttributeError) as err:
            raise InvalidInputError(f"state_dict is cut short or malformed ({type(err).__name__}: {err}).") from None
        self.steps, self.seconds, self.seconds_with_model_flops = steps, seconds, with_flops
        self.energy_j, self.methods = energy, methods
        for key, value in optional.items():
            setattr(self, key, value)
        self.started_at = str(state.get("started_at", self.started_at))

    def annotate(self, **info) -> None:
        """Adds run facts for reports (model name, parameters, FLOP-count method, ...) to `run.json`'s `info`."""
        self.info.update(info)

    # ----------------------------------------------------------------------------------------------- input
    def update(
        self,
        *,
        seconds: float,
        energy_j: Mapping[str, float],
        energy_method: str | Mapping[str, str],
        model_flops: float | None = None,
        hardware_flops: float | None = None,
        tokens: float | None = None,
        padding_tokens: float | None = None,
        generation_flops: float | None = None,
        generation_tokens: float | None = None,
        loss: float | None = None,
        step: int | None = None,
        num_steps: int = 1,
        epoch: int | None = None,
    ) -> dict:
        """Adds one observation (one training step, or a window of `num_steps` steps) and returns its record.

        Args:
            seconds: wall-clock time the observation covers, in s.
            energy_j: IT energy in J by component (`"gpu"`, `"tpu"`, `"cpu"`, `"dram"`, `"host"`), this rank only.
            energy_method: how the energy was obtained, for all components or per component:
                `"measured:nvml"`, `"measured:rapl"`, `"modeled:<assumption>"` or `"given"`.
            model_flops: the model's FLOPs (activated experts only). Defaults to `None` (not counted).
            hardware_flops: FLOPs that actually ran (recompute, padding). Defaults to `None`: same as model FLOPs.
            tokens: tokens processed, padding excluded where the batch says which positions are padding.
                Defaults to `None`.
            padding_tokens: padded positions processed beside `tokens`. Defaults to `None` (not known).
            generation_flops: FLOPs of generating tokens inside the steps (GRPO, online DPO), forward only; also in
                `hardware_flops`, never in `model_flops`. Defaults to `None` (no generation, or not counted).
            generation_tokens: tokens generated inside the steps. Defaults to `None`.
            loss: the training loss, stored with the record for plots. Defaults to `None`.
            step: the step number the framework's logger used for the row of this observation (docs/adapters.md
                says which, per framework). Defaults to `None`: this accountant's step count.
            num_steps: training steps the observation covers; FLOPs, tokens and energy are their sums.
                Defaults to `1`.
            epoch: the epoch whose end closed the observation, for frameworks that log per epoch. Defaults to
                `None`.

        Raises:
            InvalidInputError: for a negative, NaN or infinite number, an unknown component or method label.
        """
        seconds = check_number("seconds", seconds, non_negative=True)
        num_steps = check_count("num_steps", num_steps)
        if not energy_j:
            raise InvalidInputError("energy_j must name at least one component, got an empty mapping.")
        energy = {}
        for component, joules in energy_j.items():
            if component not in COMPONENTS:
                raise InvalidInputError(
                    f"energy_j has unknown component {component!r}; valid: {', '.join(COMPONENTS)}."
                )
            energy[component] = check_number(f"energy_j[{component!r}]", joules, non_negative=True)
        if isinstance(energy_method, str):
            methods = {c: check_method("energy_method", energy_method) for c in energy}
        else:
            methods = {}
            for c in energy:
                if c not in energy_method:
                    raise InvalidInputError(f"energy_method has no entry for component {c!r}.")
                methods[c] = check_method(f"energy_method[{c!r}]", energy_method[c])
        if model_flops is not None:
            model_flops = check_number("model_flops", model_flops, non_negative=True)
        if hardware_flops is not None:
            hardware_flops = check_number("hardware_flops", hardware_flops, non_negative=True)
        elif model_flops is not None:
            hardware_flops = model_flops
        if tokens is not None:
            tokens = check_number("tokens", tokens, non_negative=True)
        if padding_tokens is not None:
            padding_tokens = check_number("padding_tokens", padding_tokens, non_negative=True)
        if generation_flops is not None:
            generation_flops = check_number("generation_flops", generation_flops, non_negative=True)
        if generation_tokens is not None:
            generation_tokens = check_number("generation_tokens", generation_tokens, non_negative=True)
        if loss is not None:
            loss = float(loss)  # a NaN loss is the user's to see, not ours to reject

        self.steps += num_steps
        self.seconds += seconds
        for component, joules in energy.items():
            self.energy_j[component] += joules
        for component, method in methods.items():  # every method a component's energy came from, joined
            known = self.methods.get(component)
            self.methods[component] = method if known in (None, method) else join_methods(known, method)
        if model_flops is not None:
            self.model_flops = (self.model_flops or 0.0) + model_flops
            self.seconds_with_model_flops += seconds
        if hardware_flops is not None:
            self.hardware_flops = (self.hardware_flops or 0.0) + hardware_flops
        if tokens is not None:
            self.tokens = (self.tokens or 0.0) + tokens
        if padding_tokens is not None:
            self.padding_tokens = (self.padding_tokens or 0.0) + padding_tokens
        if generation_flops is not None:
            self.generation_flops = (self.generation_flops or 0.0) + generation_flops
        if generation_tokens is not None:
            self.generation_tokens = (self.generation_tokens or 0.0) + generation_tokens
        self.last_model_flops = None if model_flops is None else model_flops / num_steps
        self.last_seconds = seconds / num_steps

        it_j = sum(energy.values())
        facility_kwh = self.site.facility_kwh(it_j / J_PER_KWH)
        ended = time.time()
        step_co2e = facility_kwh * self.site.gross_kg_per_kwh
        if self.site.traced:  # the trace over the interval, the energy spent evenly through it
            gross, net, outside = self.site.intensities_over(ended - seconds, ended)
            step_co2e = facility_kwh * gross
            self.gross_co2e_kg = (self.gross_co2e_kg or 0.0) + step_co2e
            self.net_co2e_kg = (self.net_co2e_kg or 0.0) + facility_kwh * net
            self.outside_trace_kwh = (self.outside_trace_kwh or 0.0) + facility_kwh * outside
        totals = self.metrics()
        record = {
            "step": self.steps if step is None else int(step),
            "num_steps": num_steps,
            "cum_steps": self.steps,
            "time": ended,
            "seconds": seconds,
            "model_flops": model_flops,
            "hardware_flops": hardware_flops,
            "tokens": tokens,
            "padding_tokens": padding_tokens,
            "loss": None if loss is None or math.isnan(loss) else loss,
            "it_energy_j": it_j,
            **{f"energy_j_{c}": j for c, j in energy.items()},
            "energy_method": "+".join(sorted(set(methods.values()))),
            "step_energy_kwh": facility_kwh,
            "step_co2e_kg": step_co2e,
            "energy_kwh": totals["carbon/energy_kwh"],
            "co2e_kg": totals["carbon/co2e_kg"],
            "co2e_net_kg": totals["carbon/co2e_net_kg"],
            "mfu": self._mfu(model_flops, seconds, self._local_chips),
        }
        if epoch is not None:
            record["epoch"] = int(epoch)
        return record

    def preview(self, **observation) -> Accountant:
        """A copy with one more observation (`update`'s arguments) added, and that observation's record; this
        accountant unchanged.

        For reading a run mid-interval (a summary, a checkpoint's state) without closing the interval.
        """
        clone = copy.copy(self)
        clone.energy_j, clone.methods, clone.info = dict(self.energy_j), dict(self.methods), dict(self.info)
        clone.pending_record = clone.update(**observation)
        return clone

    def set_global_totals(self, totals: Mapping[str, float], world_size: int) -> None:
        """Uses totals summed over all ranks (see `local_totals`) for `summary()` and `metrics()`."""
        self._global = {k: float(totals[k]) for k in REDUCED_FIELDS}
        self.world_size = check_count("world_size", world_size)

    def local_totals(self) -> list[float]:
        """This rank's additive totals in `REDUCED_FIELDS` order, for a sum across ranks (None counts as 0)."""
        return [
            *(self.energy_j[c] for c in COMPONENTS),
            *(getattr(self, key) or 0.0 for key in _OPTIONAL),
        ]

    # ----------------------------------------------------------------------------------------------- output
    def _totals(self) -> dict[str, float | None]:
        if self._global is not None:
            g = self._global
            return {"energy_j": {c: g[f"energy_j_{c}"] for c in COMPONENTS},
                    **{key: g[key] if getattr(self, key) is not None else None for key in _OPTIONAL}}
        return {"energy_j": self.energy_j, **{key: getattr(self, key) for key in _OPTIONAL}}

    @property
    def _local_chips(self) -> int:
        """Chips of this rank (observations are per rank)."""
        return max(self.num_chips // self.world_size, 1)

    def _mfu(self, model_flops: float | None, seconds: float, chips: int) -> float | None:
        if model_flops is None or self.peak_flops is None or seconds <= 0:
            return None
        return model_flops / seconds / (chips * self.peak_flops)

    def metrics(self) -> dict[str, float]:
        """The `carbon/*` metrics every adapter logs: cumulative energy and CO2e, last step's FLOPs, time, MFU."""
        totals = self._totals()
        facility_kwh = self.site.facility_kwh(sum(totals["energy_j"].values()) / J_PER_KWH)
        gross, net = self._co2e(totals, facility_kwh)
        metrics = {"carbon/energy_kwh": facility_kwh, "carbon/co2e_kg": gross, "carbon/co2e_net_kg": net}
        if self.last_model_flops is not None:
            metrics["carbon/flops"] = self.last_model_flops
        if self.last_seconds is not None:
            metrics["carbon/step_time_s"] = self.last_seconds
        if (mfu := self._mfu(self.last_model_flops, self.last_seconds or 0.0, self._local_chips)) is not None:
            metrics["carbon/mfu"] = mfu
        return metrics

    def _co2e(self, totals: dict, energy_kwh: float) -> tuple[float, float]:
        """Gross and net CO2e of the totals: summed per interval with a trace, else energy x intensity."""
        if self.site.traced:
            return totals["gross_co2e_kg"] or 0.0, totals["net_co2e_kg"] or 0.0
        return energy_kwh * self.site.gross_kg_per_kwh, energy_kwh * self.site.net_kg_per_kwh

    def _trace_facts(self, totals: dict, energy_kwh: float, gross: float, net: float) -> dict:
        """What `run.json` says of the traces: each one, the run's energy-weighted intensities, the annual figure
        they replaced, and the energy spent outside their span (and what stood for them there)."""
        site = self.site
        facts = {key: trace.describe() for key, trace in (("gross", site.gross_trace), ("net", site.net_trace))
                 if trace is not None}
        facts.update(
            energy_weighted_gross_kg_per_kwh=gross / energy_kwh if energy_kwh > 0 else None,
            energy_weighted_net_kg_per_kwh=net / energy_kwh if energy_kwh > 0 else None,
            annual_kg_per_kwh=site.annual_kg_per_kwh,
            annual_source=f"regions table: {site.region}" if site.annual_kg_per_kwh is not None else None,
        )
        outside = totals["outside_trace_kwh"] or 0.0
        if outside > 0:
            trace = site.gross_trace or site.net_trace
            stand_in = "the region's annual figure" if site.annual_kg_per_kwh is not None else "the trace's average"
            facts["outside_kwh"] = outside
            facts["outside_used"] = f"{stand_in}, {site.outside_kg_per_kwh(trace):.4g} kg CO2e/kWh"
        return facts

    def summary(self) -> dict:
        """The `run.json` content: totals, the site, the chip, and how every number was obtained."""
        totals = self._totals()
        it_j = sum(totals["energy_j"].values())
        it_kwh = it_j / J_PER_KWH
        energy_kwh = self.site.facility_kwh(it_kwh)
        model_flops, tokens = totals["model_flops"], totals["tokens"]
        mfu = None
        if model_flops is not None and self.peak_flops is not None and self.seconds_with_model_flops > 0:
            mfu = model_flops / self.seconds_with_model_flops / (self.num_chips * self.peak_flops)
        seconds = self.seconds
        embodied = embodied_co2e(self.chip, self.num_chips, seconds / 3600.0, self.lifetime_years)
        gross, net = self._co2e(totals, energy_kwh)
        traced = self.site.traced
        info = dict(self.info)
        if traced:
            info["intensity_trace"] = self._trace_facts(totals, energy_kwh, gross, net)
        return {
            "schema_version": SCHEMA_VERSION,
            "status": self.status,
            "started_at": self.started_at,
            "updated_at": _now_iso(),
            "steps": self.steps,
            "wall_time_s": seconds,
            "energy_kwh": energy_kwh,
            "it_energy_kwh": it_kwh,
            "energy_kwh_by_component": {c: j / J_PER_KWH for c, j in totals["energy_j"].items() if j > 0},
            "energy_method": "+".join(sorted(set(self.methods.values()))) or None,
            "energy_methods": dict(sorted(self.methods.items())),
            "pue": self.site.pue,
            "gross_kg_per_kwh": gross / energy_kwh if traced and energy_kwh > 0 else self.site.gross_kg_per_kwh,
            "net_kg_per_kwh": net / energy_kwh if traced and energy_kwh > 0 else self.site.net_kg_per_kwh,
            "gross_co2e_kg": gross,
            "net_co2e_kg": net,
            "region": self.site.region,
            "chip": self.chip.name if self.chip is not None else None,
            "num_chips": self.num_chips,
            "world_size": self.world_size,
            "dtype": self.dtype,
            "peak_flops_per_chip": self.peak_flops,
            "total_model_flops": model_flops,
            "total_hardware_flops": totals["hardware_flops"],
            "tokens": tokens,
            "padding_tokens": totals["padding_tokens"],
            "total_generation_flops": totals["generation_flops"],
            "generation_tokens": totals["generation_tokens"],
            "mfu": mfu,
            "mfu_covers": MFU_WITH_GENERATION if totals["generation_tokens"] is not None and mfu is not None else None,
            "achieved_flops_per_chip": (
                model_flops / self.seconds_with_model_flops / self.num_chips
                if model_flops is not None and self.seconds_with_model_flops > 0
                else None
            ),
            "avg_power_w_per_chip": it_j / seconds / self.num_chips if seconds > 0 else None,
            "energy_j_per_token": energy_kwh * J_PER_KWH / tokens if tokens else None,
            "embodied_co2e_kg": embodied.co2e_kg,
            "embodied_kgco2e_per_chip": embodied.kgco2e_per_chip,
            "lifetime_years": embodied.lifetime_years,
            "sources": {
                "pue": self.site.pue_source,
                "gross_kg_per_kwh": self.site.gross_source,
                "net_kg_per_kwh": self.site.net_source,
                "peak_flops_per_chip": self.peak_source,
                "embodied_co2e_kg": embodied.source,
            },
            "info": info,
        }

    def close(self, status: str = "finished") -> dict:
        """Marks the run `status` (`"finished"`, `"interrupted"`, `"failed"`) and returns its summary."""
        self.status = status
        return self.summary()
