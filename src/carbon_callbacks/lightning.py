"""The Lightning adapter: `CarbonCallback` logs energy, CO2e, FLOPs and MFU next to the loss.

Works with `pytorch_lightning` 2.x, or with the `lightning.pytorch` namespace when only that is installed. The
callback only maps Lightning's hooks onto `carbon_callbacks._run.session.RunSession`, which does what every
adapter does; here are only Lightning's hooks, its batches, its step tracing, its collective and its logger.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from carbon_callbacks._run.session import RunSession, guarded, status_for
from carbon_callbacks._run.step_flops import token_shape

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

#: Subfolder of the Trainer's log directory that holds `run.json` and `steps.jsonl` when no `output_dir` is given.
RUN_SUBDIR = "carbon"
#: Interval used when the Trainer writes no logs (`log_every_n_steps=0`) and none was given: the Trainer's own
#: default, https://lightning.ai/docs/pytorch/stable/common/trainer.html#log-every-n-steps .
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


def _tensor_leaves(batch: Any, depth: int = 0):
    """(shape, is_integer) of every tensor in the batch, in order."""
    if isinstance(batch, torch.Tensor):
        yield tuple(batch.shape), not (batch.is_floating_point() or batch.is_complex())
    elif depth <= 6:
        values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
        for value in values:
            yield from _tensor_leaves(value, depth + 1)


class CarbonCallback(pl.Callback):
    """Logs `carbon/*` metrics (energy, gross and net CO2e, FLOPs, step time, MFU) through the Trainer's loggers.

    The metrics are logged with one `pl_module.log_dict` call on the steps the Trainer writes logs (its `log_every_n_steps`),
    so they land in the same logger rows as the user's `train_loss`. Between those steps the callback only adds
    a few numbers in memory. At the end of `fit`, global rank 0 prints the report (the rows of the paper's
    Table 4 this run can fill) and writes `run.json` and `steps.jsonl`.

    Args:
        region, intensity, net_intensity, pue, chip, dtype: the site and the chip, as every adapter takes them
            (see `carbon_callbacks.RunSession`); one of `region`/`intensity` is required.
        num_chips: chips in the whole run. Defaults to `None`: the Trainer's world size.
        output_dir: where rank 0 writes `run.json` and `steps.jsonl`. Defaults to `None`: `carbon/` inside the
            Trainer's log directory.
        log_every_n_steps: steps per logging interval. Defaults to `None`: the Trainer's `log_every_n_steps`.
        flops: model FLOPs of one training step (one batch, forward and backward), overriding counting.
            Defaults to `None`: a `flops_per_batch` attribute of the module if it has one, else counted once
            per distinct batch shape with `carbon_callbacks.flops.count` (hardware FLOPs), with model FLOPs
            from the analytic count when `module.config` or `module.model.config` is a `TransformerConfig`.
        prog_bar: also show the metrics in the progress bar. Defaults to `False`.
        meter: a `carbon_callbacks.meters.Meter`, which stays the caller's to close. Defaults to `None`: the best
            this machine offers, one device per rank, made for each `fit` and closed at its end.

    Raises:
        InvalidInputError: at construction, when neither `region` nor `intensity` is given, or for a bad number.
        UnknownNameError: at construction, for a region or chip not in the tables.

    Example:
        >>> import pytorch_lightning as pl
        >>> from carbon_callbacks.lightning import CarbonCallback
        >>> trainer = pl.Trainer(max_steps=100, callbacks=[CarbonCallback(region="us-central1", chip="a100")])

    Notes:
        How Lightning's hooks, accumulation, DDP and failures map onto the run: `docs/adapters.md`.
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
        self.session = RunSession(
            region=region, intensity=intensity, net_intensity=net_intensity, pue=pue, chip=chip, num_chips=num_chips,
            output_dir=output_dir, log_every_n_steps=log_every_n_steps, flops=flops, meter=meter, dtype=dtype,
        )
        self.prog_bar = bool(prog_bar)
        self._trainer = None
        self._device_sync = None

    @property
    def summary(self) -> dict | None:
        """The last finished run's `run.json` content (`None` before the first run ends)."""
        return self.session.summary_at_finish

    # ------------------------------------------------------------------------------------------- hooks
    @guarded
    def on_train_start(self, trainer, pl_module) -> None:
        self._trainer = trainer
        root = trainer.strategy.root_device
        self._device_sync = torch.cuda.synchronize if root.type == "cuda" else None
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank calls it
        total_steps = trainer.estimated_stepping_batches
        self.session.start(
            model=pl_module,
            traceable=pl_module.automatic_optimization,
            untraceable_reason="FLOPs of modules with manual optimization are not counted (counting would run an "
            "optimizer step);",
            output_dir=Path(log_dir if log_dir is not None else trainer.default_root_dir) / RUN_SUBDIR,
            log_every_n_steps=trainer.log_every_n_steps or _FALLBACK_INTERVAL,
            world_size=int(trainer.world_size),
            rank=int(trainer.global_rank),
            info={
                "framework": f"{pl.__name__} {pl.__version__}",
                "model": type(pl_module).__name__,
                "params_total": sum(p.numel() for p in pl_module.parameters()),
                "params_source": "counted: module parameters",
            },
            total_steps=int(total_steps) if 0 < total_steps < float("inf") else None,
            meter_factory=lambda: _build_meter(self.session.chip, root, trainer),
        )

    @guarded
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        session = self.session
        if not session.running:
            return
        flops = session.step_flops(  # counted once per batch shape; after the step, which it does not change
            lambda: _batch_key(batch),
            lambda: _count_step(pl_module, batch, batch_idx),
            lambda: token_shape(_tensor_leaves(batch)),
        )
        loop = trainer.fit_loop.epoch_loop
        accumulating = loop._should_accumulate() if hasattr(loop, "_should_accumulate") else False
        stepped = getattr(loop, "_batches_that_stepped", trainer.global_step)
        close = not accumulating and (stepped + 1) % session.interval == 0
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        keep_loss = close and isinstance(loss, torch.Tensor) and loss.numel() == 1  # read when the interval closes
        closed = session.step_end(
            flops=flops,
            loss=loss.detach() if keep_loss else None,
            step=int(stepped) + 1,
            sync=self._device_sync,
            close=close,
        )
        if not closed:
            return
        if session.world_size > 1:
            session.sync(self._reduce_sum)
        if trainer.log_every_n_steps == 0 or not trainer.loggers and not self.prog_bar:
            return
        # In the same logger rows as the user's loss, on log steps only; float64, as Lightning would store a
        # Python float as float32 and round kg-scale sums to 7 digits.
        values = {k: torch.tensor(v, dtype=torch.float64, device=pl_module.device)
                  for k, v in session.last_metrics.items()}
        pl_module.log_dict(values, on_step=True, on_epoch=False, prog_bar=self.prog_bar, logger=True,
                           batch_size=1, sync_dist=False)

    @guarded
    def on_train_end(self, trainer, pl_module) -> None:
        collective = self._reduce_sum if trainer.world_size > 1 else None
        self.session.finish(sync=self._device_sync, reduce_sum=collective)

    @guarded
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Other ranks may be gone: no collective here. Rank 0's last global totals plus its own work since.
        self.session.finish(status_for(exception), sync=self._device_sync)

    # ------------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """The run's totals, saved in Lightning checkpoints so a resumed fit continues them.

        Under DDP the additive totals are summed over ranks and stored as an equal share per rank, so a resume
        with the same world size continues the global totals exactly. Lightning calls this on every rank.
        """
        state = self._state_dict()
        return {} if state is None else state

    @guarded
    def _state_dict(self) -> dict[str, Any]:
        return self.session.state_dict(reduce_sum=self._reduce_sum)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continues the totals of `state_dict()` in the next `fit` (Lightning calls this when restoring)."""
        self.session.load_state_dict(state_dict)

    def _reduce_sum(self, values):
        """Sums the ranks' totals with the strategy's own collective (every rank must call this)."""
        strategy = self._trainer.strategy
        tensor = torch.tensor(list(values), dtype=torch.float64, device=strategy.root_device)
        return strategy.reduce(tensor, reduce_op="sum").tolist()


def _count_step(module, batch, batch_idx):
    """FLOPs of one training step on this batch, traced with no lasting effect (see `_StepRunner`)."""
    from carbon_callbacks.flops import count

    return count(_StepRunner(module, batch, batch_idx), framework="torch")


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


def _build_meter(chip, root, trainer):
    """One meter per rank that meters each device once: its own GPU; the node's CPU counters by local rank 0."""
    from carbon_callbacks.meters import create_meter

    devices = [root.index if root.index is not None else 0] if root.type == "cuda" else "auto"
    # Child processes are other ranks under DDP: never count their CPU time here.
    return create_meter(chip=chip, devices=devices, local_rank=trainer.local_rank, include_children=False)
