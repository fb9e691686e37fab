"""The Lightning adapter: `CarbonCallback` logs energy, CO2e, FLOPs and MFU next to the loss.

Works with `pytorch_lightning` 2.x and the unified `lightning.pytorch`, whichever Trainer the user holds. The
callback only maps Lightning's hooks onto `carbon_callbacks.RunSession`: here are Lightning's hooks, its batches,
its step counting, its collective and its loggers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from carbon_callbacks._compat import lightning as _lightning
from carbon_callbacks._run.batch_plan import BatchReader, batch_pass
from carbon_callbacks._run.session import RunSession, guarded, status_at_exit
from carbon_callbacks._run.step_flops import BatchPass
from carbon_callbacks._site.trace import IntensityTrace
from carbon_callbacks.flops import trainable_fraction
from carbon_callbacks.meters._factory import torch_host

_NAMESPACES = _lightning.installed_namespaces()
import torch  # noqa: E402  (after the check that Lightning, and so torch, is installed)

from carbon_callbacks._compat import torch as _torch  # noqa: E402  (also refuses a torch older than it needs)

__all__ = ["CarbonCallback"]

#: Subfolder of the Trainer's log directory (or root directory) that holds the run folders.
RUN_SUBDIR = "carbon"
#: Interval used when the Trainer writes no logs (`log_every_n_steps=0`) and none was given: the Trainer's own
#: default, https://lightning.ai/docs/pytorch/stable/common/trainer.html#log-every-n-steps .
_FALLBACK_INTERVAL = 50


class CarbonCallback(*_lightning.callback_bases(_NAMESPACES)):
    """Logs `carbon/*` metrics (energy, gross and net CO2e, FLOPs, step time, MFU) through the Trainer's loggers.

    On the steps the Trainer writes logs (its `log_every_n_steps`) the metrics go through one `pl_module.log_dict`
    call, into the same logger rows as the user's loss; between them the callback only adds a few numbers in
    memory. The run's facts (site, chip, methods) go to every logger's hyperparameters. When training ends, or
    raises, every logger gets one last row with the run's totals, equal to `run.json`; global rank 0 prints the
    report and writes `run.json`, `steps.csv` and `report.md`, attached to the MLflow or W&B run.

    Args:
        region, intensity, net_intensity, pue, chip, dtype, flops, meter, nvml, rapl, training_type,
            continue_runs: as every adapter takes them (see `carbon_callbacks.RunSession`); one of
            `region`/`intensity` is required.
        num_chips: chips in the whole run. Defaults to `None`: the Trainer's world size.
        output_dir: where rank 0 writes the run files. Defaults to `None`: `carbon/` inside the logger's version
            folder (CSV, TensorBoard), `carbon/<run id>` under the Trainer's root for MLflow and W&B, else
            `carbon/<timestamp>` there; a folder holding another run is never reused.
        log_every_n_steps: steps per logging interval. Defaults to `None`: the Trainer's `log_every_n_steps`.
        prog_bar: also show the metrics in the progress bar. Defaults to `False`.

    Raises:
        InvalidInputError: at construction, when neither `region` nor `intensity` is given, or for a bad number.
        UnknownNameError: at construction, for a region or chip not in the tables.

    Example:
        >>> import pytorch_lightning as pl
        >>> from carbon_callbacks.lightning import CarbonCallback
        >>> trainer = pl.Trainer(max_steps=100, callbacks=[CarbonCallback(region="us-central1", chip="a100-40gb")])

    Notes:
        How Lightning's hooks, accumulation, strategies and failures map onto the run: `docs/adapters.md`.
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
        prog_bar: bool = False,
    ) -> None:
        super().__init__()
        self.session = RunSession(
            region=region, intensity=intensity, net_intensity=net_intensity, pue=pue, chip=chip, num_chips=num_chips,
            output_dir=output_dir, log_every_n_steps=log_every_n_steps, flops=flops, meter=meter, nvml=nvml,
            rapl=rapl, dtype=dtype, training_type=training_type, continue_runs=continue_runs,
        )
        self.prog_bar = bool(prog_bar)
        self._trainer = None
        self._global_step = 0
        self._optimizer_steps = None  # Lightning's count of optimizer steps (`trainer.global_step`), read per step
        self._every = 1  # steps per logging interval
        self._batches = BatchReader()
        self._known_passes: dict[tuple, BatchPass] = {}  # by batch key: the passes that need only its shapes
        self._logged: dict[str, float] = {}
        self._params_logged: dict | None = None  # the run's facts as the loggers last got them

    @property
    def summary(self) -> dict | None:
        """The last finished run's `run.json` content (`None` before the first run ends)."""
        return self.session.finished_summary

    # ------------------------------------------------------------------------------------------- hooks
    @guarded
    def on_train_start(self, trainer, pl_module) -> None:
        self._trainer = trainer
        self._optimizer_steps = _lightning.optimizer_step_counter(trainer)
        self._global_step = trainer.global_step
        self._logged, self._params_logged, self._known_passes = {}, None, {}
        root = trainer.strategy.root_device
        sharded = _lightning.sharded_strategy(trainer.strategy)
        total_steps = trainer.estimated_stepping_batches
        default_dir, default_parent = _lightning.run_folder(trainer, RUN_SUBDIR)
        self.session.start(
            model=pl_module,
            traceable=pl_module.automatic_optimization and sharded is None,
            trainable=tuple(trainable_fraction(pl_module)),
            untraceable_reason=f"under {sharded} the step is sharded and counting it would step outside the engine;"
            if sharded else "FLOPs of modules with manual optimization are not counted (counting would run an "
            "optimizer step);",
            default_dir=default_dir,
            default_parent=default_parent,
            log_every_n_steps=trainer.log_every_n_steps or _FALLBACK_INTERVAL,
            world_size=int(trainer.world_size),
            rank=int(trainer.global_rank),
            info={
                "framework": _lightning.framework_of(trainer),
                "model": type(pl_module).__name__,
                "params_source": "counted: module parameters",
            },
            total_steps=int(total_steps) if 0 < total_steps < float("inf") else None,
            host=torch_host(root, trainer.local_rank, trainer.global_rank, trainer.world_size, "lightning"),
            device_sync=(lambda _: torch.cuda.synchronize(root)) if root.type == "cuda" else None,
            reduce_sum=self._reduce_sum if trainer.world_size > 1 else None,
            end=lambda signum: self._end(trainer, self.session.finish(status_at_exit(signum)), save=True),
        )
        self._every = self.session.interval

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The per-step path: one call to read the batch, a lookup, one append. `guarded` is written out here, as its
        # wrapper's call would cost as much as the rest, with the caches a training step leaves.
        try:
            session = self.session
            if not session.running:
                return
            key, layout = self._batches.read(batch)  # layout: where the real tokens are (a mask, packed sequences)
            one = self._known_passes.get(key)
            if one is None:  # counted once per batch shape
                one = batch_pass(session, key, batch, batch, layout,
                                 lambda inputs, backward: _lightning.count_step(pl_module, inputs, batch_idx, backward),
                                 self._known_passes)
            # The optimizer stepped on this batch iff the global step moved (not under gradient accumulation).
            # Lightning writes a log row on the batches with global_step % log_every_n_steps == 0, at logger step
            # global_step - 1.
            global_step = self._optimizer_steps.completed
            stepped, self._global_step = global_step != self._global_step, global_step
            if stepped and global_step % self._every == 0:
                self._close(trainer, pl_module, outputs, one, global_step)
            else:
                session.add_step(((one,), 1, global_step - 1))
        except Exception as err:  # our bookkeeping must never end the user's training
            self.session.hook_failed("on_train_batch_end", err)

    def _close(self, trainer, pl_module, outputs, one: BatchPass, global_step: int) -> None:
        """The step that closes an interval: its loss kept, the interval's metrics logged."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        keep_loss = isinstance(loss, torch.Tensor) and loss.numel() == 1  # read as the interval closes
        metrics = self.session.step_end(batches=(one,), loss=loss.detach() if keep_loss else None,
                                        step=global_step - 1, close=True)
        if metrics is not None:
            self._log(trainer, pl_module, metrics)

    @guarded
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._optimizer_steps.completed != trainer.global_step:  # Lightning moved its count: read the property
            self._optimizer_steps = _lightning.optimizer_step_counter(trainer)
        # The epoch's steps since the last row close an interval (every rank: its sum is a collective), so what reads
        # `callback_metrics` at an epoch's end (Ray Train's report callback, a monitor) gets the totals so far.
        metrics = self.session.close_interval(epoch=trainer.current_epoch) if self.session.running else None
        if metrics is not None:
            self._log(trainer, pl_module, metrics, epoch_end=True)

    def _log(self, trainer, pl_module, metrics: dict[str, float], epoch_end: bool = False) -> None:
        """The metrics in the same logger rows as the user's loss (at an epoch's end, its epoch row), and in
        `trainer.callback_metrics` even without a logger; float64, as Lightning would store a Python float as
        float32 and round kg-scale sums to 7 digits."""
        if trainer.log_every_n_steps == 0:
            return
        values = {k: torch.tensor(v, dtype=torch.float64, device=pl_module.device) for k, v in metrics.items()}
        pl_module.log_dict(values, on_step=not epoch_end, on_epoch=epoch_end, prog_bar=self.prog_bar,
                           logger=bool(trainer.loggers), batch_size=1, sync_dist=False)
        self._logged = metrics
        self._log_params(trainer)

    @guarded
    def on_train_end(self, trainer, pl_module) -> None:
        self._end(trainer, self.session.finish())

    @guarded
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Other ranks may be gone: no collective here. Rank 0's last global totals plus its own work since. SIGTERM
        # arrives as Lightning's SIGTERMException: `interrupted`.
        self._end(trainer, self.session.finish(self.session.ending_status(exception)))

    def _end(self, trainer, summary: dict | None, save: bool = False) -> None:
        """The run's totals as every logger's last row, its facts as their params, its files attached (rank 0).
        Lightning saves the loggers after `on_train_end` and `on_exception` (`finalize`); a run ended by a signal
        that Lightning does not see saves them here (`save`)."""
        if summary is None or trainer.global_rank != 0 or trainer.log_every_n_steps == 0:
            return
        final = self.session.metrics
        if not _same(final, self._logged):  # steps since the last row, or the last sum over ranks
            for logger in trainer.loggers:
                logger.log_metrics(final, step=max(trainer.global_step - 1, 0))
        self._log_params(trainer)
        run_dir = self.session.run_dir
        if run_dir is not None:
            from carbon_callbacks._loggers import attach

            for logger in trainer.loggers:
                attach(logger, [run_dir / name for name in ("run.json", "report.md")])
        if save:
            for logger in trainer.loggers:
                logger.save()

    def _log_params(self, trainer) -> None:
        """The run's facts through every logger's `log_hyperparams` (rank 0): at the first row, and at the end those
        that are new (the final methods, `RunSession.params`). Lightning's loggers merge what they get; fewer keys
        cost less (the CSV logger checks each key's YAML before it rewrites the file)."""
        if trainer.global_rank != 0 or self._params_logged is not None and self.session.running:
            return
        logged, params = self._params_logged or {}, self.session.params()
        new = {key: value for key, value in params.items() if key not in logged or logged[key] != value}
        self._params_logged = params
        if new:
            for logger in trainer.loggers:
                logger.log_hyperparams(new)

    # ------------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """The run's totals and folder, saved in Lightning checkpoints so a resumed fit continues them.

        Under DDP the additive totals are summed over ranks and stored as an equal share per rank, so a resume
        with the same world size continues the global totals exactly. Lightning calls this on every rank.
        """
        state = self._state_dict()
        return {} if state is None else state

    @guarded
    def _state_dict(self) -> dict[str, Any]:
        return self.session.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continues the totals and folder of `state_dict()` in the next `fit` (Lightning restores before it)."""
        self.session.load_state_dict(state_dict)

    def _reduce_sum(self, values):
        """Sums the ranks' totals with the strategy's own collective (every rank must call this)."""
        strategy = self._trainer.strategy
        return _torch.sum_over_ranks(values, strategy.root_device, lambda t: strategy.reduce(t, reduce_op="sum"))


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Whether two metric rows hold the same values (NaN equal to NaN)."""
    return a.keys() == b.keys() and all(a[k] == b[k] or a[k] != a[k] and b[k] != b[k] for k in a)
