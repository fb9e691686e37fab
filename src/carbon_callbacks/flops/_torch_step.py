"""Counting one torch training step without running it: meta or fake tensors under the library's FLOP counter.

`count_step(module, step, *inputs)` counts `step(*inputs)` and the backward of the loss it returns with the
module's parameters and buffers swapped for tensors without storage, so no kernel runs, no device memory is taken
and nothing of the real module is written. Meta tensors come first (shapes and dtypes; each op's own meta kernel,
no dispatch mode of their own: the cheap count of a step that needs only shapes); fake tensors (`FakeTensorMode`:
devices too, and the values of the batch's index tensors) where the step needs more. The module
is reparametrized in place (what `torch.func.functional_call` does) rather than copied: the step is usually a
bound method of the module (`training_step`) or a closure over it, which a copy would not reach, and a deep
copy of a LightningModule would copy its trainer. Whatever else the step touches (a plain tensor attribute, a
tensor in a closure) is turned into a fake copy by the mode when an op first reads it.

What the count cannot reach makes it run the step once for real instead (`fallback="real"`): an op with no fake
implementation (a custom op without `register_fake`), a value read back from a weight or activation (`.item()`, a
Python `if` on a tensor), a private torch API that is gone. That run keeps the RNG state, the buffers and the
`.grad` of every parameter as they were, and says so in `FlopCount.method` and `.warnings`. The batch's integer
and boolean tensors (token ids, masks, labels) keep copies of their values, so a step that branches on them still
counts on fakes.

Compiled modules are counted uncompiled: `torch.compile`d submodules are swapped for the modules they wrap and
any other compiled function runs eagerly (`torch.compiler.set_stance("force_eager")`) while counting, so Dynamo
never sees the counter's dispatch mode or module hooks, and the graphs it compiled are used by the next real
step as before.

The counter (`flops._torch.Counter`) counts what `FlopCounterMode` counts with the same formulas, for less Python
per op; most of a count's time is now the fake tensors' own (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from carbon_callbacks._compat import InternalApiMissing
from carbon_callbacks._compat import torch as torch_compat
from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks.flops._result import FakeCountError, FlopCount, breakdown_from_leaves
from carbon_callbacks.flops._torch import Counter, _StockCounter, new_counter

logger = logging.getLogger(__name__)

#: `FlopCount.method` of a step counted on the meta device (shapes only), the first try.
METHOD_META = "traced:torch-flop-counter(meta tensors)"
#: `FlopCount.method` of a step counted with fake tensors, where meta tensors could not run it.
METHOD_FAKE = "traced:torch-flop-counter(fake tensors)"
#: `FlopCount.method` of a step that was run for real, followed by why fake tensors could not count it.
METHOD_REAL = "traced:torch-flop-counter(real step; fake tensors failed: {reason})"
#: What `fallback` may be.
FALLBACKS = ("real", None)
#: What `backward` may be: every gradient `loss.backward()` computes, those the parameters need, none.
BACKWARDS = ("all", "parameters", "none")
#: The warning torch gives when a compiled module is called while module hooks are set globally (as
#: `FlopCounterMode`, the fallback counter, sets them).
_GLOBAL_HOOKS_WARNING = r"Using `torch.compile\(module\)` when there are global hooks"


class ParameterCounts(NamedTuple):
    """How many parameters a module has and how many of them training updates (`requires_grad`).

    Attributes:
        trainable: elements of the parameters that require a gradient.
        total: elements of all parameters, each shared (tied) parameter once.
    """

    trainable: int
    total: int

    @property
    def fraction(self) -> float | None:
        """`trainable / total`; `None` for a module without parameters."""
        return self.trainable / self.total if self.total else None


def trainable_fraction(module: torch.nn.Module) -> ParameterCounts:
    """The parameters of `module` that training updates, and all of them (see `ParameterCounts`).

    A LoRA fine-tune (`peft`) or a frozen backbone trains a small fraction; a full training run 1.0. A
    `torch.compile`d module is read through the module it wraps. Counts are of the tensors this process holds:
    under FSDP or DeepSpeed ZeRO-3 they may be this rank's shards only.

    Example:
        >>> trainable_fraction(torch.nn.Linear(4, 2)).fraction
        1.0
    """
    with torch_compat.uncompiled_submodules(module) as root:
        params = list(root.parameters())
    return ParameterCounts(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


def count_step(module: torch.nn.Module, step: Callable[..., Any], *inputs: Any,
               fallback: str | None = "real", backward: str = "all") -> FlopCount:
    """Counts the FLOPs of one training step, `step(*inputs)` and the backward of its loss, without running it.

    `step` is called with `module`'s parameters and buffers replaced by meta tensors and with every tensor in
    `inputs` (a batch tuple, a dict of tensors...) replaced by a meta one; where that fails (the step reads a value,
    moves a tensor to a device, mixes in a real tensor, calls an attention or recurrent kernel that torch picks by
    device), again with fake tensors, which keep the device and the values of the batch's index tensors. Nothing
    of the real module is computed, allocated or written. What `step` returns is differentiated as a training step
    would be:
    - a tensor with one element, a mapping with a `loss` key or an object with a `loss` attribute (a Hugging
      Face `ModelOutput`): that loss;
    - other outputs: the sum of their floating-point tensors that require a gradient;
    - `None` (a Lightning step that skips the batch): nothing; the forward alone is counted.
    Frozen parameters (`requires_grad=False`) get no weight gradient, exactly as in the real step. The counter
    applies the formulas of `torch.utils.flop_counter` and this library's for the ops it misses, and counts what
    `FlopCounterMode` counts with them; `breakdown` puts each op in the layer kind of the module that runs it (a
    backward op: of the module whose forward it differentiates).

    `step` runs in the caller's autocast and grad-mode context, with grad mode on; FLOPs do not depend on the
    dtype, so a bf16 step counts as its fp32 twin. It must not call `backward` itself.

    Args:
        module: the user's unwrapped module (a LightningModule, a `transformers` model, a `peft` model): not a
            DDP, FSDP or DeepSpeed wrapper. A `torch.compile`d module or submodule is counted uncompiled.
        step: the training step's forward: takes `*inputs`, returns the loss or the outputs. Mute any side
            effect that is not arithmetic (a LightningModule's `self.log`) before passing it.
        *inputs: its arguments; tensors may sit in nested tuples, lists, dicts and dataclasses.
        fallback: what to do where fake tensors cannot run the step: `"real"` runs it once for real with no
            lasting effect (RNG state and buffers restored, no `.grad` written; one extra step's time and
            gradient memory), `None` raises. Defaults to `"real"`.
        backward: which backward to count. `"all"`: what `loss.backward()` runs, the gradient of every tensor
            that requires one (the hardware FLOPs); `"parameters"`: only what the trainable parameters' gradients
            need (`torch.autograd.grad`), leaving out the gradient of an input made to require one, as
            `enable_input_require_grads` does for checkpointing with frozen embeddings (the model FLOPs);
            `"none"`: a pass that training runs without gradients (the reference model's forward in DPO, GRPO's
            scoring of samples), run under `torch.no_grad()`, forward only. Defaults to `"all"`.

    Returns:
        A `FlopCount` of one step (`total == executed`: nothing is extrapolated), whose `method` is
        `METHOD_META`, `METHOD_FAKE`, or `METHOD_REAL` with the reason when the step ran for real; `warnings` says
        what was not counted as in training (a real run, a step without backward). Forwards that activation
        checkpointing runs again in the backward pass are in `total` and, apart, in `recomputed`;
        `other_gradients` says whether the backward computed gradients the parameters do not need.

    Raises:
        InvalidInputError: for a `module` that is not a `torch.nn.Module`, a DDP wrapper or sharded (`sharded`),
            or an unknown `fallback` or `backward`.
        FakeCountError: when fake tensors cannot run the step and `fallback` is `None` (the cause chained).

    Example:
        >>> model = torch.nn.Linear(8, 4)
        >>> batch = (torch.randn(16, 8), torch.randn(16, 4))
        >>> count = count_step(model, lambda x, y: torch.nn.functional.mse_loss(model(x), y), *batch)
        >>> count.total, count.method
        (2048, 'traced:torch-flop-counter(meta tensors)')

    Notes:
        Python state the step sets on the module's submodules (an attribute, a cached tensor) is put back after
        counting; state kept elsewhere (a global counter, the trainer) is not, so a step should be free of side
        effects other than logging. Under FSDP or DeepSpeed the module is sharded: take FLOPs from the model
        config or `flops_per_batch` there instead of counting a step.
    """
    if not isinstance(module, torch.nn.Module):
        raise InvalidInputError(
            f"module must be a torch.nn.Module (the unwrapped model the step trains), got {type(module).__name__}.")
    if fallback not in FALLBACKS:
        raise InvalidInputError(f"fallback must be one of {FALLBACKS}, got {fallback!r}.")
    if backward not in BACKWARDS:
        raise InvalidInputError(f"backward must be one of {BACKWARDS}, got {backward!r}.")
    sharding = sharded(module)
    if sharding is not None:
        raise InvalidInputError(
            f"module: {sharding}, so one rank cannot count a step alone (a real step would run collectives on "
            "this rank only, fake tensors do not see the whole model). Take the FLOPs from the model config "
            "(TransformerConfig.from_hf) or a flops_per_batch attribute, or pass flops= per step.")
    with _no_lasting_effect(module) as (root, state), torch.compiler.set_stance("force_eager"), torch.enable_grad():
        try:
            counter, notes = _meta_count(root, step, inputs, backward)
            return _result(counter, METHOD_META, notes)
        except InternalApiMissing:  # strict mode: a missing torch internal is an error
            raise
        except Exception as err:  # noqa: BLE001 - a step that needs more than shapes: fake tensors next
            logger.debug("counting the step on the meta device failed (%s); counting it on fake tensors", _reason(err))
            state.restore()
        try:
            counter, notes = _fake_count(root, step, inputs, backward)
            method = METHOD_FAKE
        except InternalApiMissing:  # strict mode: a missing torch internal is an error, not a reason to run
            raise
        except Exception as err:  # noqa: BLE001 - whatever stops fake tensors, the real step decides
            reason = _reason(err)
            if fallback is None:
                raise FakeCountError(
                    f"The training step could not be counted with fake tensors ({reason}). Pass fallback='real' "
                    "to count it by running it once for real, give the model's FLOPs per step (flops=), or "
                    "register a fake implementation for the op (torch.library.register_fake)."
                ) from err
            logger.info("counting the step with fake tensors failed (%s); running it for real", reason)
            state.restore()  # nothing the fake try left on the module reaches the real step
            counter, notes = _real_count(root, step, inputs, backward)
            method = METHOD_REAL.format(reason=type(err).__name__)
            notes.insert(0, f"counted by running the step for real: fake tensors failed ({reason})")
    return _result(counter, method, notes)


def sharded(module: torch.nn.Module) -> str | None:
    """Why `module` cannot be counted on one rank (its parameters are sharded or it is a wrapper), or `None`.

    Looks for what the distributed strategies leave on the module: a `DistributedDataParallel` or FSDP1
    `FullyShardedDataParallel` wrapper, DTensor parameters (FSDP2 `fully_shard`, tensor parallelism), DeepSpeed
    ZeRO-3 parameters (their `ds_id`). Only modules already imported are consulted: a process that never
    imported `torch.distributed.tensor` or `deepspeed` holds none of their tensors.
    """
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return "it is a DistributedDataParallel wrapper (pass its .module, the step's own module)"
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None and any(isinstance(m, fsdp.FullyShardedDataParallel) for m in module.modules()):
        return "it holds FullyShardedDataParallel (FSDP) modules, whose parameters are sharded"
    dtensor = sys.modules.get("torch.distributed.tensor")
    deepspeed = "deepspeed" in sys.modules
    for name, p in module.named_parameters():
        if dtensor is not None and isinstance(p, dtensor.DTensor):
            return f"its parameter {name} is a DTensor (FSDP2 or tensor parallelism shard it)"
        if deepspeed and hasattr(p, "ds_id"):
            return f"its parameter {name} is partitioned by DeepSpeed ZeRO-3"
    return None


# ---------------------------------------------------------------------------------------------- the three counts
def _meta_count(root: torch.nn.Module, step, inputs, backward: str) -> tuple[Counter | _StockCounter, _Notes]:
    """The step on meta tensors: shapes and dtypes only, with the ops' own meta kernels (no dispatch mode of their
    own: faster than fake tensors warm, a third of their time as a process's first count). A step that
    reads a value (`.item()`, a Python `if` on a tensor, a mask's nonzero), moves a tensor to a device, mixes in
    a real tensor or calls a kernel torch picks by device (`_CHOSEN_BY_DEVICE`) fails here, and is counted on fake
    tensors."""
    metas: dict[int, torch.Tensor] = {}  # by the real tensor's id: a shared (tied) tensor gets one meta tensor

    def meta(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in metas:
            metas[id(t)] = torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
        return metas[id(t)]

    tensors = dict(root.named_parameters(remove_duplicate=False))
    tensors.update(root.named_buffers(remove_duplicate=False))
    swap = torch_compat.reparametrized(root, {name: meta(t) for name, t in tensors.items()})
    if swap is None:
        raise RuntimeError("torch cannot swap a module's parameters")
    trained = [t for t in metas.values() if t.requires_grad]
    meta_inputs = _map_tensors(inputs, meta)
    counter = new_counter(root)
    with swap, _NoDeviceChoice(), counter:
        notes = _forward_backward(step, meta_inputs, trained, backward)
    return counter, notes


#: Functions whose kernels torch picks by device, so that the ops they run (and count) differ: on meta they run their
#: generic decomposition (an attention's backward then skips gradients that the fused CPU and CUDA kernels compute,
#: an LSTM runs matrix products where cuDNN or oneDNN run one kernel). A step that calls one is counted on fake tensors,
#: which keep the real device.
_CHOSEN_BY_DEVICE = frozenset({
    "scaled_dot_product_attention", "flex_attention", "multi_head_attention_forward", "_native_multi_head_attention",
    "_transformer_encoder_layer_fwd", "lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell",
    "rnn_relu_cell",
})


class _NoDeviceChoice(torch.overrides.TorchFunctionMode):
    """Stops a meta count at the first function of `_CHOSEN_BY_DEVICE`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in _CHOSEN_BY_DEVICE:
            raise RuntimeError(f"{func.__name__} picks its kernels by device")
        return func(*args, **(kwargs or {}))


def _fake_count(root: torch.nn.Module, step, inputs, backward: str) -> tuple[Counter | _StockCounter, _Notes]:
    # Token ids, masks and labels keep their values (small next to the model): a step that branches on them counts.
    largest_index = max((t.numel() for t in _tensors(inputs) if _is_index(t)), default=0)
    mode = torch_compat.fake_tensor_mode(constant_numel=largest_index)
    if mode is None:
        raise RuntimeError("torch has no FakeTensorMode")
    tensors = dict(root.named_parameters(remove_duplicate=False))
    tensors.update(root.named_buffers(remove_duplicate=False))
    fakes = {name: mode.from_tensor(t) for name, t in tensors.items()}  # a shared tensor gets one fake
    swap = torch_compat.reparametrized(root, fakes)
    if swap is None:
        raise RuntimeError("torch cannot swap a module's parameters")
    fake_inputs = _map_tensors(inputs, lambda t: torch_compat.fake_constant(mode, t) if _is_index(t)
                               else mode.from_tensor(t))
    counter = new_counter(root)
    trained = [fake for fake in fakes.values() if fake.requires_grad]
    with swap, mode, counter:
        notes = _forward_backward(step, fake_inputs, trained, backward)
    return counter, notes


def _real_count(root: torch.nn.Module, step, inputs, backward: str) -> tuple[Counter | _StockCounter, _Notes]:
    """The step for real under the counter, its backward through `autograd.grad`: no `.grad` is written."""
    buffers = {name: b.detach().clone() for name, b in root.named_buffers()}
    counter = new_counter(root)
    try:
        with counter:
            trained = [p for p in root.parameters() if p.requires_grad]
            notes = _forward_backward(step, inputs, trained, backward, real=True)
    finally:
        with torch.no_grad():
            for name, b in root.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
    return counter, notes


class _Notes(list):
    """What was not counted as in training (a list of notes), and whether the backward computed gradients the
    parameters do not need (`other_gradients`)."""

    other_gradients = False


def _forward_backward(step, inputs, trained: list, backward: str, real: bool = False) -> _Notes:
    """Runs `step(*inputs)` and the backward of its loss that `backward` names (see `count_step`)."""
    notes = _Notes()
    if backward == "none":
        with torch.no_grad():
            step(*inputs)
        return notes
    out = step(*inputs)
    loss = _loss(out)
    if loss is None:
        notes.append("the step returned no loss and no output that requires a gradient: its forward alone is counted")
        return notes
    leaves = trained + [t for t in _tensors(inputs) if t.requires_grad and t.is_leaf]
    notes.other_gradients, reentrant = _graph_facts(loss, leaves)
    if reentrant and backward == "parameters":
        notes.append("reentrant activation checkpointing computes every input's gradient: counted as it runs")
    if (real or backward == "parameters") and not reentrant:  # only what these leaves need; no `.grad` written
        if leaves:
            torch.autograd.grad(loss, leaves, allow_unused=True)
    elif real:  # reentrant checkpointing refuses autograd.grad: backward, then the gradients as they were
        kept = [(p, p.grad) for p in trained]
        try:
            loss.backward()
        finally:
            for p, grad in kept:
                p.grad = grad
    else:  # fake: the gradients land on the fake parameters, as `loss.backward()` would
        loss.backward()
    return notes


def _graph_facts(loss: torch.Tensor, leaves: list) -> tuple[bool, bool]:
    """Whether `loss.backward()` would compute the gradient of a tensor other than `leaves` (one made to require a
    gradient inside the step: an embedding output under `enable_input_require_grads`), and whether the graph holds
    reentrant checkpoints (`CheckpointFunction`, which computes every input's gradient and refuses `autograd.grad`).
    """
    wanted = {id(t) for t in leaves}
    other = reentrant = False
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: the leaf it writes
        other = other or (variable is not None and id(variable) not in wanted)
        reentrant = reentrant or type(node).__name__ == "CheckpointFunctionBackward"
        stack.extend(next_node for next_node, _ in node.next_functions)
    return other, reentrant


def _loss(out) -> torch.Tensor | None:
    """The tensor whose backward is the step's: its loss (summed if it has several elements), else the sum of its
    float outputs that need a gradient."""
    candidate = out
    if isinstance(out, Mapping) and "loss" in out:
        candidate = out["loss"]
    elif not isinstance(out, (torch.Tensor, Mapping, list, tuple)) and isinstance(getattr(out, "loss", None),
                                                                                 torch.Tensor):
        candidate = out.loss
    if isinstance(candidate, torch.Tensor) and candidate.numel() == 1:
        return candidate if candidate.requires_grad else None
    outputs = [t for t in _tensors(candidate) if t.requires_grad and t.is_floating_point()]
    if not outputs:
        return None
    return sum(t.float().sum() for t in outputs)


# ---------------------------------------------------------------------------------------------- no lasting effect
class _ModuleState:
    """The Python state of every submodule: attributes, parameters, buffers and children, as objects."""

    def __init__(self, root: torch.nn.Module) -> None:
        self.saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules))
                      for m in root.modules()]

    def restore(self) -> None:
        """Puts every saved object back and drops what was added (a fake tensor the step cached on a module)."""
        for m, attributes, params, buffers, children in self.saved:
            _restore(m.__dict__, attributes)
            _restore(m._parameters, params)
            _restore(m._buffers, buffers)
            _restore(m._modules, children)


@contextlib.contextmanager
def _no_lasting_effect(module: torch.nn.Module):
    """Counts the uncompiled module, with the RNG state and the Python state of every submodule kept.

    Yields the module to count and its `_ModuleState`, restored on exit (and by the caller between two tries).
    The counter's module hooks are gone on exit too (it removes them itself).
    """
    with torch_compat.uncompiled_submodules(module) as root:
        state = _ModuleState(root)
        devices = sorted({p.device.index or 0 for p in root.parameters() if p.device.type == "cuda"})
        try:
            with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
                # A compiled module the step calls through a reference of its own sees the global hooks of
                # FlopCounterMode where it counts (no TorchDispatchMode, a higher-order operator).
                warnings.filterwarnings("ignore", message=_GLOBAL_HOOKS_WARNING)
                yield root, state
        finally:
            state.restore()


def _restore(current: dict, saved: dict) -> None:
    for key in [k for k in current if k not in saved]:
        del current[key]
    for key, value in saved.items():
        if current.get(key, _MISSING) is not value:
            current[key] = value


_MISSING = object()


# ---------------------------------------------------------------------------------------------- pytrees of tensors
def _map_tensors(obj, fn, depth: int = 0):
    """`obj` with every tensor `t` in nested tuples, lists, mappings and dataclasses replaced by `fn(t)`."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if depth > 16:
        return obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(_map_tensors(v, fn, depth + 1) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn, depth + 1) for v in obj)
    if isinstance(obj, Mapping):
        mapped = {k: _map_tensors(v, fn, depth + 1) for k, v in obj.items()}
        try:
            return type(obj)(mapped)  # dict, OrderedDict, a transformers BatchEncoding
        except Exception:  # noqa: BLE001 - a mapping type that cannot be built from a dict
            return mapped
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        copy = object.__new__(type(obj))
        copy.__dict__.update({k: _map_tensors(v, fn, depth + 1) for k, v in vars(obj).items()})
        return copy
    return obj  # anything else: the mode turns the real tensors it holds into fake ones when an op reads them


def _tensors(obj, depth: int = 0):
    """The tensors in nested tuples, lists, mappings and objects with a `loss` (a `ModelOutput` is a mapping)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth <= 16:
        values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else ()
        for value in values:
            yield from _tensors(value, depth + 1)


def _is_index(tensor: torch.Tensor) -> bool:
    """Whether `tensor` holds integers or booleans (token ids, an attention mask, labels)."""
    return not tensor.is_floating_point() and not tensor.is_complex()


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def _result(counter: Counter | _StockCounter, method: str, notes: _Notes) -> FlopCount:
    total = int(counter.total)
    own = counter.own_flops()
    return FlopCount(
        total=total,
        executed=total,
        method=method,
        framework="torch",
        includes_backward=counter.backward_flops > 0,
        breakdown=breakdown_from_leaves(own) if own else {},
        warnings=tuple(notes),
        recomputed=int(counter.recomputed),
        other_gradients=notes.other_gradients,
    )
