"""Traced FLOP counting in torch: `FlopCounterMode` plus the formulas it lacks.

torch's counter has no formula for the CPU kernel of `scaled_dot_product_attention` (it counts it as zero: a
small GPT reads 0.933x of its exact count) nor for grouped matmuls (`torch._grouped_mm`, the usual MoE path).
Both are added here. Convolutions are counted exactly (`_conv.conv_macs`): torch's own formula charges every
output position the whole kernel, padding taps included, and a transposed convolution every tap of every input
element, cropped or not. Attention backward is counted as 2 x forward (the four products of the gradients), as
the analytic counter does; torch's own formula for the fused GPU kernels also counts the score recompute of
flash attention (2.5 x forward), which is replaced by the same 2 x forward so that every device gives one number.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

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


class _Counter(FlopCounterMode):
    """`FlopCounterMode` that also counts the FLOPs run by the autograd engine (the backward pass)."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=formulas())
        self.backward_flops = 0

    def _count_flops(self, func_packet, out, args, kwargs):
        before = self.flop_counts["Global"].get(func_packet, 0)
        result = super()._count_flops(func_packet, out, args, kwargs)
        if current_graph_task_id() != -1 or self.mod_tracker.is_bw:
            self.backward_flops += self.flop_counts["Global"].get(func_packet, 0) - before
        return result


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


def _run_module(module: torch.nn.Module, args, kwargs, meta: bool) -> _Counter:
    """Forward + backward of the sum of the outputs, on the meta device (no memory, no compute) or for real."""
    counter = _Counter()
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
    counter = _Counter()
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


def _result(counter: _Counter, method: str, warnings: list[str]) -> FlopCount:
    total = counter.get_total_flops()
    includes_backward = counter.backward_flops > 0
    return finish(
        total,
        framework="torch",
        method=method,
        includes_backward=includes_backward,
        own_flops=own_flops(counter.get_flop_counts()),
        warnings=warnings,
    )
