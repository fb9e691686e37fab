"""What every adapter does, once: meter windows around logging intervals, per-step sums, accountant updates.

Adapters (Lightning, Keras, Flax) only translate their hooks into `start`, `step_end`, `sync` and `finish`. Per
step, the tracker adds a few numbers in memory; meters are read and the accountant updated only when a logging
interval closes (every `log_every_n_steps` steps), so a short step is never read against a coarse counter.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from carbon_callbacks._run.accountant import REDUCED_FIELDS, Accountant
from carbon_callbacks._errors import check_count, check_number
from carbon_callbacks._site.site import resolve_site
from carbon_callbacks._site.tables import Chip, get_chip
from carbon_callbacks.meters._base import Measurement

log = logging.getLogger(__name__)

_WINDOW = "carbon-callbacks/interval"
#: Share of a run of known length after which the projection of its total is logged once.
PROJECT_AFTER = 0.2


class Tracker:
    """Turns a training loop's steps into `carbon/*` metrics and a run directory.

    The keyword arguments are the ones every adapter takes (see the README's adapter section).

    Args:
        region: a name from the regions table. Defaults to `None`.
        intensity: gross grid intensity, kg CO2e/kWh. Defaults to `None`. One of `region`/`intensity` is required.
        net_intensity: net intensity, kg CO2e/kWh. Defaults to `None` (the region's, else the gross one).
        pue: power usage effectiveness. Defaults to `None` (the provider's, else the industry average, labelled).
        chip: the accelerator, a name from the chips table (for MFU and modeled power). Defaults to `None`.
        num_chips: chips in the whole run. Defaults to `None`: one per rank.
        output_dir: where `run.json` and `steps.jsonl` are written (by rank 0). Defaults to `None`: the adapter's.
        log_every_n_steps: steps per logging interval. Defaults to `None`: the adapter's (its framework's).
        flops: model FLOPs per training step, given by the user; overrides counting. Defaults to `None`.
        meter: a `carbon_callbacks.meters.Meter`. Defaults to `None`: the best available (`create_meter`).
        dtype: dtype whose dense peak defines MFU. Defaults to `"bf16"`.

    Raises:
        InvalidInputError: at construction, for a missing location or an unusable number.
        UnknownNameError: for a region or chip not in the tables.
    """

    def __init__(
        self,
        *,
        region: str | None = None,
        intensity: float | None = None,
        net_intensity: float | None = None,
        pue: float | None = None,
        chip: str | None = None,
        num_chips: int | None = None,
        output_dir: str | Path | None = None,
        log_every_n_steps: int | None = None,
        flops: float | None = None,
        meter=None,
        dtype: str = "bf16",
    ) -> None:
        self.site = resolve_site(region=region, intensity=intensity, net_intensity=net_intensity, pue=pue)
        self.chip: Chip | None = get_chip(chip) if chip is not None else None
        self.num_chips = check_count("num_chips", num_chips) if num_chips is not None else None
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.log_every_n_steps = (
            check_count("log_every_n_steps", log_every_n_steps) if log_every_n_steps is not None else None
        )
        self.flops = check_number("flops", flops, non_negative=True) if flops is not None else None
        self.meter = meter
        self.dtype = dtype
        self.accountant: Accountant | None = None
        self.rank = 0
        self._warned_meter_failure = False
        self._restored_state: dict | None = None
        self.total_steps: int | None = None
        self._projection_records: list[dict] = []
        self._projection_done = True
        self._info: dict = {}
        self._reset_window()

    def annotate(self, **info) -> None:
        """Adds run facts to `run.json`'s `info` (e.g. `moe_twin=`, `training_type=`), now or at the next start."""
        self._info.update(info)
        if self.accountant is not None:
            self.accountant.annotate(**info)

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(
        self,
        *,
        output_dir: str | Path | None = None,
        log_every_n_steps: int = 50,
        world_size: int = 1,
        rank: int = 0,
        info: dict | None = None,
        total_steps: int | None = None,
        num_chips: int | None = None,
    ) -> None:
        """Begins a run: a fresh accountant (or the restored totals), the meter, the first interval.

        Args:
            output_dir: the adapter's default run directory, used when the user gave none. Defaults to `None`.
            log_every_n_steps: the adapter's default interval, used when the user gave none. Defaults to `50`.
            world_size: ranks in the run. Defaults to `1`.
            rank: this process's global rank; only rank 0 writes files. Defaults to `0`.
            info: run facts for the report (model, parameters, FLOP method). Defaults to `None`.
            total_steps: the run's length in steps, when known (Lightning: `trainer.estimated_stepping_batches`).
                After `PROJECT_AFTER` of it, the projected total energy and CO2e is logged once and stored in
                `run.json` under `info["projection"]`. Defaults to `None`: the `total_steps` attribute, if set.
            num_chips: the adapter's chip count (e.g. Keras: accelerator replicas of a `MirroredStrategy`), used
                when the user gave none. Defaults to `None`: one chip per rank.
        """
        self.rank = rank
        if total_steps is not None:
            self.total_steps = check_count("total_steps", total_steps)
        self._projection_records: list[dict] = []
        self._projection_done = False
        self.interval = self.log_every_n_steps or check_count("log_every_n_steps", log_every_n_steps)
        directory = self.output_dir if self.output_dir is not None else output_dir
        self.accountant = Accountant(
            self.site,
            chip=self.chip,
            num_chips=self.num_chips or num_chips or world_size,
            dtype=self.dtype,
            output_dir=directory if rank == 0 else None,
            world_size=world_size,
        )
        if self._restored_state is not None:
            self.accountant.load_state_dict(self._restored_state)
            self._restored_state = None
            self._projection_done = True  # the step log restarts mid-run: no projection for a resumed run
        if self.flops is not None:
            self.accountant.annotate(flops_method="given")
        if info:
            self.accountant.annotate(**info)
        if self._info:
            self.accountant.annotate(**self._info)
        if self.meter is None:
            from carbon_callbacks.meters import create_meter

            self.meter = create_meter(chip=self.chip.name if self.chip else None)
        self._reset_window()
        self._begin_window()
        log.info("carbon-callbacks: site %s, meter %s, rank %d/%d", self.site, type(self.meter).__name__, rank, world_size)

    @property
    def run_dir(self) -> Path | None:
        """Where this rank writes its run files (`None` on ranks other than 0)."""
        return self.accountant.output_dir if self.accountant is not None else None

    @property
    def pending_steps(self) -> int:
        """Steps recorded in the open interval (an adapter syncs the device only when the next one closes it)."""
        return self._steps

    def step_end(
        self,
        *,
        model_flops: float | None = None,
        hardware_flops: float | None = None,
        tokens: float | None = None,
        loss: float | None = None,
        step: int | None = None,
        sync: Callable[[], None] | None = None,
        num_steps: int = 1,
    ) -> bool:
        """Records one finished training step; closes the interval when it is full.

        Args:
            model_flops: this step's model FLOPs (the tracker's `flops=` wins if given). Defaults to `None`.
            hardware_flops: this step's hardware FLOPs. Defaults to `None`.
            tokens: tokens in this step's batch. Defaults to `None`.
            loss: this step's loss, kept for the last step of the interval; a 0-d device array is read only
                when the interval closes, after `sync`. Defaults to `None`.
            step: the framework's global step. Defaults to `None`.
            sync: waits for the device (e.g. `torch.cuda.synchronize`) before the clock and meters are read;
                called only when an interval closes. Defaults to `None`.
            num_steps: training steps this call covers (Keras runs `steps_per_execution` steps per call);
                `model_flops`, `hardware_flops` and `tokens` are then their sums. Defaults to `1`.

        Returns:
            True when an interval closed, i.e. fresh metrics are ready to log.
        """
        if self.flops is not None:
            model_flops = self.flops * num_steps
            hardware_flops = hardware_flops if hardware_flops is not None else model_flops
        self._steps += num_steps
        if model_flops is not None:
            self._model_flops = (self._model_flops or 0.0) + model_flops
        if hardware_flops is not None:
            self._hardware_flops = (self._hardware_flops or 0.0) + hardware_flops
        if tokens is not None:
            self._tokens = (self._tokens or 0.0) + tokens
        self._loss, self._step = loss, step
        if self._steps < self.interval:
            return False
        self.close_interval(sync=sync)
        return True

    def close_interval(self, sync: Callable[[], None] | None = None) -> None:
        """Reads the meter for the steps since the last interval and adds them to the accountant."""
        if self._steps == 0 or self.accountant is None:
            return
        if sync is not None:
            sync()
        measurement = self._end_window()
        record = self.accountant.update(
            seconds=measurement.seconds,
            energy_j=measurement.energy_j,
            energy_method=measurement.methods,
            model_flops=self._model_flops,
            hardware_flops=self._hardware_flops,
            tokens=self._tokens,
            loss=self._loss,
            step=self._step,
            num_steps=self._steps,
        )
        if not self._projection_done:
            self._projection_records.append(record)
            if self.accountant.world_size == 1:
                self._maybe_project()
        self._reset_window()
        self._begin_window()

    def sync(self, reduce_sum: Callable[[Sequence[float]], Sequence[float]], world_size: int) -> None:
        """Sums the ranks' totals with the framework's collective `reduce_sum` (called on every rank)."""
        summed = reduce_sum(self.accountant.local_totals())
        self.accountant.set_global_totals(dict(zip(REDUCED_FIELDS, summed)), world_size)
        if not self._projection_done:
            self._maybe_project()

    def metrics(self) -> dict[str, float]:
        """The `carbon/*` metrics as of the last closed interval."""
        return self.accountant.metrics() if self.accountant is not None else {}

    def finish(self, status: str = "finished", sync: Callable[[], None] | None = None) -> dict | None:
        """Closes the last interval, the meter and the run files; returns the summary (`None` if never started)."""
        if self.accountant is None:
            return None
        try:
            self.close_interval(sync=sync)
        finally:
            summary = self.accountant.close(status)
        return summary

    def close_meter(self) -> None:
        """Releases the meter's sensors (after `finish`)."""
        if self.meter is not None:
            try:
                self.meter.close()
            except Exception as err:  # a sensor's shutdown must not fail the user's run
                log.warning("carbon-callbacks: closing the meter failed: %s", err)

    # ------------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        """The accountant's totals (closing the open interval first), for the framework's checkpoint."""
        if self.accountant is None:
            return dict(self._restored_state or {})
        self.close_interval()
        return self.accountant.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continues from `state_dict()` totals: applied now if running, else at the next `start`."""
        if not state:
            return
        if self.accountant is not None and self.accountant.status == "running":
            self.accountant.load_state_dict(state)
        else:  # not started, or a finished run whose instance is reused: the next start continues from it
            self._restored_state = dict(state)

    # ------------------------------------------------------------------------------------------- projection
    def _maybe_project(self) -> None:
        """Once `PROJECT_AFTER` of a run of known length (and 3 intervals) is done, logs the projected total once."""
        acct = self.accountant
        if (
            self.total_steps is None
            or acct.steps < PROJECT_AFTER * self.total_steps
            or acct.steps >= self.total_steps
            or len(self._projection_records) < 3  # the first is warm-up: at least two steady ones
        ):
            return
        self._projection_done = True
        records, self._projection_records = self._projection_records, []
        try:
            from carbon_callbacks._reports.projection import project

            projection = project(
                records,
                self.total_steps,
                gross_kg_per_kwh=acct.site.gross_kg_per_kwh,
                net_kg_per_kwh=acct.site.net_kg_per_kwh,
            ).to_dict()
            local_kwh = sum(r["step_energy_kwh"] for r in records)
            global_kwh = acct.metrics()["carbon/energy_kwh"]
            if acct.world_size > 1 and local_kwh > 0:  # the records are this rank's; scale to all ranks
                scale = global_kwh / local_kwh
                for key, value in projection.items():
                    if isinstance(value, float) and ("kwh" in key or "co2e" in key):
                        projection[key] = value * scale
                projection["method"] += f"; scaled to {acct.world_size} ranks by their summed energy"
        except Exception as err:  # a projection must never stop training
            log.warning("carbon-callbacks: the projection failed: %s", err)
            return
        acct.annotate(projection=projection)
        if self.rank == 0:
            log.info(
                "carbon-callbacks: projected after %d of %d steps: %.4g kWh [%.4g, %.4g], %.4g kg CO2e gross",
                projection["steps_observed"], self.total_steps, projection["energy_kwh"],
                projection["energy_kwh_low"], projection["energy_kwh_high"], projection["gross_co2e_kg"],
            )

    # ------------------------------------------------------------------------------------------- internals
    def _reset_window(self) -> None:
        self._steps = 0
        self._model_flops: float | None = None
        self._hardware_flops: float | None = None
        self._tokens: float | None = None
        self._loss: float | None = None
        self._step: int | None = None
        self._window_start = time.perf_counter()

    def _begin_window(self) -> None:
        self._window_start = time.perf_counter()
        try:
            self.meter.begin_window(_WINDOW)
            self._window_open = True
        except Exception as err:
            self._window_open = False
            self._warn_meter_failure(err)

    def _end_window(self):
        seconds = time.perf_counter() - self._window_start
        if self._window_open:
            try:
                return self.meter.end_window(_WINDOW)
            except Exception as err:
                self._warn_meter_failure(err)
        return self._fallback_measurement(seconds)

    def _fallback_measurement(self, seconds: float):
        """A labelled TDP x time estimate for a window whose meter failed."""
        chip = self.chip or get_chip("cpu")
        watts = chip.tdp_w or 0.0
        component = {"gpu": "gpu", "tpu": "tpu"}.get(chip.kind, "cpu")
        return Measurement(
            seconds=seconds,
            energy_j={component: watts * seconds},
            methods={component: f"modeled:tdp-fallback({chip.name})"},
        )

    def _warn_meter_failure(self, err: Exception) -> None:
        if not self._warned_meter_failure:
            self._warned_meter_failure = True
            warnings.warn(
                f"carbon-callbacks: the energy meter failed ({type(err).__name__}: {err}); windows it cannot "
                "measure are estimated from the chip's TDP and labelled 'modeled:tdp-fallback'. "
                "Training continues.",
                RuntimeWarning,
                stacklevel=3,
            )

