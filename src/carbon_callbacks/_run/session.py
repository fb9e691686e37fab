"""One training run, whatever the framework: everything an adapter does that is not a framework hook.

An adapter (Lightning, Keras, Flax, the Hugging Face Trainer) gives `start` its framework's pieces (the model,
the default run folder, the device sync, the collective, the ranks) and then maps its hooks onto `count`,
`step_end`, `close_interval`, `finish` and `state_dict`. The session owns the run policy: the FLOP source and its
per-shape cache, when an interval closes (and, only then, the device sync, the meter reading and the sum across
ranks), the metric keys every adapter logs, the run folder and its record (`carbon_callbacks._record`: claimed
atomically, resumed or forked, written in batches, never raising), the exception-to-status mapping, how the run
ends with the process (`lifecycle`: signals and exit), the meter's lifecycle and checks (`CheckedMeter`), and the
report printed once.

Per step the session adds a few numbers in memory. Reading the run (`summary`, `state_dict`) never changes it:
the steps since the last interval are measured into the open interval, which still closes where it would have.
Every rank enters the same collectives in the same order, whatever fails on it: a local failure is reported after
the collective, never instead of it.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from carbon_callbacks._compat.ray import train_run
from carbon_callbacks._errors import InvalidInputError, check_count, check_number
from carbon_callbacks._host import Host, from_launcher
from carbon_callbacks._record.opening import Place, open_store
from carbon_callbacks._record.store import RunStore
from carbon_callbacks._reports.projection import ProjectionSample
from carbon_callbacks._run import lifecycle
from carbon_callbacks._run.accountant import REDUCED_FIELDS, Accountant
from carbon_callbacks._run.interval import OpenInterval
from carbon_callbacks._run.step_flops import BatchPass, StepFlops, StepFlopsSource
from carbon_callbacks._site.site import resolve_site
from carbon_callbacks._site.tables import Chip, get_chip
from carbon_callbacks._site.trace import IntensityTrace
from carbon_callbacks._warnings import strict, warn_once
from carbon_callbacks.meters._checked import CheckedMeter

log = logging.getLogger(__name__)

#: Share of a run of known length after which the projection of its total is logged once.
PROJECT_AFTER = 0.2
#: The metrics every adapter logs, in this order; `carbon/flops` and `carbon/mfu` only when they can be known.
METRIC_KEYS = ("carbon/energy_kwh", "carbon/co2e_kg", "carbon/co2e_net_kg", "carbon/flops", "carbon/step_time_s",
               "carbon/mfu")


#: Fault counts summed over ranks beside the totals: windows estimated, and their seconds.
_FAULT_FIELDS = ("fault_windows", "fault_seconds")


def status_for(exception: BaseException | None, signalled: bool = False) -> str:
    """The run status an ending leaves in `run.json`: `finished`, `interrupted` (a signal: SIGTERM, Ctrl-C) or
    `failed`. Lightning raises its `SIGTERMException` (a `SystemExit`) for SIGTERM."""
    if exception is None:
        return "finished"
    interrupted = signalled or isinstance(exception, KeyboardInterrupt) or \
        type(exception).__name__ == "SIGTERMException"
    return "interrupted" if interrupted else "failed"


def status_at_exit(signum: int | None) -> str:
    """The status of a run its process ends (`lifecycle`): `interrupted` by a signal, else `failed` (the interpreter
    exits with the run open: training raised past the framework's end hook)."""
    return "interrupted" if signum is not None else "failed"


def guarded(hook: Callable) -> Callable:
    """Decorates an adapter method (on an object with a `session`) so a failure in it warns once per hook and
    returns `None` instead of reaching the training loop; in strict mode (`CARBON_CALLBACKS_STRICT=1`) it raises."""

    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception as err:  # our bookkeeping must never end the user's training
            self.session.hook_failed(hook.__name__, err)
            return None

    return wrapper


def _bookkeeping(method: Callable) -> Callable:
    """Marks a session method as bookkeeping: a signal that arrives while the main thread is inside it is handled
    when it returns (`lifecycle`), so a run is never ended half-updated."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if threading.get_ident() != lifecycle.MAIN_THREAD:
            return method(self, *args, **kwargs)
        self._busy += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            self._busy -= 1
            if not self._busy and self._pending_signal is not None:
                pending, self._pending_signal = self._pending_signal, None
                lifecycle.deliver(*pending)

    return wrapper


class RunSession:
    """Turns a training loop's steps into `carbon/*` metrics, a run folder and a report.

    The keyword arguments are the ones every adapter takes (see the README's "Use" section).

    Args:
        region: a name from the regions table. Defaults to `None`.
        intensity: gross grid intensity, kg CO2e/kWh, or one varying in time: a trace CSV's path (an Electricity
            Maps export or `timestamp,kg_per_kwh`), a pandas Series, a `read_trace(...)` (see `resolve_site`).
            Defaults to `None`. One of `region`/`intensity` is required.
        net_intensity: net intensity, kg CO2e/kWh, or a trace. Defaults to `None` (the region's, else the gross
            one).
        pue: power usage effectiveness. Defaults to `None` (the provider's, else the industry average, labelled).
        chip: the accelerator, a name from the chips table (for MFU and modeled power). Defaults to `None`.
        num_chips: chips in the whole run. Defaults to `None`: the adapter's count, else one per rank.
        output_dir: where `run.json` and `steps.csv` are written (by rank 0). A folder that already holds a run
            gets a new timestamped subfolder instead. Defaults to `None`: the adapter's (one folder per run).
        log_every_n_steps: steps per logging interval. Defaults to `None`: the adapter's (its framework's).
        flops: model FLOPs per training step, given by the user; overrides counting. Defaults to `None`.
        meter: a `carbon_callbacks.meters` meter, owned by the caller. Its readings are checked, and it is read on
            a worker thread with a timeout unless its class sets `reads_may_block = False` (see
            `carbon_callbacks.meters._checked`). Defaults to `None`: one made per run (the adapter's or
            `create_meter`) and closed at its end.
        nvml: meter NVIDIA GPUs through NVML when a default meter is made. Defaults to `True`.
        rapl: meter the CPU through RAPL when a default meter is made; `False` models it (TDP x utilisation)
            without a warning. Defaults to `True`.
        dtype: dtype whose dense peak defines MFU. Defaults to `"bf16"`.
        training_type: what the run is, for the model card (`"pre-training"`, `"fine-tuning"`, ...). Defaults to
            `None`.
        continue_runs: a later run with the same callback (a second `fit`) continues this one: same folder, totals
            carried on. Defaults to `False`: every run has a folder and totals of its own.

    Raises:
        InvalidInputError: at construction, for a missing location or an unusable number.
        UnknownNameError: for a region or chip not in the tables.
    """

    def __init__(
        self,
        *,
        region: str | None = None,
        intensity: float | str | IntensityTrace | None = None,
        net_intensity: float | str | IntensityTrace | None = None,
        pue: float | None = None,
        chip: str | None = None,
        num_chips: int | None = None,
        output_dir: str | Path | None = None,
        log_every_n_steps: int | None = None,
        flops: float | None = None,
        meter=None,
        nvml: bool = True,
        rapl: bool = True,
        dtype: str = "bf16",
        training_type: str | None = None,
        continue_runs: bool = False,
    ) -> None:
        self._site = resolve_site(region=region, intensity=intensity, net_intensity=net_intensity, pue=pue)
        if self._site.traced:
            self._site.check_start(time.time())
        self._chip: Chip | None = get_chip(chip) if chip is not None else None
        self._num_chips = check_count("num_chips", num_chips) if num_chips is not None else None
        self._output_dir = Path(output_dir) if output_dir is not None else None
        self._log_every = check_count("log_every_n_steps", log_every_n_steps) if log_every_n_steps else None
        given = check_number("flops", flops, non_negative=True) if flops is not None else None
        self._dtype = dtype
        self._user_meter = meter
        self._meter: CheckedMeter | None = None
        self._sensors = {"nvml": bool(nvml), "rapl": bool(rapl)}
        self._continue_runs = bool(continue_runs)
        self._info: dict = {"training_type": training_type} if training_type else {}
        self._accountant: Accountant | None = None
        self._store = RunStore()
        #: Whether a run is open (between `start` and `finish`). Read it, never set it: a plain attribute, as the
        #: adapters read it on every step, where a property's call costs a microsecond or two.
        self.running = False
        self._rank, self._world_size, self._interval = 0, 1, self._log_every or 1
        self._total_steps: int | None = None
        self._device_sync: Callable[[Any], None] | None = None
        self._reduce_sum: Callable[[Sequence[float]], Sequence[float]] | None = None
        self._end: Callable[[int | None], Any] | None = None
        self._finished: dict | None = None
        self._metrics: dict[str, float] = {}
        self._warned: set[str] = set()
        self._restored: dict | None = None
        self._final_state: dict | None = None
        self._synced_local: list[float] | None = None
        self._global_totals: list[float] | None = None
        self._projection: ProjectionSample | None = None
        self._busy = 0  # depth of bookkeeping calls on the main thread
        self._pending_signal: tuple[int, Any] | None = None
        self._signalled: int | None = None
        self._ray = None  # the Ray Train run this process is a worker of, if any
        self._flops = StepFlopsSource(given, self.warn, lambda **facts: self._accountant.annotate(**facts))
        self._open = OpenInterval()
        #: Records one training step that closes no interval and brings nothing but its passes (the per-step path of
        #: the adapters whose framework says which steps log; `step_end` with `close=False` otherwise):
        #: `add_step((passes, 1, logger_step))`, the passes as `step_end` takes them. It is the open interval's own
        #: list append: no Python call per step (microseconds with a training step's caches), no signal splits it.
        self.add_step: Callable[[tuple[Sequence[BatchPass], int, int | None]], None] = self._open.entries.append

    # ------------------------------------------------------------------------------------------- reading
    @property
    def run_dir(self) -> Path | None:
        """Where this rank writes its run files (`None` on ranks other than 0 or when they cannot be written)."""
        return self._store.folder

    @property
    def signalled(self) -> bool:
        """Whether the process received SIGTERM or SIGINT while this run was open."""
        return self._signalled is not None

    def ending_status(self, exception: BaseException | None) -> str:
        """The status of a run that ends with `exception` (`None`: training completed); see `status_for`."""
        return status_for(exception, self.signalled)

    @property
    def interval(self) -> int:
        """Steps per logging interval of the current run."""
        return self._interval

    @property
    def metrics(self) -> dict[str, float]:
        """The `carbon/*` values to log now: the same keys from the run's start (NaN until measured).

        `carbon/energy_kwh`, `carbon/co2e_kg` and `carbon/co2e_net_kg` are the run's totals at the last closed
        interval; `carbon/step_time_s` and `carbon/mfu` that interval's; `carbon/flops` the last step's model
        FLOPs. After `finish`, the run's final totals (equal to `run.json`).
        """
        last = self._open.last_step()
        if last is not None and "carbon/flops" in self._metrics:  # the last step's, worked out when read
            batches, num_steps = last
            known = [p.figures.model_flops * p.scale for p in batches
                     if p.figures is not None and p.figures.model_flops is not None]
            if known:
                self._metrics["carbon/flops"] = sum(known) / num_steps
        return dict(self._metrics)

    @property
    def model_config(self):
        """The `TransformerConfig` this run's model FLOPs come from, when its model has one the analytic count
        knows (`None` otherwise): generation inside steps is counted from it."""
        return self._flops.config

    @property
    def finished_summary(self) -> dict | None:
        """The last finished run's `run.json` content (`None` before the first run ends)."""
        return self._finished

    def params(self) -> dict[str, Any]:
        """The run's facts for a logger's hyperparameters: site, chip, chips, version; once the run has ended, how
        its energy and FLOPs were obtained too.

        The methods are final only at the end (a count of new lengths, a meter that fell back, change them), and
        trackers such as MLflow refuse a parameter whose value changes: log these again at the end.
        """
        from carbon_callbacks import __version__

        site, summary = self._site, self.summary() or {}
        params = {
            "carbon/region": site.region or "none (intensity given)",
            "carbon/gross_kg_per_kwh": site.gross_kg_per_kwh if site.gross_trace is None else site.gross_source,
            "carbon/net_kg_per_kwh": site.net_source if site.net_varies else site.net_kg_per_kwh,
            "carbon/pue": site.pue,
            "carbon/chip": self._chip.name if self._chip is not None else "none",
            "carbon/num_chips": summary.get("num_chips"),
            "carbon/version": __version__,
        }
        if not self.running and self._finished is not None:
            params["carbon/energy_method"] = summary.get("energy_method") or "not measured"
            params["carbon/flops_method"] = summary.get("info", {}).get("flops_method") or "not counted"
        return params

    def summary(self) -> dict | None:
        """The `run.json` content up to the last completed step (the final one after `finish`).

        The steps since the last interval are included, measured into the open interval: reading never closes
        or splits an interval.
        """
        if self._finished is not None and not self.running:
            return self._finished
        if self._accountant is None:
            return None
        return self._summary(self._with_pending())

    # ------------------------------------------------------------------------------------------- warnings
    def warn(self, key: str, message: str) -> None:
        """Warns `message` the first time `key` is seen in this run, at the user's line."""
        warn_once(key, message, seen=self._warned)
        log.debug("carbon-callbacks: %s", message)

    def hook_failed(self, where: str, err: Exception) -> None:
        """Reports a failure inside an adapter hook (or a local one held back until after a collective): raised in
        strict mode (`CARBON_CALLBACKS_STRICT=1`), else warned once per `where`, and training goes on (`guarded`)."""
        if strict():
            raise err
        self.warned_failure(where, err)

    def warned_failure(self, where: str, err: Exception) -> None:
        """Warns once per `where` of a failure that training goes on after, even in strict mode."""
        log.debug("carbon-callbacks: %s failed", where, exc_info=err)
        self.warn(f"hook:{where}", f"carbon-callbacks: {where} failed ({type(err).__name__}: {err}); training "
                  "continues, but the carbon figures of this run may miss the affected steps.")

    def annotate(self, **info) -> None:
        """Adds run facts to `run.json`'s `info` (e.g. `moe_twin=`, `training_type=`), now or at the next start."""
        self._info.update(info)
        if self._accountant is not None:
            self._accountant.annotate(**info)

    # ------------------------------------------------------------------------------------------- lifecycle
    @_bookkeeping
    def start(
        self,
        *,
        model: Any = None,
        config: Any = None,
        traceable: bool = True,
        untraceable_reason: str = "",
        default_dir: str | Path | None = None,
        default_parent: str | Path | None = None,
        home: str | Path | None = None,
        log_every_n_steps: int = 50,
        world_size: int = 1,
        rank: int = 0,
        info: dict | None = None,
        total_steps: int | None = None,
        num_chips: int | None = None,
        meter_factory: Callable[..., Any] | None = None,
        device_sync: Callable[[Any], None] | None = None,
        reduce_sum: Callable[[Sequence[float]], Sequence[float]] | None = None,
        trainable: tuple[int, int] | None = None,
        end: Callable[[int | None], Any] | None = None,
        host: Host | None = None,
    ) -> None:
        """Begins a run: the run folder, a fresh accountant (or the restored totals), the FLOP source, the meter.

        A run still open (a previous run that raised before its end) is closed first as `interrupted`.

        Args:
            model: what the framework trains; its `flops_per_batch` attribute or model config choose the FLOP
                source (see `StepFlopsSource`). Defaults to `None`.
            config: a model config the adapter found elsewhere (e.g. in a Flax step's arguments), used when
                `model` carries none. Defaults to `None`.
            traceable: whether the adapter can trace this model's step. Defaults to `True`.
            untraceable_reason: why not, for the warning. Defaults to `""`.
            default_dir: the adapter's run folder, used when the user gave no `output_dir` (a logger's version
                folder, the logger's run id). Defaults to `None`.
            default_parent: without either, a new timestamped folder goes under this one. Defaults to `None`:
                `./carbon-runs`.
            home: a run resumed from a checkpoint continues the checkpoint's folder only inside this one (the
                user's `output_dir` wins); else it forks (see `carbon_callbacks._record.opening`). Defaults to
                `None`: anywhere.
            log_every_n_steps: the adapter's default interval, used when the user gave none. Defaults to `50`.
            world_size: ranks in the run. Defaults to `1`.
            rank: this process's global rank; only rank 0 writes files and prints. Defaults to `0`.
            info: run facts for the report (framework, model, parameters). Defaults to `None`.
            total_steps: the run's length in steps, when known; after `PROJECT_AFTER` of it the projected total is
                logged once and stored under `info["projection"]`. Defaults to `None`.
            num_chips: the adapter's chip count, used when the user gave none. Defaults to `None`: one per rank.
            meter_factory: builds this run's meter when the user gave none, from `create_meter`'s `chip`, `nvml`,
                `rapl` and `host` keywords. Defaults to `None`: `create_meter`.
            device_sync: waits for the device, given the outputs passed to `step_end`; called only before the
                meter is read. Defaults to `None`.
            reduce_sum: the framework's collective summing a list of floats over ranks (called on every rank at
                every interval close and at a finished end). Defaults to `None`.
            trainable: (parameters that train, all parameters); with some frozen, the model FLOPs come from the
                traced step instead of the model config (see `StepFlopsSource.reset`). Defaults to `None`.
            end: ends the run when the process does, given the signal (`None`: the interpreter's exit), with
                whatever the adapter adds (the loggers' last row). Defaults to `None`: `finish`, as
                `interrupted` on a signal and `failed` at exit (see `lifecycle`).
            host: this process's host, its place on it and the devices it drives (`carbon_callbacks._host`), from
                the framework: the meter reads the host's counters in its leader only, and the GPUs it drives.
                Defaults to `None`: from the launcher's environment.
        """
        if self.running:
            self.finish("interrupted")
        continuing = self._continue_runs and self._finished is not None and self._restored is None
        if continuing:
            self._restored = self._final_state
        self._warned = set()
        self._rank, self._world_size = rank, check_count("world_size", world_size)
        self._total_steps = check_count("total_steps", total_steps) if total_steps is not None else None
        self._interval = self._log_every or check_count("log_every_n_steps", log_every_n_steps)
        self._device_sync, self._reduce_sum = device_sync, reduce_sum
        self._end = end or self._finish_on
        self._synced_local = self._global_totals = None
        self._final_state = self._finished = None
        self._signalled = self._pending_signal = None
        restored, self._restored = self._restored, None
        self._accountant = Accountant(
            self._site,
            chip=self._chip,
            num_chips=self._num_chips or num_chips or world_size,
            dtype=self._dtype,
            world_size=world_size,
        )
        restored = self._restore(restored)
        self._ray = train_run()
        if self._ray is not None and self._ray.storage_dir is not None:  # beside the run's checkpoints
            default_dir, default_parent = None, self._ray.storage_dir / "carbon"
        self._store = self._open_store(default_dir, default_parent, home, restored) if rank == 0 else RunStore()
        self._projection = ProjectionSample() if restored is None and self._total_steps is not None else None
        self._accountant.annotate(**{**(info or {}), **self._info})
        self._flops.reset(model, config=config, traceable=traceable, untraceable_reason=untraceable_reason,
                          trainable=trainable)
        host = host or from_launcher(rank, self._world_size)
        self._accountant.annotate(process=host.describe())
        meter = self._user_meter
        if meter is None:
            if meter_factory is None:
                from carbon_callbacks.meters import create_meter

                meter_factory = functools.partial(create_meter, include_children=host.world == 1)
            meter = meter_factory(chip=self._chip.name if self._chip else None, host=host, **self._sensors)
        self._meter = CheckedMeter(meter, chip=self._chip, warn=self.warn,
                                   devices=max(self._accountant.num_chips // self._world_size, 1))
        keys = [k for k in METRIC_KEYS if k not in ("carbon/flops", "carbon/mfu")]
        if self._flops.can_count:
            keys.insert(3, "carbon/flops")
            if self._accountant.peak_flops is not None:
                keys.append("carbon/mfu")
        self._metrics = dict.fromkeys(keys, math.nan)  # NaN: what a logger shows as "no value yet"
        self.running = True
        self._open.begin(self._meter)
        lifecycle.attach(self)
        self._store.flush(self._summary(self._accountant))  # run.json exists (status running) from the start
        log.info("carbon-callbacks: site %s, meter %s, rank %d/%d, run folder %s", self._site,
                 type(meter).__name__, rank, world_size, self.run_dir)

    def _restore(self, restored: dict | None) -> dict | None:
        """Loads a checkpoint's totals into the new accountant; a state it cannot read starts a new, labelled run."""
        if not restored:
            return None
        try:
            if "unreadable" in restored:
                raise InvalidInputError(restored["unreadable"])
            self._accountant.load_state_dict(restored)
        except InvalidInputError as err:
            self._accountant.annotate(resume=f"the checkpoint's carbon state could not be read ({err}); the totals "
                                      "start at this run's first step")
            self.warn("resume", f"carbon-callbacks: the checkpoint's carbon state could not be read ({err}); this "
                      "run starts new totals in a new folder (run.json info.resume says so).")
            return None
        return restored

    def _open_store(self, default_dir, default_parent, home, restored: dict | None) -> RunStore:
        """The run's folder and record: new, continued from a checkpoint, or forked from one (rank 0)."""
        place = Place(
            output_dir=self._output_dir,
            default_dir=Path(default_dir) if default_dir is not None else None,
            default_parent=Path(default_parent) if default_parent is not None else Path("carbon-runs"),
            home=Path(home) if home is not None else None,
        )
        opened = open_store(place, restored, self.warn, lambda line: print(line, flush=True))
        trimmed = opened.trimmed
        if trimmed.steps:
            self._accountant.annotate(resumed_from={
                "step": int(restored["steps"]),
                "steps_discarded": trimmed.steps,
                "seconds_discarded": trimmed.seconds,
                "energy_kwh_discarded": trimmed.energy_kwh,
                "note": "steps run after the checkpoint and lost with the crash: their records were trimmed from "
                        "the step log and they are not in the totals",
            })
        return opened.store

    @_bookkeeping
    def flush(self) -> None:
        """Writes the run files now (the step log and `run.json`), e.g. at an epoch's end; a crash later loses nothing
        before this point."""
        if self._accountant is not None:
            self._store.flush(self._summary(self._accountant))

    # ------------------------------------------------------------------------------------------- the process
    def defer_signal(self, signum: int, frame) -> bool:
        """Keeps a signal that arrived during the main thread's bookkeeping for when it returns (`lifecycle`)."""
        if self._busy:
            self._pending_signal = (signum, frame)
            return True
        return False

    def take_signal(self, signum: int, *, ends: bool) -> None:
        """The process got `signum`: with `ends`, the run ends now as `interrupted` (the process is about to die of
        the signal); else its files are written and the status of the ending that follows is `interrupted`."""
        self._signalled = signum
        if not self.running:
            return
        if ends:
            self._end(signum)
        else:
            self.flush()

    def end_at_exit(self) -> None:
        """The interpreter exits with the run still open: the adapter's ending (`interrupted` after a signal)."""
        if self.running:
            self._end(self._signalled)

    def _finish_on(self, signum: int | None) -> None:
        self.finish(status_at_exit(signum))

    def counted(self, batch_key: Hashable, *, trains: bool = True):
        """What `count` gave for this batch key already, for one replica (a lookup: the per-step path), or
        `NOT_COUNTED`: `count` is called only then."""
        return self._flops.counted(batch_key, trains)

    def count(
        self,
        batch_key: Hashable,
        trace: Callable[[], Any] | None,
        token_shape: Callable[[], tuple[int, int] | None],
        *,
        replicas: int = 1,
        trace_model: Callable[[], Any] | None = None,
        probe: Callable[[int], Any] | None = None,
        trains: bool = True,
    ) -> StepFlops | None:
        """One pass's FLOPs and token positions for the batch described by `batch_key`, counted once per key.

        Args:
            batch_key: a hashable description of the batch's shapes and dtypes.
            trace: counts one step on this batch (see `StepFlopsSource.for_batch`); `None` when it cannot be traced.
            token_shape: the batch's `(batch, sequence)` of token ids, or `None`.
            replicas: replicas that each run this batch (the count is of one); given FLOPs are already global.
                Defaults to `1`.
            trace_model, probe, trains: see `StepFlopsSource.for_batch`.
        """
        figures = self._flops.for_batch(batch_key, trace, token_shape, trace_model=trace_model, probe=probe,
                                        trains=trains)
        if figures is None or replicas == 1 or self._flops.fixed is not None:
            return figures
        return figures.times(replicas)

    @_bookkeeping
    def step_end(
        self,
        *,
        flops: StepFlops | None = None,
        real_tokens: Any = None,
        batches: Sequence[BatchPass] | None = None,
        generation: tuple[float | None, float] | None = None,
        loss: Any = None,
        step: int | None = None,
        num_steps: int = 1,
        outputs: Any = None,
        close: bool | None = None,
        epoch: int | None = None,
    ) -> dict[str, float] | None:
        """Records finished training steps; closes the interval on a logging step.

        Args:
            flops: FLOPs and token positions of the `num_steps` steps together, for one batch. Defaults to `None`.
            real_tokens: with `flops`, the real tokens of each of its sequences (`sequence_lengths`: a device vector
                read only when the interval closes) or their total. Defaults to `None`: every position is a token.
            batches: the passes of the steps, each with its figures and lengths, in place of `flops` and
                `real_tokens` (several micro-batches, a reference model's forward). Defaults to `None`.
            generation: `(FLOPs, tokens)` generated inside these steps (GRPO, online DPO), FLOPs `None` when not
                counted. Defaults to `None`: no generation.
            loss: the last step's loss; a device scalar is read only when the interval closes. Defaults to `None`.
            step: the step number the framework's logger uses for this row. Defaults to `None`.
            num_steps: training steps this call covers (Keras runs `steps_per_execution` per call). Defaults to `1`.
            outputs: what `device_sync` waits on when the interval closes (the step's outputs). Defaults to `None`.
            close: whether this is a logging step, as the framework decides (Lightning's `log_every_n_steps`).
                Defaults to `None`: every `interval` steps.
            epoch: the epoch this row belongs to, where the framework logs per epoch. Defaults to `None`.

        Returns:
            The fresh `metrics` when an interval closed, else `None`.
        """
        if batches is None:
            batches = () if flops is None and real_tokens is None else (BatchPass(flops, real_tokens),)
        self._open.add(batches, generation, loss, step, outputs, num_steps)
        if not (self._open.steps >= self._interval if close is None else close):
            return None
        return self.close_interval(epoch=epoch)

    @_bookkeeping
    def close_interval(self, *, epoch: int | None = None) -> dict[str, float] | None:
        """Closes the open interval now (e.g. at an epoch's end): device sync, meter reading, sum over ranks.

        Returns:
            The fresh `metrics`, or `None` when no step was pending.
        """
        if self._open.steps == 0 or self._accountant is None or not self.running:
            return None
        failure, record = None, None
        try:
            self._open.measure(self._device_sync)
            record = self._accountant.update(**self._open.observation(), epoch=epoch)
        except Exception as err:  # reported after the collective, which every rank must enter
            failure = err
        finally:
            self._open.reset()
        if self._world_size > 1 and self._reduce_sum is not None:
            self._sync(self._reduce_sum)
        if failure is not None:
            self.hook_failed("closing an interval", failure)
            return None
        self._refresh_metrics()
        traces = (self._site.gross_trace, self._site.net_trace)
        if self._accountant.outside_trace_kwh and any(t is not None and t.outside == "error" for t in traces):
            self.warn("trace-outside", "carbon-callbacks: the run went past its intensity trace's span; the "
                      "region's annual figure (else the trace's average) stands in there, in run.json's "
                      "info.intensity_trace.outside_kwh.")
        self._keep(record)
        return self.metrics

    def _keep(self, record: dict) -> None:
        """Hands an interval's record to the store (written when due) and the projection."""
        accountant = self._accountant
        self._store.add(record, accountant.steps - record["num_steps"] + 1, accountant.steps)
        if self._store.due(record["seconds"]):
            self._store.flush(self._summary(accountant))
        if self._projection is not None:
            self._projection.add(record)
            self._maybe_project()

    @_bookkeeping
    def finish(self, status: str = "finished") -> dict | None:
        """Ends the run: the last interval, the ranks' sum, the run files, the report (rank 0), the meter.

        Whatever fails on the way (a meter, a full disk), the run ends: its summary is kept in memory, the report is
        printed and the meter closed.

        Args:
            status: `"finished"`, `"interrupted"` or `"failed"` (see `status_for`). Only a finished run sums over
                ranks with the collective (after an exception other ranks may be gone): otherwise the last global
                totals plus this rank's work since. Defaults to `"finished"`.

        Returns:
            The run's summary (the content of `run.json`), or `None` when no run was open.
        """
        if not self.running:
            return None
        accountant, failure = self._accountant, None
        try:
            if self._open.steps:
                self._open.measure(self._device_sync)
                self._store.add(accountant.update(**self._open.observation()),
                                accountant.steps - self._open.steps + 1, accountant.steps)
        except Exception as err:  # reported after the collective, which every rank must enter
            failure = err
        try:
            if self._world_size > 1:
                if status == "finished" and self._reduce_sum is not None:
                    self._sync(self._reduce_sum)
                elif self._global_totals is not None:
                    now = self._local_totals()
                    estimate = [g + n - s for g, n, s in zip(self._global_totals, now, self._synced_local)]
                    self._set_global(estimate)
                    self._synced_local = now
        except Exception as err:
            failure = failure or err
        finally:
            self.running = False
            self._open.reset()
            lifecycle.detach(self)
            accountant.close(status)
            self._finished = self._summary(accountant)
            self._final_state = self._with_global_shares(accountant.state_dict())
            self._refresh_metrics()
            self._close_meter()
            self._end_record()
        if self._ray is not None and status == "finished":  # the result's last metrics: the totals (every worker)
            try:
                self._ray.report(self.metrics)
            except Exception as err:
                failure = failure or err
        if failure is not None:
            self.hook_failed("closing the last interval", failure)
        return self._finished

    def _end_record(self) -> None:
        """The run files and the report (rank 0): written where they can be, printed in any case."""
        store = self._store
        written = store.flush(self._finished)
        self._finished = store.stamp(self._finished)
        store.close()
        if self._rank != 0:
            return
        from carbon_callbacks._reports.report import format_report, render_markdown, report_of

        where = store.folder
        if where is not None:
            store.write_report(render_markdown(report_of(self._finished, where)) + "\n")
        tail = "" if where is None else f"\nrun files: {where}" + ("" if written else " (not all could be written)")
        print(format_report(self._finished) + tail, flush=True)

    def _close_meter(self) -> None:
        """Stops the meter's checks and closes a meter this session made (a user's meter is the user's to close);
        the checked meter stays, for its fault counts."""
        try:
            self._meter.close(close_inner=self._user_meter is None)
        except Exception as err:  # a sensor's shutdown must not fail the user's run
            log.warning("carbon-callbacks: closing the meter failed: %s", err)

    def _refresh_metrics(self) -> None:
        """Takes the accountant's totals into `metrics`, keeping every key of the run's schema."""
        fresh = self._accountant.metrics()
        fresh.pop("carbon/flops", None)  # the last step's own count, kept per step
        for key in self._metrics:
            if key in fresh:
                self._metrics[key] = fresh[key]

    # ------------------------------------------------------------------------------------------- resume
    @_bookkeeping
    def state_dict(self) -> dict:
        """The run's totals and folder for a checkpoint, so a resumed run continues them in the same folder.

        Includes the steps since the last interval (measured into the open interval, which is not split; its record
        travels as `pending_record`, so a resume writes it). Under several ranks the additive totals are summed with
        the collective (call on every rank, which always enters it) and stored as an equal share per rank, so a
        resume with the same world size continues the global totals exactly.
        """
        if not self.running:
            return dict(self._restored or self._final_state or {})
        failure, accountant = None, self._accountant
        try:
            accountant = self._with_pending()
        except Exception as err:  # reported after the collective, which every rank must enter
            failure = err
        summed = None
        if self._world_size > 1 and self._reduce_sum is not None:
            summed = [float(v) for v in self._reduce_sum(self._local_totals(accountant))]
        if failure is not None:
            self.hook_failed("saving the state", failure)
        state = self._with_global_shares(accountant.state_dict(), summed)
        if accountant.pending_record is not None:
            state["pending_record"] = accountant.pending_record
        return state

    def load_state_dict(self, state: dict | str) -> None:
        """Continues from `state_dict()` totals and folder at the next `start` (frameworks restore before training).

        A state that cannot be used (not a dict, another schema, cut short; or a string saying why it could not be
        read) starts a new run at the next `start` instead, labelled in `run.json`'s `info.resume` and warned.
        """
        if state:
            self._restored = dict(state) if isinstance(state, dict) else {"unreadable": str(state)}

    def _with_global_shares(self, state: dict, global_totals: Sequence[float] | None = None) -> dict:
        """`state` with each additive total replaced by its equal share of the global (summed) totals, and the
        run's folder, id and parent."""
        totals = self._global_totals if global_totals is None else global_totals
        if self._world_size > 1 and totals is not None:
            named = dict(zip(REDUCED_FIELDS, (v / self._world_size for v in totals)))
            state["energy_j"] = {k[len("energy_j_"):]: v for k, v in named.items() if k.startswith("energy_j_")}
            for key in (k for k in REDUCED_FIELDS if not k.startswith("energy_j_")):
                if state.get(key) is not None:
                    state[key] = named[key]
        if self.run_dir is not None:
            state["run_dir"] = str(self.run_dir)
        state["run_id"], state["parent"] = self._store.run_id, self._store.parent
        return state

    # ------------------------------------------------------------------------------------------- ranks
    def _local_totals(self, accountant: Accountant | None = None) -> list[float]:
        """This rank's additive totals (`REDUCED_FIELDS`), then its meter's faults (`_FAULT_FIELDS`)."""
        meter = self._meter
        return [*(accountant or self._accountant).local_totals(), float(meter.fault_windows), meter.fault_seconds]

    def _set_global(self, summed: list[float]) -> None:
        self._global_totals = summed
        self._accountant.set_global_totals(dict(zip(REDUCED_FIELDS, summed)), self._world_size)

    def _sync(self, reduce_sum: Callable[[Sequence[float]], Sequence[float]]) -> None:
        """Sums the ranks' totals with the framework's collective (called on every rank)."""
        local = self._local_totals()
        self._synced_local = local
        self._set_global([float(v) for v in reduce_sum(local)])

    def _summary(self, accountant: Accountant) -> dict:
        """`run.json`'s content: the accountant's summary and the meter's faults (over all ranks when summed)."""
        summary = accountant.summary()
        meter = self._meter
        windows, seconds = float(meter.fault_windows), meter.fault_seconds
        if self._world_size > 1 and self._global_totals is not None:
            windows, seconds = self._global_totals[len(REDUCED_FIELDS):]
        summary["meter_faults"] = {
            "windows": int(windows),
            "seconds": seconds,
            "reasons": dict(meter.faults),
            "method": "windows whose reading was failed, bad or late, estimated and labelled "
                      "(modeled:last-avg-power or modeled:tdp-fallback); reasons as seen by this process",
        }
        return summary

    # ------------------------------------------------------------------------------------------- projection
    def _maybe_project(self) -> None:
        """Once `PROJECT_AFTER` of a run of known length (and 3 intervals) is done, logs the projected total once."""
        acct, sample = self._accountant, self._projection
        if (
            acct.steps < PROJECT_AFTER * self._total_steps
            or acct.steps >= self._total_steps
            or sample.intervals < 3  # the first is warm-up: at least two steady ones
        ):
            return
        self._projection = None
        records = sample.records
        try:
            from carbon_callbacks._reports.projection import project

            projection = project(
                records,
                self._total_steps,
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
        if self._rank == 0:
            log.info(
                "carbon-callbacks: projected after %d of %d steps: %.4g kWh [%.4g, %.4g], %.4g kg CO2e gross",
                projection["steps_observed"], self._total_steps, projection["energy_kwh"],
                projection["energy_kwh_low"], projection["energy_kwh_high"], projection["gross_co2e_kg"],
            )

    # ------------------------------------------------------------------------------------------- the interval
    def _with_pending(self) -> Accountant:
        """The accountant with the open interval's steps added, as a copy (the run itself is not changed)."""
        if not self.running or self._open.steps == 0:
            return self._accountant
        self._open.measure(self._device_sync)
        return self._accountant.preview(**self._open.observation())
