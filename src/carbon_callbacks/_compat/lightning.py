"""What the Lightning adapter needs from Lightning beyond its documented callback API.

Checked against pytorch-lightning and lightning (`lightning.pytorch`) 2.0.9 to 2.6.6.

Lightning ships one code base under two names: `pytorch_lightning` and the unified `lightning.pytorch`. A Trainer
accepts only callbacks of its own namespace's `Callback`, and a user may have either installed, or both. The
adapter's callback therefore subclasses the `Callback` of every namespace that is installed, so it fits whichever
Trainer the user holds. Everything else the adapter reads is public: `trainer.global_step` (optimizer steps, from
which the logger's step and gradient accumulation follow), `trainer.loggers`, `trainer.strategy`; per step it reads
the global step from the tracker behind that property (`optimizer_step_counter`), checked against it. Here too:
the run folder that follows the loggers' folders, and the training step counted with `self.log` muted.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

#: The two names Lightning is installed under, in the order their `Callback` is subclassed.
NAMESPACES = ("pytorch_lightning", "lightning.pytorch")
#: Strategies whose model is sharded or whose backward belongs to an engine: a step is never traced under them.
SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def installed_namespaces() -> list:
    """The Lightning modules that import, `pytorch_lightning` first.

    Raises:
        ImportError: naming the install command, when neither is installed.
    """
    found = []
    for name in NAMESPACES:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    if not found:
        raise ImportError(
            "carbon_callbacks.lightning needs Lightning 2.x: pip install 'carbon-callbacks[lightning]' (or pip install "
            "lightning)."
        )
    return found


def callback_bases(namespaces: list) -> tuple[type, ...]:
    """The `Callback` class of each installed namespace: a subclass of all of them fits either Trainer."""
    return tuple(module.Callback for module in namespaces)


def sharded_strategy(strategy: object) -> str | None:
    """The name of `strategy`'s class when it shards the model (FSDP, DeepSpeed, model parallel), else `None`."""
    return next((cls.__name__ for cls in type(strategy).__mro__ if cls.__name__ in SHARDED_STRATEGIES), None)


def framework_of(trainer: object) -> str:
    """The namespace and version of the Lightning that made `trainer`, e.g. `lightning.pytorch 2.5.0`."""
    top = type(trainer).__module__.split(".")
    name = "lightning.pytorch" if top[:2] == ["lightning", "pytorch"] else top[0]
    return f"{name} {getattr(sys.modules.get(name), '__version__', '')}".strip()


class _GlobalStep:
    """`trainer.global_step` as the `completed` attribute of a step tracker."""

    def __init__(self, trainer: object) -> None:
        self._trainer = trainer

    @property
    def completed(self) -> int:
        return self._trainer.global_step


def optimizer_step_counter(trainer) -> object:
    """An object whose `completed` attribute is `trainer.global_step`, read per step: Lightning's own tracker of
    optimizer steps, which `trainer.global_step` reaches through four properties (3-4 us a step with the caches a
    training step leaves), else `trainer.global_step` itself. The tracker is kept only when it reads the same."""
    try:
        loop = trainer.fit_loop.epoch_loop
        if trainer.lightning_module.automatic_optimization:
            tracker = loop.automatic_optimization.optim_progress.optimizer.step.total
        else:
            tracker = loop.manual_optimization.optim_step_progress.total
        if tracker.completed == trainer.global_step:
            return tracker
    except AttributeError:
        pass
    return _GlobalStep(trainer)


def run_folder(trainer, subdir: str) -> tuple[Path | None, Path]:
    """The run folder (a `subdir`) that follows the first logger's identity (its version folder, else its run id), and
    where a new timestamped folder goes without a logger. Both stay inside the logger's save folder (else the
    Trainer's root): a name, version or run id that would lead out of it (`../x`, an absolute path) is reduced to a
    safe name."""
    from carbon_callbacks._record.folder import is_within, safe_name

    root = Path(trainer.default_root_dir) / subdir
    logger = trainer.logger
    if logger is None:
        return None, root
    log_dir = getattr(logger, "log_dir", None)  # CSV and TensorBoard: version_N
    if isinstance(log_dir, str):
        save_dir = Path(getattr(logger, "save_dir", None) or trainer.default_root_dir)
        if is_within(Path(log_dir), save_dir):
            return Path(log_dir) / subdir, root
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return save_dir / safe_name(logger.name or "_") / safe_name(version) / subdir, root
    return root / safe_name(logger.version), root  # MLflow's run id, W&B's run id


def count_step(module, batch, batch_idx, backward: str = "all"):
    """FLOPs of one training step on this batch, counted on meta or fake tensors with `self.log` muted: nothing runs, no
    state of the module changes (`carbon_callbacks.flops.count_step`; `backward` as there)."""
    from carbon_callbacks.flops import count_step as count

    return count(module, muted_training_step(module), batch, batch_idx, backward=backward)


def muted_training_step(module):
    """The module's `training_step` with `self.log` and `self.log_dict` muted, for counting it."""

    def training_step(batch, batch_idx):
        muted = {name: module.__dict__.get(name) for name in ("log", "log_dict")}
        module.log = module.log_dict = lambda *args, **kwargs: None
        try:
            return module.training_step(batch, batch_idx)
        finally:
            for name, value in muted.items():
                if value is None:
                    module.__dict__.pop(name, None)
                else:
                    module.__dict__[name] = value

    return training_step
