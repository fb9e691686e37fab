"""The Lightning adapter: `CarbonCallback` logs energy, CO2e, FLOPs and MFU next to the loss.

Works with `pytorch_lightning` 2.x, or with the `lightning.pytorch` namespace when only that is installed. The
callback only translates Lightning hooks into calls on `carbon_callbacks._run.session.Tracker`; what is measured and
how it is summed is the same in every adapter.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from carbon_callbacks._run.accountant import REDUCED_FIELDS
from carbon_callbacks._errors import check_count
from carbon_callbacks._reports.report import format_report
from carbon_callbacks._run.session import Tracker

try:
    import pytorch_lightning as pl
except ImportError:  # the unified `lightning` package only
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise ImportError(
            "carbon_callbacks.lightning needs PyTorch Lightning 2.x: pip install 'carbon-callbacks[lightning]' "
            "(or pip install lightning)."
        ) from None
import torch

__all__ = ["CarbonCallback"]

log = logging.getLogger(__name__)

#: Subfolder of the Trainer's log directory that holds `run.json` and `steps.jsonl` when no `output_dir` is given.
RUN_SUBDIR = "carbon"
#: Interval used when the Trainer writes no logs (`log_every_n_steps=0`) and none was given.
_FALLBACK_INTERVAL = 50


def _batch_key(batch: Any, depth: int = 0) -> tuple:
    """A hashable description of a batch's tensor shapes and dtypes (FLOPs are counted once per key)."""
    if isinstance(batch, torch.Tensor):
        return (tuple(batch.shape), str(batch.dtype))
    if depth > 6:
        return ()
    if isinstance(batch, Mapping):
        return tuple((k, _batch_key(v, depth + 1)) for k, v in batch.items())
    if isinstance(batch, (list, tuple)):
        return tuple(_batch_key(v, depth + 1) for v in batch)
    return (type(batch).__name__,)


def _first_token_shape(batch: Any) -> tuple[int, int] | None:
    """(batch, sequence) of the first 2-D integer tensor in the batch: a language model's token ids."""
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 2 and not batch.is_floating_point() and not batch.is_complex():
            return int(batch.shape[0]), int(batch.shape[1])
        return None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        if (shape := _first_token_shape(value)) is not None:
            return shape
    return None


class CarbonCallback(pl.Callback):
    """Logs `carbon/*` metrics (energy, gross and net CO2e, FLOPs, step time, MFU) through the Trainer's loggers.

    The metrics are logged with `pl_module.log` on the steps the Trainer writes logs (its `log_every_n_steps`),
    so they land in the same logger rows as the user's `train_loss`. Between those steps the callback only adds
    a few numbers in memory. At the end of `fit`, global rank 0 prints the report (the rows of the paper's
    Table 4 this run can fill) and writes `run.json` and `steps.jsonl`.

    Args:
        region: a name from the regions table. Defaults to `None`.
        intensity: gross grid intensity, kg CO2e/kWh. Defaults to `None`. One of `region`/`intensity` is required.
        net_intensity: net intensity, kg CO2e/kWh. Defaults to `None` (the region's, else the gross one).
        pue: power usage effectiveness. Defaults to `None` (the provider's, else the industry average, labelled).
        chip: the accelerator, a name from the chips table (for MFU and modeled power). Defaults to `None`.
        num_chips: chips in the whole run. Defaults to `None`: the Trainer's world size.
        output_dir: where rank 0 writes `run.json` and `steps.jsonl`. Defaults to `None`: `carbon/` inside the
            Trainer's log directory.
        log_every_n_steps: steps per logging interval. Defaults to `None`: the Trainer's `log_every_n_steps`.
        flops: model FLOPs of one training step (one batch, forward and backward), overriding counting.
            Defaults to `None`: a `flops_per_batch` attribute of the module if it has one, else counted once
            per distinct batch shape with `carbon_callbacks.flops.count`.
        prog_bar: also show the metrics in the progress bar. Defaults to `False`.
        meter: a `carbon_callbacks.meters.Meter`. Defaults to `None`: the best this machine offers, one device
            per rank.
        dtype: the dtype whose dense peak FLOP/s defines MFU. Defaults to `"bf16"`.

    Raises:
        InvalidInputError: at construction, when neither `region` nor `intensity` is given, or for a bad number.
        UnknownNameError: at construction, for a region or chip not in the tables.

    Example:
        >>> import pytorch_lightning as pl
        >>> from carbon_callbacks.lightning import CarbonCallback
        >>> trainer = pl.Trainer(max_steps=100, callbacks=[CarbonCallback(region="us-central1", chip="a100")])

    Notes:
        - A step is one training batch (`on_train_batch_end`); with gradient accumulation, intervals close
          only on batches that step the optimizer. Interval time is wall-clock, so validation run inside
          `fit` counts toward energy and step time.
        - FLOP counting runs the module's `training_step` and its backward once per new batch shape, with
          logging muted and the RNG state, buffers and gradients restored; modules with manual optimization
          are not counted (pass `flops=` or define `flops_per_batch`).
        - Under DDP every rank meters its own device (CUDA: only its `root_device`; CPU: its own process, or
          the RAPL package counter read by local rank 0 only) and the totals are summed with the strategy's
          collective on every log step and at the end; rank 0 alone writes files and prints.
        - The callback never raises into the training loop: a failure inside it warns once and training
          goes on. An interrupted or failed fit leaves `run.json` with status `interrupted` or `failed`.
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
        prog_bar: bool = False,
        meter=None,
        dtype: str = "bf16",
    ) -> None:
        super().__init__()
        self.tracker = Tracker(
            region=region,
            intensity=intensity,
            net_intensity=net_intensity,
            pue=pue,
            chip=chip,
            num_chips=num_chips,
            output_dir=output_dir,
            flops=flops,
            meter=meter,
            dtype=dtype,
        )
        self.log_every_n_steps = (
            check_count("log_every_n_steps", log_every_n_steps) if log_every_n_steps is not None else None
        )
        self.prog_bar = bool(prog_bar)
        self.summary: dict | None = None
        self._user_meter = meter
        self._pending_state: dict | None = None
        self._final_state: dict | None = None
        self._running = False
        self._warned: set[str] = set()
        self._reset_run_state()

    # ------------------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer, pl_module) -> None:
        try:
            self._start(trainer, pl_module)
        except Exception as err:  # never into the loop
            self._running = False
            self._warn_once("start", f"carbon-callbacks could not start ({type(err).__name__}: {err}); "
                            "this run is not tracked. Training continues.")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._running or self._flops_source != "counted":
            return
        try:
            key = _batch_key(batch)
            if key not in self._flops_cache:
                self._flops_cache[key] = self._count_flops(trainer, pl_module, batch, batch_idx)
                shape = _first_token_shape(batch)
                self._tokens_cache[key] = float(shape[0] * shape[1]) if shape is not None else None
            self._current_flops = self._flops_cache[key]
            self._current_tokens = self._tokens_cache[key]
        except Exception as err:
            self._current_flops = (None, None)
            self._warn_once("count", f"carbon-callbacks could not count this batch's FLOPs "
                            f"({type(err).__name__}: {err}); pass flops= or define `flops_per_batch`.")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._running:
            return
        try:
            self._batch_end(trainer, pl_module, outputs)
        except Exception as err:
            self._warn_once("batch", f"carbon-callbacks failed at a batch end ({type(err).__name__}: {err}); "
                            "training continues.")

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._running:
            return
        try:
            self._finish(trainer, "finished", collective=trainer.world_size > 1)
        except Exception as err:
            self._warn_once("end", f"carbon-callbacks failed at the end of training ({type(err).__name__}: "
                            f"{err}).")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not self._running:
            return
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        try:
            # Other ranks may be gone: no collective here. Rank 0's last global totals plus its own work since.
            self._finish(trainer, status, collective=False)
        except Exception as err:
            self._warn_once("exception", f"carbon-callbacks could not close the run after "
                            f"{type(exception).__name__} ({type(err).__name__}: {err}).")

    # ------------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """The run's totals, saved in Lightning checkpoints so a resumed fit continues them.

        Under DDP the additive totals are summed over ranks and stored as an equal share per rank, so a resume
        with the same world size continues the global totals exactly. Lightning calls this on every rank.
        """
        if not self._running:
            return dict(self._pending_state or self._final_state or {})
        try:
            state = self.tracker.state_dict()
            if self._world_size > 1 and self._trainer is not None:
                self._sync(self._trainer)
            return self._with_global_shares(state)
        except Exception as err:
            self._warn_once("state", f"carbon-callbacks could not save its state ({type(err).__name__}: {err}); "
                            "a resume from this checkpoint starts the totals at zero.")
            return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continues the totals of `state_dict()` in the next `fit` (Lightning calls this when restoring)."""
        self._pending_state = dict(state_dict) if state_dict else None
        self._final_state = None

    def _with_global_shares(self, state: dict) -> dict:
        """`state` with each additive total replaced by its equal share of the last global (summed) totals."""
        if self._world_size == 1 or self._global_totals is None:
            return state
        named = dict(zip(REDUCED_FIELDS, (v / self._world_size for v in self._global_totals)))
        state["energy_j"] = {k[len("energy_j_"):]: v for k, v in named.items() if k.startswith("energy_j_")}
        for key in ("model_flops", "hardware_flops", "tokens"):
            if state.get(key) is not None:
                state[key] = named[key]
        return state

    # ------------------------------------------------------------------------------------------- internals
    def _reset_run_state(self) -> None:
        self._trainer = None
        self._world_size = 1
        self._interval = _FALLBACK_INTERVAL
        self._flops_source: str | None = None
        self._flops_cache: dict[tuple, tuple[float | None, float | None]] = {}
        self._current_flops: tuple[float | None, float | None] = (None, None)
        self._tokens_cache: dict[tuple, float | None] = {}
        self._current_tokens: float | None = None
        self._module_flops: float | None = None
        self._device_sync = None
        self._synced_local: list[float] | None = None
        self._global_totals: list[float] | None = None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        log.debug("carbon-callbacks: %s", message)

    def _start(self, trainer, pl_module) -> None:
        self._reset_run_state()
        self._trainer = trainer
        self._world_size = int(trainer.world_size)
        self._interval = self.log_every_n_steps or trainer.log_every_n_steps or _FALLBACK_INTERVAL
        root = trainer.strategy.root_device
        self._device_sync = torch.cuda.synchronize if root.type == "cuda" else None
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank calls it
        default_dir = Path(log_dir if log_dir is not None else trainer.default_root_dir) / RUN_SUBDIR
        if self._user_meter is None:
            self.tracker.meter = _build_meter(self.tracker.chip, root, trainer)
        if self.tracker.flops is not None:
            self._flops_source = "given"
        elif hasattr(pl_module, "flops_per_batch"):
            self._flops_source = "module"
        elif not pl_module.automatic_optimization:
            self._flops_source = None
            self._warn_once("manual", "carbon-callbacks does not count FLOPs of modules with manual optimization "
                            "(counting would run an optimizer step); pass flops= or define `flops_per_batch`.")
        else:
            self._flops_source = "counted"
        info = {
            "framework": f"{pl.__name__} {pl.__version__}",
            "model": type(pl_module).__name__,
            "params_total": sum(p.numel() for p in pl_module.parameters()),
            "params_source": "counted: module parameters",
        }
        if self._flops_source == "module":
            info["flops_method"] = "given: module flops_per_batch"
        # A huge tracker interval: intervals close on the Trainer's log steps, decided here.
        total_steps = trainer.estimated_stepping_batches
        self.tracker.start(
            output_dir=default_dir,
            log_every_n_steps=2**62,
            world_size=self._world_size,
            rank=int(trainer.global_rank),
            info=info,
            total_steps=int(total_steps) if 0 < total_steps < float("inf") else None,
        )
        if self._pending_state:
            self.tracker.load_state_dict(self._pending_state)
        self._pending_state = self._final_state = None
        self.summary = None
        self._running = True

    def _batch_end(self, trainer, pl_module, outputs) -> None:
        loop = trainer.fit_loop.epoch_loop
        accumulating = loop._should_accumulate() if hasattr(loop, "_should_accumulate") else False
        stepped = getattr(loop, "_batches_that_stepped", trainer.global_step)
        close = not accumulating and (stepped + 1) % self._interval == 0
        if self._flops_source == "module":
            model_flops = hardware_flops = float(pl_module.flops_per_batch)
        else:
            model_flops, hardware_flops = self._current_flops
        loss = _loss_value(outputs) if close else None  # .item() syncs the device: only when logging
        self.tracker.step_end(
            model_flops=model_flops,
            hardware_flops=hardware_flops,
            tokens=self._current_tokens,
            loss=loss,
            step=int(stepped) + 1,
        )
        if not close:
            return
        self.tracker.close_interval(sync=self._device_sync)
        if self._world_size > 1:
            self._sync(trainer)
        if trainer.log_every_n_steps == 0 or not trainer.loggers and not self.prog_bar:
            return
        device = pl_module.device
        for name, value in self.tracker.metrics().items():
            # float64: Lightning would store a Python float as float32 and round kg-scale sums to 7 digits.
            value = torch.tensor(value, dtype=torch.float64, device=device)
            pl_module.log(name, value, on_step=True, on_epoch=False, prog_bar=self.prog_bar, logger=True,
                          batch_size=1, sync_dist=False)

    def _sync(self, trainer) -> None:
        """Sums the ranks' totals with the strategy's own collective (every rank must call this)."""
        strategy = trainer.strategy

        def reduce_sum(values):
            local = list(values)
            tensor = torch.tensor(local, dtype=torch.float64, device=strategy.root_device)
            summed = strategy.reduce(tensor, reduce_op="sum").tolist()
            self._synced_local, self._global_totals = local, summed
            return summed

        self.tracker.sync(reduce_sum, self._world_size)

    def _finish(self, trainer, status: str, collective: bool) -> None:
        self._running = False
        tracker = self.tracker
        try:
            if self._world_size > 1:
                tracker.close_interval(sync=self._device_sync)
                if collective:
                    self._sync(trainer)
                elif self._global_totals is not None:
                    # Last global totals plus this rank's work since: the best rank 0 knows alone.
                    now = tracker.accountant.local_totals()
                    estimate = [g + n - s for g, n, s in zip(self._global_totals, now, self._synced_local)]
                    tracker.accountant.set_global_totals(dict(zip(REDUCED_FIELDS, estimate)), self._world_size)
                    self._global_totals, self._synced_local = estimate, now
            self.summary = tracker.finish(status, sync=self._device_sync)
            self._final_state = self._with_global_shares(tracker.accountant.state_dict())
        finally:
            tracker.close_meter()
            if self._user_meter is None:
                tracker.meter = None
        if trainer.is_global_zero and self.summary is not None:
            where = tracker.run_dir
            print(format_report(self.summary) + (f"\nrun files: {where}" if where is not None else ""), flush=True)

    # ------------------------------------------------------------------------------------------- FLOPs
    def _count_flops(self, trainer, pl_module, batch, batch_idx) -> tuple[float | None, float | None]:
        """(model, hardware) FLOPs of one training step on this batch's shape, counted once by tracing."""
        from carbon_callbacks.flops import count

        traced = count(_StepRunner(pl_module, batch, batch_idx), framework="torch")
        hardware = float(traced.total)
        model = hardware
        note = {"flops_method": traced.method}
        analytic = _analytic_flops(pl_module, batch)
        if analytic is not None:
            note.update(
                params_total=analytic.params_total,
                percent_active=analytic.percent_active,
                params_source="analytic: model config",
                flops_by_layer_kind={"model": analytic.breakdown, "hardware": analytic.hardware_breakdown},
            )
            if analytic.model_flops != analytic.hardware_flops:
                # MoE: the trace sees what ran (padding, dispatch); model FLOPs count activated experts only.
                model = float(analytic.model_flops)
                note["flops_method"] = f"model: analytic (activated experts); hardware: {traced.method}"
        for message in traced.warnings:
            self._warn_once(f"flops:{message}", f"carbon-callbacks FLOP count: {message}")
        self.tracker.accountant.annotate(**note)
        log.info("carbon-callbacks: %s model FLOPs, %s hardware FLOPs per step (%s)", model, hardware, note)
        return model, hardware


class _StepRunner:
    """One training step of a LightningModule with no lasting effect: for counting its FLOPs once.

    Runs `training_step` and the backward of its loss with `self.log` muted; restores the RNG state, the
    module's buffers (e.g. batch-norm statistics) and the gradients afterwards.
    """

    def __init__(self, module, batch, batch_idx) -> None:
        self.module, self.batch, self.batch_idx = module, batch, batch_idx

    def __call__(self) -> None:
        module = self.module
        params = [p for p in module.parameters() if p.requires_grad]
        grads = [p.grad for p in params]
        buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
        devices = [p.device for p in params[:1] if p.device.type == "cuda"]
        muted = {name: module.__dict__.get(name) for name in ("log", "log_dict")}
        module.log = lambda *args, **kwargs: None
        module.log_dict = lambda *args, **kwargs: None
        try:
            for p in params:
                p.grad = None
            with torch.random.fork_rng(devices=devices):
                out = module.training_step(self.batch, self.batch_idx)
                loss = out.get("loss") if isinstance(out, Mapping) else out
                if isinstance(loss, torch.Tensor) and loss.requires_grad:
                    loss.backward()
        finally:
            for name, value in muted.items():
                if value is None:
                    module.__dict__.pop(name, None)
                else:
                    module.__dict__[name] = value
            for p, g in zip(params, grads):
                p.grad = g
            with torch.no_grad():
                for name, b in module.named_buffers():
                    if name in buffers:
                        b.copy_(buffers[name])


def _analytic_flops(pl_module, batch):
    """The exact analytic count when the module (or its `.model`) carries a transformer config, else `None`."""
    from carbon_callbacks.flops import transformer_flops

    config = getattr(pl_module, "config", None)
    if config is None:
        config = getattr(getattr(pl_module, "model", None), "config", None)
    if config is None or not all(hasattr(config, f) for f in ("num_layers", "d_model", "vocab_size")):
        return None
    shape = _first_token_shape(batch)
    names = {f.name for f in fields(config)} if hasattr(config, "__dataclass_fields__") else set()
    if shape is not None and {"batch_size", "seq_len"} <= names:
        config = replace(config, batch_size=shape[0], seq_len=shape[1])
    return transformer_flops(config)


def _loss_value(outputs) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return float(loss.detach())
    return None


def _build_meter(chip, root, trainer):
    """One meter per rank that meters each device once: its own GPU; the node's CPU counters by local rank 0."""
    from carbon_callbacks.meters import create_meter

    devices = [root.index if root.index is not None else 0] if root.type == "cuda" else "auto"
    # Child processes are other ranks under DDP: never count their CPU time here.
    return create_meter(chip=chip, devices=devices, local_rank=trainer.local_rank, include_children=False)
