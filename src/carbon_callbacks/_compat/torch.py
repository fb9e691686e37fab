"""The torch internals carbon-callbacks uses, one small function each, with the releases they were checked on.

Each function reads one private API of torch. When the API is gone (a release newer than the ones checked),
it calls `carbon_callbacks._compat.missing`, which warns once (raises in strict mode), and takes the fallback
its docstring names. Public torch APIs (`torch.compiler.set_stance`, `torch.random.fork_rng`) are used directly
by the callers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

import torch

from carbon_callbacks._compat import missing

#: The torch releases every function below was checked on.
CHECKED = "torch 2.13.0"
#: The oldest torch whose `FlopCounterMode` has the module tracker and `_count_flops` the counters build on (2.4).
MIN_TORCH = (2, 4)

if tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) < MIN_TORCH:
    raise ImportError(
        f"carbon-callbacks needs torch 2.4 or newer to count FLOPs (its counters build on FlopCounterMode's module "
        f"tracker, new in 2.4); found torch {torch.__version__}: pip install 'torch>=2.4'"
    )

_graph_task_id = getattr(torch._C, "_current_graph_task_id", None)


def current_graph_task_id() -> int:
    """The id of the autograd graph task running on this thread; -1 outside a backward pass.

    Reads `torch._C._current_graph_task_id` (checked on torch 2.13.0).

    Fallback when missing: -1, so only the ops that `FlopCounterMode`'s module tracker sees inside a module's
    backward are known to be backward FLOPs (the total is unchanged; `includes_backward` may read `False`).
    """
    if _graph_task_id is None:
        missing("torch", "torch._C._current_graph_task_id", CHECKED,
                "backward FLOPs outside module backward hooks are not told apart from forward ones.")
        return -1
    return _graph_task_id()


#: Longest wait for a collective's worker thread to let go of the tensor it summed, in s (microseconds under gloo).
LET_GO_S = 1.0


def sum_over_ranks(values, device, reduce=None) -> list[float]:
    """`values` summed over the job's ranks by `reduce` (a function summing a float64 tensor in place and returning
    it, as `strategy.reduce` does; defaults to `torch.distributed.all_reduce`). Every rank must call it.

    On CPU (gloo) it returns only once the collective's worker thread has let go of the tensor, read with
    `Tensor._use_count` (checked on torch 2.13.0): a worker that drops the last C++ reference to a tensor Python
    holds must take the GIL to release it, and a main thread that meanwhile destroys the process group (the end of
    a script: `destroy_process_group`, DDP's reducer freed) joins that worker holding the GIL, so the process never
    exits. The run's last sum is often a job's last collective, a few ms before that teardown.

    Fallback when missing: no wait (the teardown's race stays torch's).
    """
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    if reduce is None:
        torch.distributed.all_reduce(tensor)
        summed = tensor.tolist()
    else:
        summed = reduce(tensor).tolist()
    if tensor.device.type == "cpu":
        _let_go(tensor)
    return summed


def _let_go(tensor: torch.Tensor) -> None:
    use_count = getattr(tensor, "_use_count", None)
    if use_count is None:
        missing("torch", "Tensor._use_count", CHECKED,
                "a process that destroys its gloo process group right after the run's last sum may hang there.")
        return
    deadline = time.monotonic() + LET_GO_S
    while use_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.0001)  # the GIL released, for the worker to take


_autograd_node = getattr(torch._C, "_current_autograd_node", None)


def current_autograd_node():
    """The autograd node whose backward runs on this thread now; `None` outside a backward pass.

    Reads `torch._C._current_autograd_node` (checked on torch 2.13.0). The node is the object `tensor.grad_fn`
    gave for the output of the forward op that created it.

    Fallback when missing: `None`, so the FLOPs of the backward pass are not attributed to the modules whose
    forward they differentiate (the total is unchanged; they land in `FlopCount.breakdown["other"]`).
    """
    if _autograd_node is None:
        missing("torch", "torch._C._current_autograd_node", CHECKED,
                "backward FLOPs are counted but not attributed to modules (FlopCount.breakdown puts them in 'other').")
        return None
    return _autograd_node()


def dispatch_mode_base():
    """`torch.utils._python_dispatch.TorchDispatchMode`, the base class of a Python dispatch mode, or `None`.

    Checked on torch 2.13.0.

    Fallback when missing: `None`; FLOPs are then counted with `torch.utils.flop_counter.FlopCounterMode` itself
    (the same totals, more Python time per op, and the per-module attribution of its `ModuleTracker`).
    """
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:
        missing("torch", "torch.utils._python_dispatch.TorchDispatchMode", CHECKED,
                "FLOPs are counted with FlopCounterMode itself (same totals, slower).")
        return None
    return TorchDispatchMode


_has_kernel = getattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", None)
_composite_implicit = getattr(getattr(torch._C, "DispatchKey", None), "CompositeImplicitAutograd", None)


def may_decompose(op) -> bool:
    """Whether the op overload `op` has a CompositeImplicitAutograd kernel (C++ or Python), so that
    `op.decompose(...)` may run it as other ops, as `FlopCounterMode` tries for every op it has no formula for.

    Reads `torch._C._dispatch_has_kernel_for_dispatch_key`, `torch._C.DispatchKey.CompositeImplicitAutograd` and
    `OpOverload.py_kernels` (checked on torch 2.13.0).

    Fallback when missing: `True`: every op is offered to `op.decompose`, as `FlopCounterMode` does (the same
    counts, more Python time per op).
    """
    if _has_kernel is None or _composite_implicit is None:
        missing("torch", "torch._C._dispatch_has_kernel_for_dispatch_key", CHECKED,
                "every op is offered to op.decompose before it is counted (same counts, slower).")
        return True
    return _composite_implicit in getattr(op, "py_kernels", ()) or bool(_has_kernel(op.name(), _composite_implicit))


def fake_tensor_mode(constant_numel: int = 0):
    """A new `FakeTensorMode` that turns the real tensors it meets into fake ones, or `None`.

    Reads `torch._subclasses.fake_tensor.FakeTensorMode(allow_non_fake_inputs=True)` (checked on torch 2.13.0).
    Real tensors that reach an op inside the mode (plain tensor attributes, tensors in closures) are copied to
    fake ones for that op; the real ones are never written.

    The mode also keeps the values of integer and boolean tensors of up to `constant_numel` elements computed
    from constant fakes (`fake_constant`): its `may_turn_const`, which torch limits to one element.

    Fallback when missing: `None`; `count_step` then runs the step for real (its `fallback="real"`).
    """
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
    except ImportError:
        missing("torch", "torch._subclasses.fake_tensor.FakeTensorMode", CHECKED,
                "training steps are counted by running them for real (one extra step per batch shape).")
        return None

    class ConstantIndexMode(FakeTensorMode):
        def may_turn_const(self, t: torch.Tensor) -> bool:
            small_index = (not t.is_floating_point() and not t.is_complex() and t.numel() <= constant_numel
                           and not self.is_our_fake(t) and t.device.type != "meta" and t.layout == torch.strided)
            return small_index or super().may_turn_const(t)

    return ConstantIndexMode(allow_non_fake_inputs=True)


def fake_constant(mode, tensor: torch.Tensor) -> torch.Tensor:
    """A fake of an integer or boolean `tensor` (token ids, an attention mask) that keeps a copy of its values.

    Reads `FakeTensorMode.fake_tensor_converter.from_real_tensor(..., make_constant=True)` (checked on torch
    2.13.0). Ops whose inputs are all such constants run for real on the copies, so a value read back from them
    (`bool(torch.all(mask == 1))`, as transformers 4.46 does to choose the attention path) has its real
    answer instead of stopping the count; everything they meet that is not constant stays fake.

    Fallback when missing: a plain fake (`mode.from_tensor`): a step that reads such a value runs for real.
    """
    converter = getattr(mode, "fake_tensor_converter", None)
    make = getattr(converter, "from_real_tensor", None)
    if make is None:
        missing("torch", "FakeTensorMode.fake_tensor_converter.from_real_tensor", CHECKED,
                "a step that reads a value of its batch (an attention mask's) is counted by running it for real.")
        return mode.from_tensor(tensor)
    return make(mode, tensor.detach().clone(), make_constant=True)


def is_fake(value: object) -> bool:
    """Whether `value` is a fake tensor (`torch._subclasses.fake_tensor.FakeTensor`, checked on torch 2.13.0).

    Fallback when missing: `False` (no fake tensor can exist then: `fake_tensor_mode` returns `None`).
    """
    try:
        from torch._subclasses.fake_tensor import FakeTensor
    except ImportError:
        return False
    return isinstance(value, FakeTensor)


def reparametrized(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor]):
    """A context in which `module`'s parameters and buffers named in `tensors` are those tensors, or `None`.

    Reads `torch.nn.utils.stateless._reparametrize_module` (what `torch.func.functional_call` runs; checked on
    torch 2.13.0). The module's own tensors are put back on exit, also after an exception.

    Fallback when missing: `None`; `count_step` then runs the step for real (its `fallback="real"`).
    """
    try:
        from torch.nn.utils.stateless import _reparametrize_module
    except ImportError:
        missing("torch", "torch.nn.utils.stateless._reparametrize_module", CHECKED,
                "training steps are counted by running them for real (one extra step per batch shape).")
        return None
    return _reparametrize_module(module, dict(tensors), tie_weights=False, strict=False)


def _optimized_module_type():
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:
        return None
    return OptimizedModule


def original_module(module: torch.nn.Module) -> torch.nn.Module | None:
    """The module `torch.compile(module)` wrapped, when `module` is such a wrapper; else `None`.

    Reads `torch._dynamo.eval_frame.OptimizedModule` and its `_orig_mod` (checked on torch 2.13.0).

    Fallback when missing: `None` (nothing is unwrapped): compiled modules are then called through their
    wrapper while counting, which runs them eagerly (`torch.compiler.set_stance("force_eager")`), and torch may
    warn once that global module hooks are set.
    """
    optimized = _optimized_module_type()
    if optimized is None:
        missing("torch", "torch._dynamo.eval_frame.OptimizedModule", CHECKED,
                "torch.compile'd modules are counted through their compiled wrapper, run eagerly.")
        return None
    if isinstance(module, optimized):
        return module._orig_mod
    return None


@contextlib.contextmanager
def uncompiled_submodules(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Replaces every `torch.compile`d submodule of `module` by the module it wraps, until the context exits.

    Yields the module to count: `module` itself, or the module it wraps if `module` was compiled. The compiled
    wrappers (and the graphs Dynamo cached for them) are put back unchanged on exit, so no dispatch mode or
    module hook is ever seen by Dynamo. Parameter names are those of the uncompiled module (no `_orig_mod.`).
    """
    root = module
    while (inner := original_module(root)) is not None:
        root = inner
    swapped = []
    try:
        pending = [root]
        seen = set()
        while pending:
            parent = pending.pop()
            if id(parent) in seen:
                continue
            seen.add(id(parent))
            for name, child in list(parent._modules.items()):
                if child is None:
                    continue
                inner = child
                while (unwrapped := original_module(inner)) is not None:
                    inner = unwrapped
                if inner is not child:
                    swapped.append((parent, name, child))
                    parent._modules[name] = inner
                pending.append(inner)
        yield root
    finally:
        for parent, name, child in reversed(swapped):
            parent._modules[name] = child
