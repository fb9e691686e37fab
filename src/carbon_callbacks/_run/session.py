"""One training run, whatever the framework: everything an adapter does that is not a framework hook.

Adapters (Lightning, Keras, Flax) translate their hooks into `start`, `step_flops`, `step_end`, `sync` and
`finish`, read a batch's shape, trace a step and provide their framework's collective and logger. The session
owns the rest: guarding hooks (a failure warns once and never reaches the training loop), the FLOP source and
per-shape cache, the logging interval, resume state (with per-rank shares under DDP), the exception-to-status
mapping, the meter's lifecycle, the run files and the report printed once.

Per step the session adds a few numbers in memory; meters are read and the accountant updated only when a
logging interval closes, so a short step is never read against a coarse counter.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
import warnings
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from carbon_callbacks._errors import check_count, check_number
from carbon_callbacks._run.accountant import REDUCED_FIELDS, Accountant
from carbon_callbacks._run.step_flops import StepFlops, StepFlopsSource
from carbon_callbacks._site.site import resolve_site
from carbon_callbacks._site.tables import Chip, get_chip
from carbon_callbacks.meters._base import Measurement

log = logging.getLogger(__name__)

_WINDOW = "carbon-callbacks/interval"
#: Share of a run of known length after which the projection of its total is logged once.
PROJECT_AFTER = 0.2


def status_for(exception: BaseException | None) -> str:
    """The run status an ending leaves in `run.json`: `finished`, `interrupted` (Ctrl-C) or `failed`."""
    if exception is None:
        return "finished"
    return "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"


def guarded(hook: Callable) -> Callable:
    """Decorates an adapter method (on an object with a `session`) so a failure in it warns once per hook and
    returns `None` instead of reaching the training loop."""

    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception as err:  # our bookkeeping must never end the user's training
            self.session.hook_failed(hook.__name__, err)
            return None

    return wrapper


class RunSession:
    """Turns a training loop's steps into `carbon/*` metrics, a run directory and a report.

    The keyword arguments are the ones every adapter takes (see the README's adapter section).

    Args:
        region: a name from the regions table. Defaults to `None`.
        intensity: gross grid intensity, kg CO2e/kWh. Defaults to `None`. One of `region`/`intensity` is required.
        net_intensity: net intensity, kg CO2e/kWh. Defaults to `None` (the region's, else the gross one).
        pue: power usage effectiveness. Defaults to `None` (the provider's, else the industry average, labelled).
        chip: the accelerator, a name from the chips table (for MFU and modeled power). Defaults to `None`.
        num_chips: chips in the whole run. Defaults to `None`: the adapter's count, else one per rank.
        output_dir: where `run.json` and `steps.jsonl` are written (by rank 0). Defaults to `None`: the adapter's.
        log_every_n_steps: steps per logging interval. Defaults to `None`: the adapter's (its framework's).
        flops: model FLOPs per training step, given by the user; overrides counting. Defaults to `None`.
        meter: a `carbon_callbacks.meters.Meter`, owned by the caller. Defaults to `None`: one made per run
            (the adapter's or `create_meter`) and closed at its end.
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
        self.dtype = dtype
        self._user_meter = meter
        self.meter = meter
        self.accountant: Accountant | None = None
        self.running = False
        self.rank = 0
        self.world_size = 1
        self.interval = self.log_every_n_steps or 1
        self.total_steps: int | None = None
        self.summary_at_finish: dict | None = None
        self.last_metrics: dict[str, float] = {}
        self._warned: set[str] = set()
        self._info: dict = {}
        self._restored_state: dict | None = None
        self._final_state: dict | None = None
        self._synced_local: list[float] | None = None
        self._global_totals: list[float] | None = None
        self._projection_records: list[dict] = []
        self._projection_done = True
        self.flop_source = StepFlopsSource(self.flops, self.warn_once, lambda **info: self.accountant.annotate(**info))
        self._reset_window()

    # ------------------------------------------------------------------------------------------- warnings
    def warn_once(self, key: str, message: str) -> None:
        """Warns `message` the first time `key` is seen in this run (every adapter's one registry)."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        log.debug("carbon-callbacks: %s", message)

    def hook_failed(self, where: str, err: Exception) -> None:
        """Reports a failure inside an adapter hook once; training goes on (see `guarded`)."""
        log.debug("carbon-callbacks: %s failed", where, exc_info=err)
        self.warn_once(f"hook:{where}", f"carbon-callbacks: {where} failed ({type(err).__name__}: {err}); training "
                       "continues, but the carbon figures of this run may miss the affected steps.")

    def annotate(self, **info) -> None:
        """Adds run facts to `run.json`'s `info` (e.g. `moe_twin=`, `training_type=`), now or at the next start."""
        self._info.update(info)
        if self.accountant is not None:
            self.accountant.annotate(**info)

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(
        self,
        *,
        model: Any = None,
        traceable: bool = True,
        untraceable_reason: str = "",
        output_dir: str | Path | None = None,
        log_every_n_steps: int = 50,
        world_size: int = 1,
        rank: int = 0,
        info: dict | None = None,
        total_steps: int | None = None,
        num_chips: int | None = None,
        meter_factory: Callable[[], Any] | None = None,
    ) -> None:
        """Begins a run: a fresh accountant (or the restored totals), the FLOP source, the meter, the first interval.

        Args:
            model: what the framework trains; its `flops_per_batch` attribute or model config choose the FLOP
                source (see `StepFlopsSource`). Defaults to `None`.
            traceable: whether the adapter can trace this model's step. Defaults to `True`.
            untraceable_reason: why not, for the warning. Defaults to `""`.
            output_dir: the adapter's default run directory, used when the user gave none. Defaults to `None`.
            log_every_n_steps: the adapter's default interval, used when the user gave none. Defaults to `50`.
            world_size: ranks in the run. Defaults to `1`.
            rank: this process's global rank; only rank 0 writes files and prints. Defaults to `0`.
            info: run facts for the report (framework, model, parameters). Defaults to `None`.
            total_steps: the run's length in steps, when known; after `PROJECT_AFTER` of it the projected total is
                logged once and stored under `info["projection"]`. Defaults to `None`: the `total_steps`
                attribute, if set.
            num_chips: the adapter's chip count, used when the user gave none. Defaults to `None`: one per rank.
            meter_factory: builds this run's meter when the user gave none. Defaults to `None`: `create_meter`.
        """
        self._warned = set()
        self.rank, self.world_size = rank, check_count("world_size", world_size)
        if total_steps is not None:
            self.total_steps = check_count("total_steps", total_steps)
        self.interval = self.log_every_n_steps or check_count("log_every_n_steps", log_every_n_steps)
        self._synced_local = self._global_totals = None
        self._final_state = self.summary_at_finish = None
        self.last_metrics = {}
        directory = self.output_dir if self.output_dir is not None else output_dir
        self.accountant = Accountant(
            self.site,
            chip=self.chip,
            num_chips=self.num_chips or num_chips or world_size,
            dtype=self.dtype,
            output_dir=self._writable(directory) if rank == 0 else None,
            world_size=world_size,
        )
        self._projection_records = []
        self._projection_done = self._restored_state is not None  # a resumed step log: no projection
        if self._restored_state is not None:
            self.accountant.load_state_dict(self._restored_state)
            self._restored_state = None
        self.accountant.annotate(**{**(info or {}), **self._info})
        self.flop_source.reset(model, traceable=traceable, untraceable_reason=untraceable_reason)
        if self._user_meter is None:
            if meter_factory is None:
                from carbon_callbacks.meters import create_meter

                meter_factory = functools.partial(create_meter, chip=self.chip.name if self.chip else None)
            self.meter = meter_factory()
        self.running = True
        self._reset_window()
        self._begin_window()
        log.info("carbon-callbacks: site %s, meter %s, rank %d/%d", self.site, type(self.meter).__name__, rank,
                 world_size)

    def _writable(self, directory: str | Path | None) -> Path | None:
        """`directory` if the run files can be written there, else `None` (the run is kept in memory), warned once."""
        if directory is None:
            return None
        path = Path(directory)
        probe = path / f".carbon-callbacks-{uuid.uuid4().hex}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            self.warn_once("output_dir", f"carbon-callbacks: cannot write the run files to {str(path)!r} "
                           f"({type(err).__name__}: {err}); the run is kept in memory and its metrics are still "
                           "logged. Pass output_dir= a writable directory to keep the files.")
            return None
        return path

    @property
    def run_dir(self) -> Path | None:
        """Where this rank writes its run files (`None` on ranks other than 0 or when they cannot be written)."""
        return self.accountant.output_dir if self.accountant is not None else None

    @property
    def peak_flops(self) -> float | None:
        """Dense peak FLOP/s of one chip for MFU (`None`: no chip with a peak for the dtype, or not started)."""
        return self.accountant.peak_flops if self.accountant is not None else None

    def flush(self) -> None:
        """Writes the run files now (step log and `run.json`), e.g. at an epoch's end; a crash later loses nothing
        before this point."""
        if self.accountant is not None:
            self.accountant.flush()

    @property
    def pending_steps(self) -> int:
        """Steps recorded in the open interval."""
        return self._steps

    def step_flops(
        self,
        batch_key: Callable[[], Hashable],
        trace: Callable[[], Any] | None,
        token_shape: Callable[[], tuple[int, int] | None],
    ) -> StepFlops | None:
        """One step's FLOPs and tokens for the batch described by `batch_key()` (see `StepFlopsSource.for_batch`)."""
        return self.flop_source.for_batch(batch_key(), trace, token_shape)

    def step_end(
        self,
        *,
        flops: StepFlops | None = None,
        loss: Any = None,
        step: int | None = None,
        num_steps: int = 1,
        sync: Callable[[], None] | None = None,
        close: bool | None = None,
    ) -> bool:
        """Records finished training steps; closes the interval on a logging step.

        Args:
            flops: FLOPs and tokens of the `num_steps` steps together. Defaults to `None`.
            loss: the last step's loss; a device scalar is read only when the interval closes, after `sync`.
                Defaults to `None`.
            step: the framework's global step. Defaults to `None`.
            num_steps: training steps this call covers (Keras runs `steps_per_execution` per call). Defaults to `1`.
            sync: waits for the device before the clock and meters are read; called only when an interval closes.
                Defaults to `None`.
            close: whether this is a logging step, as the framework decides (Lightning's `log_every_n_steps`).
                Defaults to `None`: every `interval` steps.

        Returns:
            True when an interval closed, i.e. fresh metrics are in `last_metrics`.
        """
        self._steps += num_steps
        if flops is not None:
            if flops.model_flops is not None:
                self._model_flops = (self._model_flops or 0.0) + flops.model_flops
            if flops.hardware_flops is not None:
                self._hardware_flops = (self._hardware_flops or 0.0) + flops.hardware_flops
            if flops.tokens is not None:
                self._tokens = (self._tokens or 0.0) + flops.tokens
        self._loss, self._step = loss, step
        if not (self._steps >= self.interval if close is None else close):
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
        loss = self._loss
        try:
            loss = None if loss is None else float(loss)
        except (TypeError, ValueError):
            loss = None
        try:
            record = self.accountant.update(
                seconds=measurement.seconds,
                energy_j=measurement.energy_j,
                energy_method=measurement.methods,
                model_flops=self._model_flops,
                hardware_flops=self._hardware_flops,
                tokens=self._tokens,
                loss=loss,
                step=self._step,
                num_steps=self._steps,
            )
        finally:
            self._reset_window()
            self._begin_window()
        self.last_metrics = self.accountant.metrics()
        if not self._projection_done:
            self._projection_records.append(record)
            if self.world_size == 1:
                self._maybe_project()

    def sync(self, reduce_sum: Callable[[Sequence[float]], Sequence[float]]) -> None:
        """Sums the ranks' totals with the framework's collective `reduce_sum` (called on every rank)."""
        local = self.accountant.local_totals()
        summed = [float(v) for v in reduce_sum(local)]
        self._synced_local, self._global_totals = local, summed
        self.accountant.set_global_totals(dict(zip(REDUCED_FIELDS, summed)), self.world_size)
        self.last_metrics = self.accountant.metrics()
        if not self._projection_done:
            self._maybe_project()

    def summary(self) -> dict | None:
        """The `run.json` content up to the last completed step (the final one after `finish`)."""
        if self.summary_at_finish is not None:
            return self.summary_at_finish
        if self.accountant is None:
            return None
        self.close_interval()
        return self.accountant.summary()

    def finish(
        self,
        status: str = "finished",
        *,
        sync: Callable[[], None] | None = None,
        reduce_sum: Callable[[Sequence[float]], Sequence[float]] | None = None,
    ) -> dict | None:
        """Ends the run: the last interval, the ranks' sum, the run files, the report (rank 0), the meter.

        Args:
            status: `"finished"`, `"interrupted"` or `"failed"` (see `status_for`). Defaults to `"finished"`.
            sync: waits for the device before the last reading. Defaults to `None`.
            reduce_sum: the framework's collective, when every rank ends here together. Defaults to `None`: with
                several ranks (after an exception, when others may be gone), the last global totals plus this
                rank's work since.

        Returns:
            The run's summary (the content of `run.json`), or `None` when no run was open.
        """
        if not self.running:
            return None
        self.running = False
        try:
            self.close_interval(sync=sync)
            if self.world_size > 1:
                if reduce_sum is not None:
                    self.sync(reduce_sum)
                elif self._global_totals is not None:
                    now = self.accountant.local_totals()
                    estimate = [g + n - s for g, n, s in zip(self._global_totals, now, self._synced_local)]
                    self.accountant.set_global_totals(dict(zip(REDUCED_FIELDS, estimate)), self.world_size)
                    self._global_totals, self._synced_local = estimate, now
        except Exception as err:
            self.hook_failed("closing the last interval", err)
        finally:
            self.summary_at_finish = self.accountant.close(status)
            self._final_state = self._with_global_shares(self.accountant.state_dict())
            self._close_meter()
        if self.rank == 0:
            from carbon_callbacks._reports.report import format_report

            where = self.run_dir
            print(format_report(self.summary_at_finish) + (f"\nrun files: {where}" if where is not None else ""),
                  flush=True)
        return self.summary_at_finish

    def _close_meter(self) -> None:
        """Closes a meter this session made (a user's meter is the user's to close); the next run makes a new one."""
        if self._user_meter is not None or self.meter is None:
            return
        try:
            self.meter.close()
        except Exception as err:  # a sensor's shutdown must not fail the user's run
            log.warning("carbon-callbacks: closing the meter failed: %s", err)
        self.meter = None

    # ------------------------------------------------------------------------------------------- resume
    def state_dict(self, reduce_sum: Callable[[Sequence[float]], Sequence[float]] | None = None) -> dict:
        """The run's totals for a checkpoint, so a resumed run continues them.

        Under several ranks the additive totals are summed (with `reduce_sum`, on every rank) and stored as an
        equal share per rank, so a resume with the same world size continues the global totals exactly.
        """
        if not self.running:
            return dict(self._restored_state or self._final_state or {})
        self.close_interval()
        if reduce_sum is not None and self.world_size > 1:
            self.sync(reduce_sum)
        return self._with_global_shares(self.accountant.state_dict())

    def load_state_dict(self, state: dict) -> None:
        """Continues from `state_dict()` totals: applied now if running, else at the next `start`."""
        if not state:
            return
        if self.running:
            self.accountant.load_state_dict(state)
        else:
            self._restored_state = dict(state)

    def _with_global_shares(self, state: dict) -> dict:
        """`state` with each additive total replaced by its equal share of the last global (summed) totals."""
        if self.world_size == 1 or self._global_totals is None:
            return state
        named = dict(zip(REDUCED_FIELDS, (v / self.world_size for v in self._global_totals)))
        state["energy_j"] = {k[len("energy_j_"):]: v for k, v in named.items() if k.startswith("energy_j_")}
        for key in ("model_flops", "hardware_flops", "tokens"):
            if state.get(key) is not None:
                state[key] = named[key]
        return state

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

    # ------------------------------------------------------------------------------------------- meter windows
    def _reset_window(self) -> None:
        self._steps = 0
        self._model_flops: float | None = None
        self._hardware_flops: float | None = None
        self._tokens: float | None = None
        self._loss: Any = None
        self._step: int | None = None
        self._window_start = time.perf_counter()
        self._window_open = False

    def _begin_window(self) -> None:
        self._window_start = time.perf_counter()
        try:
            self.meter.begin_window(_WINDOW)
            self._window_open = True
        except Exception as err:
            self._warn_meter_failure(err)

    def _end_window(self) -> Measurement:
        seconds = time.perf_counter() - self._window_start
        if self._window_open:
            self._window_open = False
            try:
                return self.meter.end_window(_WINDOW)
            except Exception as err:
                self._warn_meter_failure(err)
        return self._fallback_measurement(seconds)

    def _fallback_measurement(self, seconds: float) -> Measurement:
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
        self.warn_once("meter", f"carbon-callbacks: the energy meter failed ({type(err).__name__}: {err}); windows "
                       "it cannot measure are estimated from the chip's TDP and labelled 'modeled:tdp-fallback'. "
                       "Training continues.")
