"""What the Hugging Face `Trainer` adapter reads from inside `transformers`, beyond its documented callback API.

Checked against transformers 4.46.1 (the `hf` extra's floor, with accelerate 1.1.1: `make floor`) and 5.24.0 (with
accelerate 1.15.0: `make test`), which call the hooks, log the rows and name the checkpoints the same way.
Everything else the adapter uses is the documented `TrainerCallback` API: the hooks, `TrainingArguments`
(`output_dir`, `world_size`, `process_index`, `local_process_index`, `device`, `should_save`, `deepspeed`, `fsdp`)
and `TrainerState` (`global_step`, `max_steps`, `log_history`, `is_world_process_zero`). Internals used, one
function each:

- the `CallbackHandler` calling a hook, and its `callbacks` list (`run_first`), so the adapter runs before the
  `report_to` integrations that the Trainer puts ahead of user callbacks; its `on_log(args, state, control, logs)`
  (`last_row`), to hand the integrations the run's last row when the process ends on a signal;
- the `resume_from_checkpoint` argument of `Trainer._inner_training_loop`, the frame that calls `on_train_begin`
  (`resumed_from`), since no hook is told which checkpoint a run resumed from;
- the checkpoint folder's name, `<output_dir>/checkpoint-<global_step>` (`checkpoint_dir`), which
  `Trainer._save_checkpoint` writes just before `on_save` and transformers' own `MLflowCallback.on_save` reads;
- the key of the Trainer's closing log row, `train_runtime` (`is_closing_row`);
- the Trainer itself, from the same frame (`calling_trainer`), for what the recipes built on it hold beside the
  model: TRL's `ref_model` (`reference_model`) and `args.use_vllm` / `args.vllm_mode` (`generation_elsewhere`);
- a forward `generate` makes: the cache it is handed (`past_key_values`; `cache` in 5.24) and the cache's
  `get_seq_length()` (`generation_call`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from carbon_callbacks._compat import calling_list, missing, move_to_front

try:
    import transformers
    from transformers import TrainerCallback, trainer_callback, trainer_utils  # noqa: F401  (the adapter's base)
except ImportError:
    raise ImportError(
        "carbon_callbacks.transformers needs transformers 4.46.1 or newer, whose Trainer needs accelerate: pip "
        "install 'carbon-callbacks[hf]' accelerate."
    ) from None

CHECKED = "transformers 4.46.1 to 5.24.0"
#: A key only the row `Trainer.train` logs after its last step has (`speed_metrics("train", ...)`).
CLOSING_KEY = "train_runtime"
#: How many frames up from a hook the Trainer's own frames are looked for (hook, `guarded`, `call_event`, the
#: handler's `on_*`, the Trainer's loop).
_FRAMES = 8


def version() -> str:
    """`transformers <version>`, for `run.json`'s `info["framework"]`."""
    return f"transformers {transformers.__version__}"


def run_first(callback):
    """Moves `callback` to the front of the `CallbackHandler` now calling one of its hooks, so the `report_to`
    integrations after it (TensorBoard, W&B, MLflow, ...) and the progress printer see the keys it adds to `logs`.

    `CallbackHandler.call_event` hands one `logs` dict to `self.callbacks` in list order, and `Trainer.__init__`
    puts the integrations first. Moving the callback being called to the front keeps every other callback's order
    and, as the loop is past it, skips or repeats none (`move_to_front`, as for Keras).

    Returns:
        The handler, which also delivers the run's last row when the process ends on a signal (`last_row`), or
        `None` when no handler is calling (a hook called by hand, or a transformers that no longer calls hooks from
        its handler).
    """
    handler_type = getattr(trainer_callback, "CallbackHandler", None)
    if handler_type is None:
        missing("transformers", "trainer_callback.CallbackHandler", CHECKED, "the carbon/* keys reach only the "
                "loggers after the callback, and always Trainer.state.log_history.")
        return None
    handler = calling_list(callback, handler_type, frames=_FRAMES)
    if handler is not None:
        move_to_front(callback, handler)
    return handler


def last_row(handler, args, state, control, logs: dict) -> None:
    """Hands `logs` to every callback's `on_log` through the Trainer's `CallbackHandler`, as `Trainer.log` does
    after appending it to `state.log_history` (which this does too): the `report_to` integrations write it."""
    state.log_history.append({**logs, "step": state.global_step})
    handler.on_log(args, state, control, logs)


def calling_trainer(frames: int = _FRAMES):
    """The `transformers.Trainer` whose loop calls the hook running now (the `self` of a frame above it), or `None`.

    Checked on 4.46.1 to 5.24.0: `Trainer._inner_training_loop` calls `on_train_begin` through the handler.
    """
    trainer_type = getattr(transformers, "Trainer", None)
    frame = sys._getframe(1)
    for _ in range(frames):
        if frame is None or trainer_type is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, trainer_type):
            return candidate
        frame = frame.f_back
    return None


def reference_model(trainer, model):
    """The frozen reference model a recipe runs beside `model` (TRL's DPO, KTO, GRPO with `beta > 0`: their
    `ref_model`), or `None` (no reference, or the reference is `model` with its adapters off)."""
    import torch

    reference = getattr(trainer, "ref_model", None)
    if isinstance(reference, torch.nn.Module) and reference is not model:
        return getattr(reference, "module", reference)  # accelerate's DDP wrapper, in evaluation mode
    return None


def generation_elsewhere(trainer) -> str | None:
    """Why a recipe's generation runs where no hook sees it (TRL's vLLM, a server or colocated), or `None`.

    TRL's online trainers (GRPO, RLOO, online DPO, GKD...) take `args.use_vllm` and `args.vllm_mode`
    (`"server"`, `"colocate"`); checked on TRL 1.16.0.
    """
    args = getattr(trainer, "args", None)
    if not getattr(args, "use_vllm", False):
        return None
    mode = getattr(args, "vllm_mode", None)
    where = "a separate vLLM server" if mode == "server" else f"vLLM ({mode or 'its own engine'}) in this process"
    return (f"generation runs in {where}, outside the model this callback watches: its tokens and FLOPs are not "
            "counted; its energy is, where the meter sees that device")


def generation_call(kwargs) -> int | None:
    """Positions the KV cache held before this forward, when it is one of `generate`'s (a call handed a cache:
    `past_key_values` up to transformers 5.x, `cache` in 5.24), else `None`.

    Checked on 4.46.1 to 5.24.0. A cache without `get_seq_length` (a legacy tuple) counts as empty.
    """
    cache = kwargs.get("past_key_values")
    if cache is None:
        cache = kwargs.get("cache")
    if cache is None:
        return None
    length = getattr(cache, "get_seq_length", None)
    try:
        return int(length()) if callable(length) else 0
    except Exception:  # noqa: BLE001 - a cache type of its own: the attention mask still gives the context
        return 0


def resumed_from(args, state) -> Path:
    """The checkpoint folder a run that starts at `state.global_step > 0` resumed from.

    Reads the `resume_from_checkpoint` local of the `Trainer._inner_training_loop` frame that calls
    `on_train_begin` (checked on 4.46.1 to 5.24.0): `Trainer.train` resolves `True` to the last checkpoint
    there.

    Fallback when missing: `<output_dir>/checkpoint-<global_step>`, the folder the Trainer saved at that step
    (right for `resume_from_checkpoint=True` and for a path inside `output_dir`), with no warning.
    """
    trainer_type = getattr(transformers, "Trainer", None)
    frame = sys._getframe(1)
    for _ in range(_FRAMES):
        if frame is None:
            break
        local = frame.f_locals
        if trainer_type is not None and isinstance(local.get("self"), trainer_type) and \
                "resume_from_checkpoint" in local:
            if isinstance(local["resume_from_checkpoint"], (str, Path)):
                return Path(local["resume_from_checkpoint"])
            break
        frame = frame.f_back
    return checkpoint_dir(args, state)


def checkpoint_dir(args, state) -> Path:
    """The checkpoint folder `Trainer._save_checkpoint` writes at `state.global_step`:
    `<output_dir>/checkpoint-<global_step>` (`trainer_utils.PREFIX_CHECKPOINT_DIR`, checked on 4.46.1 to 5.24.0).

    A hyperparameter search's trials save under `<output_dir>/<trial>` instead; there the folder is not found and
    the adapter warns that the checkpoint does not carry the carbon totals.
    """
    prefix = getattr(trainer_utils, "PREFIX_CHECKPOINT_DIR", None)
    if prefix is None:
        missing("transformers", "trainer_utils.PREFIX_CHECKPOINT_DIR", CHECKED, "checkpoint folders are assumed "
                "to be named checkpoint-<step>.")
        prefix = "checkpoint"
    return Path(args.output_dir) / f"{prefix}-{state.global_step}"


def is_closing_row(logs: Mapping) -> bool:
    """Whether `logs` is the row `Trainer.train` logs after the last step (runtime, samples/s, `train_loss`)
    before `on_train_end`. Checked on 4.46.1 to 5.24.0; were the key renamed, the run closes at `on_train_end`
    instead and the last row holds the totals as of the last logging step."""
    return CLOSING_KEY in logs


def is_training_row(logs: Mapping) -> bool:
    """Whether `logs` is a training row of the Trainer's logging steps (it has the interval's `loss`), not an
    evaluation row (`eval_*` keys) or a user's own `Trainer.log` call."""
    return "loss" in logs
