"""Traced FLOP counting in torch: torch's FLOP formulas, the ones it lacks, and a lean dispatch mode to apply them.

torch's counter has no formula for the CPU kernel of `scaled_dot_product_attention` (it counts it as zero: a
small GPT reads 0.933x of its exact count) nor for grouped matmuls (`torch._grouped_mm`, the usual MoE path).
Both are added here. Convolutions use `_conv.conv_macs` (torch's own forward formula: every tap at every output
position, padding included); its backward formula is replaced because it counts a grouped convolution's weight
gradient `groups` times. Attention backward is counted as 2 x forward (the four products of the gradients), as
the analytic counter does; torch's own formula for the fused GPU kernels also counts the score recompute of
flash attention (2.5 x forward), which is replaced by the same 2 x forward so that every device gives one number.

`Counter` applies these formulas and torch's (`torch.utils.flop_counter.flop_registry`) from a small dispatch
mode of its own, and counts what `FlopCounterMode` counts with them: each op overload is looked up once per count
(its formula, whether `FlopCounterMode` would decompose it), every other call is one dictionary lookup before the
op runs, and higher-order operators (`cond`, triton kernels) are handed to `FlopCounterMode` itself.
`FlopCounterMode` spends more Python on every op (it rebuilds a set of size queries and tries a decomposition on
each call) and its `ModuleTracker` sets autograd hooks on the inputs and outputs of every module call.

FLOPs are attributed to the innermost module running (`Counter.own`), named by its path under the counted model
(`GPT2LMHeadModel.transformer.h.0.attn.c_attn`). In the forward pass, hooks on the model's modules (on every
module, through global hooks, when a plain function is counted) keep the module running; in the backward pass an
op belongs to the module whose forward created the autograd node that runs it: a counted op's output is read for
its node (`grad_fn`) at the next op, once autograd has attached it. A forward recomputed in the backward pass
(activation checkpointing) runs under the module hooks again, with grad mode on inside the autograd engine: its
FLOPs are counted, and kept apart in `Counter.recomputed` (hardware FLOPs include them, model FLOPs do not).
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, shape_wrapper

from carbon_callbacks._compat import torch as torch_compat
from carbon_callbacks._compat.torch import current_graph_task_id
from carbon_callbacks.flops._conv import conv_macs
from carbon_callbacks.flops._result import FlopCount, finish

logger = logging.getLogger(__name__)
aten = torch.ops.aten


def _attention_products(query_shape, key_shape, value_shape) -> int:
    """2 x (scores + weighted values) FLOPs: 2 b h s_q s_k (d_qk + d_v)."""
    b, h, s_q, d_qk = query_shape[-4:] if len(query_shape) >= 4 else (1, *query_shape)
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * (d_qk + d_v)


def _sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return _attention_products(query_shape, key_shape, value_shape)


def _sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * _attention_products(query_shape, key_shape, value_shape)


def _grouped_mm(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """`torch._grouped_mm(a, b, offs)`: the output's elements x the contracted length x 2.

    When both operands are 2-D (an MoE weight gradient: `offs` splits the contracted dimension into groups), the
    output `(groups, m, n)` has one block per group and each contracts only its group's share, so the products are
    m x n x the whole contracted length, not groups times that.
    """
    if out_shape is None:
        return 0
    contracted = a_shape[-1]
    if len(a_shape) == 2 and len(b_shape) == 2 and len(out_shape) == 3:
        return 2 * out_shape[-2] * out_shape[-1] * contracted
    return 2 * math.prod(out_shape) * contracted


def _conv_products(x_shape, w_shape, out_shape, transposed: bool) -> int:
    """Multiply-adds of `aten.convolution`: every tap at every output position, padding taps included.

    A transposed convolution does the products of the convolution it is the adjoint of (from its output to its
    input): every tap at every input position, the taps whose output is cropped included; the zeros a stride
    inserts between its inputs are not products. This is torch's own forward formula (`conv_flop_count`).
    """
    if transposed:  # w: (in, out / groups, *k)
        positions, out_features, per_group = x_shape[2:], x_shape[1], w_shape[1]
    else:  # w: (out, in / groups, *k)
        positions, out_features, per_group = out_shape[2:], out_shape[1], w_shape[1]
    return conv_macs(batch=x_shape[0], out_features=out_features, in_features_per_group=per_group,
                     positions=positions, kernels=w_shape[2:])


def _conv_forward(x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, *args, out_shape=None, **kwargs):
    return 2 * _conv_products(x_shape, w_shape, out_shape, bool(transposed))


def _conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                   _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """The input gradient and the weight gradient each do the forward's products once (torch's own formula
    counts a grouped convolution's weight gradient `groups` times: a depthwise one, once per channel)."""
    products = _conv_products(x_shape, w_shape, grad_out_shape, bool(transposed))
    return 2 * products * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def formulas() -> dict:
    """Extra `custom_mapping` entries for `FlopCounterMode`."""
    mapping = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = _sdpa_forward
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_flash_attention_backward",
        "_scaled_dot_product_efficient_attention_backward",
        "_scaled_dot_product_cudnn_attention_backward",
    ):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = _sdpa_backward
    for name in ("convolution", "_convolution", "convolution_overrideable"):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = _conv_forward
    if hasattr(aten, "convolution_backward"):
        mapping[aten.convolution_backward] = _conv_backward
    for name in ("_grouped_mm",):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = _grouped_mm
    return mapping


#: The size and stride queries `FlopCounterMode` answers `NotImplemented` to, so that the tensor answers them
#: (they reach a mode only for tensors with sizes of their own, such as nested jagged tensors).
_SIZE_QUERIES = frozenset(
    op for op in (
        getattr(getattr(torch.ops.aten, packet, None), overload, None) for packet, overload in (
            ("sym_is_contiguous", "default"), ("is_contiguous", "default"), ("is_contiguous", "memory_format"),
            ("is_strides_like_format", "default"), ("is_non_overlapping_and_dense", "default"), ("size", "default"),
            ("sym_size", "default"), ("stride", "default"), ("sym_stride", "default"), ("storage_offset", "default"),
            ("sym_storage_offset", "default"), ("numel", "default"), ("sym_numel", "default"), ("dim", "default"),
        )
    ) if op is not None
) | {torch.ops.prim.layout.default}
_DEVICE_QUERY = torch.ops.prim.device.default

# What the mode does with an op overload (`Counter.plan`); any other plan is `(packet, formula, decomposes)`.
_RUN = "run"  # no formula, no decomposition: run it
_DEVICE = "device"  # prim.device: answered from the tensor
_SIZE = "size"  # a size query: NotImplemented, as FlopCounterMode answers
_HIGHER_ORDER = "higher order"  # a higher-order operator: counted by FlopCounterMode


@functools.cache
def _mode_class():
    """The dispatch mode of `Counter`, or `None` where torch has no `TorchDispatchMode` (`_compat.torch`)."""
    base = torch_compat.dispatch_mode_base()
    if base is None:
        return None

    class _CountingMode(base):
        """Runs every op; counts those with a formula into its `Counter`."""

        supports_higher_order_operators = True

        def __init__(self, counter: Counter) -> None:
            super().__init__()
            self.counter = counter

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counter = self.counter
            plan = counter.plans.get(func)
            if plan is None:
                plan = counter.plans[func] = counter.plan(func)
            if plan is _DEVICE:
                return args[0].device  # what the next mode (FakeTensorMode) answers, without its dispatch
            if plan is _SIZE:
                return NotImplemented
            if counter.pending:
                counter.label_nodes()
            kwargs = kwargs if kwargs else {}
            if plan is _RUN:
                return func(*args, **kwargs)
            if plan is _HIGHER_ORDER:
                return counter.higher_order(func, args, kwargs)
            _packet, formula, decomposes = plan
            if decomposes:  # as FlopCounterMode does: the parts of a composite op are counted, under this mode
                with self:
                    out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
            out = func(*args, **kwargs)
            if formula is not None:
                counter.add(formula(*args, **kwargs, out_val=out), out)
            return out

    return _CountingMode


class Counter:
    """Counts the FLOPs of the torch ops run inside it, by module; what `FlopCounterMode` counts, for less Python.

    Args:
        root: the model the FLOPs are attributed within: hooks on its modules, removed on exit. `None` sees every
            module (global module hooks), for a plain function. Defaults to `None`.

    Attributes:
        total: FLOPs counted.
        backward_flops: the part of `total` run by the autograd engine (the backward pass).
        recomputed: the part of `total` run by forwards that activation checkpointing re-runs in the backward pass
            (a module called while the autograd engine runs, with grad mode on: `torch.utils.checkpoint`, reentrant
            or not, and the Hugging Face `gradient_checkpointing_enable` built on it).
        own: FLOPs by the path of the innermost module that ran them (`""`: outside every module).
    """

    def __init__(self, root: torch.nn.Module | None = None) -> None:
        self.root = root
        self.total = 0
        self.backward_flops = 0
        self.recomputed = 0
        self.own: defaultdict[str, int] = defaultdict(int)
        self.plans: dict = {}
        self.pending: list = []  # (output of a counted forward op, module path): its autograd node, to label
        self._formulas = {
            **flop_registry,
            **{k: v if getattr(v, "_get_raw", False) else shape_wrapper(v) for k, v in formulas().items()},
        }
        self._nodes: dict = {}  # autograd node -> path of the module whose forward created it
        self._stack: list[tuple[torch.nn.Module, str]] = []  # modules running their forward, innermost last
        self._names = None
        self._seen = None
        self._hooks: list = []
        self._mode = None

    def __enter__(self) -> Counter:
        self.total = self.backward_flops = self.recomputed = 0
        self.own.clear()
        self._hook_modules()
        try:
            self._mode = _mode_class()(self)
            self._mode.__enter__()
        except BaseException:
            self._unhook()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._mode.__exit__(*exc)
        finally:
            self._mode = None
            self._unhook()
            self.plans.clear()
            self.pending.clear()
            self._nodes.clear()
            self._stack.clear()

    def own_flops(self) -> dict[str, int]:
        """`own` without its zeros."""
        return {path: flops for path, flops in self.own.items() if flops}

    # ------------------------------------------------------------------------------------------ the mode's side
    def plan(self, func):
        """What the mode does with the op overload `func`, decided at its first call in this count."""
        if func is _DEVICE_QUERY:
            return _DEVICE
        if func in _SIZE_QUERIES:
            return _SIZE
        packet = getattr(func, "overloadpacket", None)
        if packet is None:
            return _HIGHER_ORDER
        formula = self._formulas.get(packet)
        decomposes = torch_compat.may_decompose(func)
        if formula is None and not decomposes:
            return _RUN
        return packet, formula, decomposes

    def add(self, flops: int, out=None) -> None:
        """Counts `flops` for the module running (forward) or the module of the autograd node running (backward)."""
        backward = current_graph_task_id() != -1
        if self._stack:  # a forward, also one recomputed in the backward pass
            path = self._stack[-1][1]
            if torch.is_grad_enabled():
                if out is not None:
                    self.pending.append((out, path))
                if backward:  # a module's forward run again by the autograd engine: activation checkpointing
                    self.recomputed += flops
        elif backward:
            path = self._nodes.get(torch_compat.current_autograd_node(), "")
        else:
            path = ""
        self.total += flops
        self.own[path] += flops
        if backward:
            self.backward_flops += flops

    def label_nodes(self) -> None:
        """Labels the autograd nodes of the counted forward ops with their module, now that autograd set them."""
        for out, path in self.pending:
            node = _grad_fn(out)
            if node is not None:
                self._nodes[node] = path
        self.pending.clear()

    def higher_order(self, op, args, kwargs):
        """A higher-order operator, counted as `FlopCounterMode` counts it (`cond`: its costlier branch)."""
        stock = _StockCounter()
        with stock:
            out = op(*args, **kwargs)
        self.add(stock.total)
        return out

    # ------------------------------------------------------------------------------------------ module hooks
    def _hook_modules(self) -> None:
        if self.root is None:
            self._names, self._seen = weakref.WeakKeyDictionary(), weakref.WeakSet()
            self._hooks = [
                torch.nn.modules.module.register_module_forward_pre_hook(self._enter_any),
                torch.nn.modules.module.register_module_forward_hook(self._exit, always_call=True),
            ]
            return
        prefix = type(self.root).__name__
        self._names = {}
        for path, module in self.root.named_modules(remove_duplicate=False):
            self._names[module] = f"{prefix}.{path}" if path else prefix
        for module in self._names:
            self._hooks.append(module.register_forward_pre_hook(self._enter))
            self._hooks.append(module.register_forward_hook(self._exit, always_call=True))

    def _unhook(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._names = self._seen = None

    def _enter(self, module, args) -> None:
        self._stack.append((module, self._names[module]))

    def _enter_any(self, module, args) -> None:
        self._stack.append((module, self._name(module)))

    def _exit(self, module, args, output) -> None:
        if self._stack and self._stack[-1][0] is module:
            self._stack.pop()

    def _name(self, module) -> str:
        """The name `ModuleTracker` gives: the first module seen by its class, the modules under it by path."""
        names = self._names
        if module not in names:
            names[module] = type(module).__name__
        name = names[module]
        if module not in self._seen:
            for child_name, child in module.named_children():
                names[child] = f"{name}.{child_name}"
                self._name(child)
            self._seen.add(module)
        return name


def _grad_fn(out):
    if isinstance(out, torch.Tensor):
        return out.grad_fn
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, torch.Tensor) and item.grad_fn is not None:
                return item.grad_fn
    return None


class _StockCounter(FlopCounterMode):
    """`FlopCounterMode` with this library's formulas, counting the FLOPs run by the autograd engine apart: what
    counts where `Counter`'s dispatch mode cannot be built, and inside a higher-order operator."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=formulas())
        self.backward_flops = 0
        self.recomputed = 0  # not told apart here: FlopCounterMode's module tracker does not say

    @property
    def total(self) -> int:
        return self.get_total_flops()

    def own_flops(self) -> dict[str, int]:
        return own_flops(self.get_flop_counts())

    def _count_flops(self, func_packet, out, args, kwargs):
        before = self.flop_counts["Global"].get(func_packet, 0)
        result = super()._count_flops(func_packet, out, args, kwargs)
        if current_graph_task_id() != -1 or self.mod_tracker.is_bw:
            self.backward_flops += self.flop_counts["Global"].get(func_packet, 0) - before
        return result


def new_counter(root: torch.nn.Module | None = None) -> Counter | _StockCounter:
    """A `Counter` attributing FLOPs within `root`; `FlopCounterMode` where torch lacks what `Counter` needs."""
    return Counter(root) if _mode_class() is not None else _StockCounter()


def own_flops(counts: dict[str, dict]) -> dict[str, int]:
    """FLOPs counted at each module path minus those of its nearest counted descendants."""
    totals = {name: sum(ops.values()) for name, ops in counts.items() if name != "Global"}
    own = {}
    for name, total in totals.items():
        children = [c for c in totals if c.startswith(name + ".")]
        nearest = [c for c in children if not any(c.startswith(o + ".") for o in children if o != c)]
        own[name] = total - sum(totals[c] for c in nearest)
    unattributed = sum(counts.get("Global", {}).values()) - sum(own.values())
    if unattributed:
        own[""] = unattributed
    return {name: flops for name, flops in own.items() if flops}


def _meta_args(obj):
    if isinstance(obj, torch.Tensor):
        return torch.empty_like(obj, device="meta").requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_meta_args(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _meta_args(v) for k, v in obj.items()}
    return obj


def _float_outputs(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out] if out.requires_grad else []
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _float_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _float_outputs(o)]
    return [t for t in (getattr(out, "loss", None), getattr(out, "logits", None)) if isinstance(t, torch.Tensor)]


def _run_module(module: torch.nn.Module, args, kwargs, meta: bool) -> Counter | _StockCounter:
    """Forward + backward of the sum of the outputs, on the meta device (no memory, no compute) or for real."""
    counter = new_counter(module)
    if meta:
        params = {
            name: torch.empty_like(p, device="meta").requires_grad_(p.requires_grad)
            for name, p in module.named_parameters()
        }
        buffers = {name: torch.empty_like(b, device="meta") for name, b in module.named_buffers()}
        args, kwargs = _meta_args(args), _meta_args(kwargs)
        with counter:
            out = torch.func.functional_call(module, {**params, **buffers}, args, kwargs)
            outputs = _float_outputs(out)
            if outputs:
                sum(o.float().sum() for o in outputs).backward()
        return counter
    with counter:
        out = module(*args, **kwargs)
        outputs = _float_outputs(out)
        if outputs:
            params = [p for p in module.parameters() if p.requires_grad]
            torch.autograd.grad(sum(o.float().sum() for o in outputs), params, allow_unused=True)
    return counter


def count(fn, *args, **kwargs) -> FlopCount:
    """Counts the FLOPs of `fn(*args, **kwargs)`; see `carbon_callbacks.flops.count`.

    A `torch.nn.Module` is counted forward + backward (of the sum of its outputs) on the `meta` device, and on
    its own device if it cannot run on `meta` (data-dependent shapes, `.item()`). Any other callable is run once
    as is: pass a whole training step to count it as it runs.
    """
    if isinstance(fn, torch.nn.Module):
        return count_module(fn, args, kwargs)
    counter = new_counter()
    with counter:
        fn(*args, **kwargs)
    return _result(counter, "traced:torch-flop-counter(as run)", [])


def count_module(module, args, kwargs, try_meta: bool = True) -> FlopCount:
    """Counts a module forward + backward of the sum of its outputs, on `meta` when `try_meta` and it can."""
    warnings: list[str] = []
    where = "real"
    counter = None
    if try_meta:
        try:
            counter, where = _run_module(module, args, kwargs, meta=True), "meta"
        except Exception as err:  # noqa: BLE001 - any failure on meta means: run it for real.
            logger.info("counting %s on the meta device failed (%s); running it on its device", type(module), err)
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            warnings.append(f"could not run on the meta device ({type(err).__name__}: {first_line}); ran it for real")
    if counter is None:
        counter = _run_module(module, args, kwargs, meta=False)
    return _result(counter, f"traced:torch-flop-counter({where}; module forward+backward of sum(outputs))", warnings)


def _result(counter: Counter | _StockCounter, method: str, warnings: list[str]) -> FlopCount:
    total = counter.total
    includes_backward = counter.backward_flops > 0
    return finish(
        total,
        framework="torch",
        method=method,
        includes_backward=includes_backward,
        own_flops=counter.own_flops(),
        warnings=warnings,
    )
