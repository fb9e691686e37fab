"""Traced FLOP counting in JAX: matrix products on the jaxpr of the whole step.

Counts `dot_general` (2 x output elements x contracted length) and `conv_general_dilated` (2 x its multiply-adds
by the convention of `_conv`: every kernel tap at every output position, padding taps included, and none on the
zeros `lhs_dilation` inserts) in the jaxpr and in every jaxpr nested in it (`jit`, `remat`,
`custom_jvp`/`custom_vjp`), multiplying `scan` bodies by their length and `shard_map` bodies (and `pmap`, which
traces to one) by the devices they run on, so that a sharded step is counted once, globally. A `while` body whose
trip count is not static is counted once and reported in `warnings`; of a `cond`'s branches the largest is counted.

A convolution's gradients are themselves convolutions in the jaxpr, and padding taps make their own count depend on
which gradient each one is: the input gradient (JAX writes it with the reversed kernel) and the weight gradient are
each counted as the forward convolution they come from, so a convolution's step is 3 x its forward whatever its
stride and padding. What JAX writes is read through `carbon_callbacks._compat.jax`.

XLA's `cost_analysis` counts a `scan` body once (0.58x on a 2-layer scanned GPT) and skips padding taps, so it
serves only as a cross-check (`xla_flops`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import NamedTuple

import jax

from carbon_callbacks._compat import jax as compat
from carbon_callbacks.flops._conv import conv_macs
from carbon_callbacks.flops._result import FlopCount, finish


def _shape(var) -> tuple[int, ...]:
    return tuple(getattr(var.aval, "shape", ()))  # tokens and other non-array values have no shape


def _dot_general(eqn, producers, backward) -> int | None:
    contract_lhs = compat.dot_contraction(eqn)
    if contract_lhs is None:
        return None
    lhs = _shape(eqn.invars[0])
    contracted = math.prod(lhs[i] for i in contract_lhs)
    return 2 * math.prod(_shape(eqn.outvars[0])) * contracted


def _conv_role(eqn, producers: dict, backward: bool, lhs_dilated: bool, kernel: list, out: list) -> str:
    """`forward`, `input_gradient` or `weight_gradient`: which convolution of its forward's family `eqn` is.

    Outside a backward pass every convolution is a forward one. In it, JAX writes the input gradient with the
    reversed kernel (`compat.kernel_is_reversed`). Where it no longer does, the sizes decide: an lhs-dilated
    convolution whose kernel is larger than its output is the weight gradient of a transposed convolution; any
    other is taken for what its count does not depend on (an input gradient of a strided convolution, or a
    convolution without `lhs_dilation`, which counts the same as a forward or a weight gradient). That miscounts
    the input gradient of a stride-1 convolution that changes the size (`valid`) and the gradients of convolutions
    of inputs smaller than their kernel.
    """
    if not backward:
        return "forward"
    if compat.conv_input_gradient_is_marked():
        return "input_gradient" if compat.kernel_is_reversed(eqn, producers) else "weight_gradient"
    if lhs_dilated:
        return "weight_gradient" if math.prod(kernel) > math.prod(out) else "input_gradient"
    return "weight_gradient"


def _conv(eqn, producers, backward) -> int | None:
    """2 x the multiply-adds of the forward convolution `eqn` is, or is a gradient of (`_conv.conv_macs`).

    A forward convolution does every tap at every output position; with `lhs_dilation` (a transposed
    convolution) every tap at every input position. Its input gradient is a convolution from the output gradient
    (its `window_strides` are the forward's `lhs_dilation`), its weight gradient one whose output is the kernel
    (its `lhs_dilation` is the forward's): each is counted as that forward.
    """
    geometry = compat.conv_geometry(eqn)
    if geometry is None:
        return None
    lhs, rhs, out = _shape(eqn.invars[0]), _shape(eqn.invars[1]), _shape(eqn.outvars[0])
    lhs_spatial = [lhs[i] for i in geometry.lhs_spec[2:]]
    rhs_spatial = [rhs[i] for i in geometry.rhs_spec[2:]]
    out_spatial = [out[i] for i in geometry.out_spec[2:]]
    lhs_dilated = any(d > 1 for d in geometry.lhs_dilation)
    role = _conv_role(eqn, producers, backward, lhs_dilated, rhs_spatial, out_spatial)
    if role == "input_gradient":  # the forward maps this output to this input; it is lhs-dilated if this is strided
        strided = any(s > 1 for s in geometry.window_strides)
        positions, kernels = (out_spatial if strided else lhs_spatial), rhs_spatial
    elif role == "weight_gradient":  # the forward's kernel is this output, its output (gradient) this kernel
        positions, kernels = (lhs_spatial if lhs_dilated else rhs_spatial), out_spatial
    else:
        positions, kernels = (lhs_spatial if lhs_dilated else out_spatial), rhs_spatial
    return 2 * conv_macs(
        batch=out[geometry.out_spec[0]],
        out_features=out[geometry.out_spec[1]],
        in_features_per_group=rhs[geometry.rhs_spec[1]],
        positions=positions,
        kernels=kernels,
    )


_FORMULAS = {"dot_general": _dot_general, "conv_general_dilated": _conv}


#: A name scope around the traced function: under it every backward equation's name stack reads `transpose(...)`,
#: also on JAX releases (0.4.30) that leave the stack of code outside any scope empty; dropped from module paths.
_SCOPE = "carbon_callbacks_count"


class _Walker:
    def __init__(self) -> None:
        self.own: dict[str, int] = defaultdict(int)
        self.total = 0
        self.recomputed = 0  # of `total`: forwards that `jax.checkpoint` recomputes in the backward pass
        self.backward = False
        self.named = True
        self.warnings: list[str] = []
        self.devices: set = set()  # of the meshes and shardings the jaxpr names

    def walk(self, jaxpr, prefix: str, times: int, outer_backward: bool = False, remat: bool = False,
             recompute: bool = False) -> None:
        """Counts `jaxpr`, run `times` times, inside equations named `prefix`; `outer_backward`: inside an equation
        of the backward pass (the equations of a `remat` body, transposed, keep their forward names); `remat`:
        inside the backward of a `jax.checkpoint` body; `recompute`: inside the forward it recomputes."""
        producers = {var: eqn for eqn in jaxpr.eqns for var in eqn.outvars}
        for eqn in jaxpr.eqns:
            stack = compat.name_stack(eqn)
            if stack is None:
                self.named, stack = False, ""
            backward = outer_backward or compat.is_backward(stack)
            recomputed = recompute or (remat and compat.is_recomputation(stack))
            inner = {"remat": remat or compat.differentiated_remat(eqn), "recompute": recomputed}
            self.backward = self.backward or backward
            path = "/".join(p for p in (prefix, *compat.module_path(stack).split("/")) if p and p != _SCOPE)
            name = eqn.primitive.name
            formula = _FORMULAS.get(name)
            if formula is not None:
                flops = formula(eqn, producers, backward)
                if flops is None:
                    self.warnings.append(f"`{name}` at {path or '<top>'}: parameters unreadable, counted as 0")
                    continue
                self.total += flops * times
                self.own[path] += flops * times
                if recomputed:
                    self.recomputed += flops * times
            elif name == "scan":
                for body in compat.scan_body(eqn):
                    self.walk(body, path, times * compat.scan_length(eqn), backward, **inner)
            elif name == "while":
                self.warnings.append(
                    f"`while` loop at {path or '<top>'}: trip count not static, its body counted once"
                )
                for body in compat.while_body(eqn):
                    self.walk(body, path, times, backward, **inner)
            elif name == "cond":
                counts = []
                for branch in compat.cond_branches(eqn):
                    sub = _Walker()
                    sub.walk(branch, path, times, backward, **inner)
                    counts.append(sub)
                if counts:
                    largest = max(counts, key=lambda w: w.total)
                    if len({w.total for w in counts}) > 1:
                        self.warnings.append(f"`cond` at {path or '<top>'}: branches differ, the largest counted")
                    self._merge(largest)
            elif name == "shard_map":  # the body runs on each device of its manual mesh axes, on its shard
                self.devices.update(compat.shard_map_devices(eqn))
                for body in compat.sub_jaxprs(eqn):
                    self.walk(body, path, times * compat.shard_map_copies(eqn), backward, **inner)
            else:
                if name in ("jit", "pjit"):
                    for sharding in compat.jit_shardings(eqn):
                        self.devices.update(sharding.device_set)
                for body in compat.sub_jaxprs(eqn):
                    self.walk(body, path, times, backward, **inner)

    def _merge(self, other: _Walker) -> None:
        self.total += other.total
        self.recomputed += other.recomputed
        self.backward = self.backward or other.backward
        self.named = self.named and other.named
        self.warnings.extend(other.warnings)
        self.devices |= other.devices
        for path, flops in other.own.items():
            self.own[path] += flops


def count_jaxpr(closed_jaxpr) -> _Walker:
    """Walks a closed jaxpr (`jax.make_jaxpr`'s); returns the walker with `total`, `own` (per name-stack path),
    `backward`."""
    walker = _Walker()
    walker.walk(closed_jaxpr.jaxpr, "", 1)
    return walker


class Placement(NamedTuple):
    """Where a traced step runs, for its MFU: the count is that of the whole step on all of these devices.

    Attributes:
        devices: devices of the step: the union of its arguments' shardings, its `jit` shardings and its
            `shard_map` meshes (1 when none names a device).
        processes: processes those devices belong to. Above 1, every process traces the same global step: its
            count is the step of all processes, not this process's share.
    """

    devices: int
    processes: int


def count_placed(fn, *args, **kwargs) -> tuple[FlopCount, Placement]:
    """`count`, and where the step runs (`Placement`): the devices whose chips its FLOPs are spread over."""
    def scoped(*a):
        with jax.named_scope(_SCOPE):  # under a scope, backward equations read `transpose(...)` on jax 0.4 too
            return fn(*a, **kwargs)

    jaxpr = jax.make_jaxpr(scoped)(*args)
    walker = count_jaxpr(jaxpr)
    devices = set(walker.devices)
    for leaf in jax.tree_util.tree_leaves((args, kwargs)):
        sharding = getattr(leaf, "sharding", None)  # jax.Array, jax.ShapeDtypeStruct (None when not given)
        if isinstance(sharding, jax.sharding.Sharding):
            devices.update(sharding.device_set)
    placement = Placement(max(len(devices), 1), max(len({d.process_index for d in devices}), 1))
    result = finish(
        walker.total,
        framework="jax",
        method="traced:jaxpr(dot_general+conv; scan x length; shard_map x devices)",
        includes_backward=walker.backward or not walker.named,
        own_flops=dict(walker.own),
        warnings=list(dict.fromkeys(walker.warnings)),
        recomputed=walker.recomputed,
    )
    return result, placement


def count(fn, *args, **kwargs) -> FlopCount:
    """Counts the FLOPs of `fn(*args, **kwargs)` from its jaxpr; see `carbon_callbacks.flops.count`.

    Nothing runs: `jax.make_jaxpr` traces `fn` with abstract values. A function without a backward pass (no
    transposed products in its jaxpr) is counted as 3 x its forward. A step sharded over a mesh (a `jit` with
    shardings, sharded arguments, `shard_map`, `pmap`) is counted once, globally: the FLOPs of all its devices.
    """
    return count_placed(fn, *args, **kwargs)[0]


def xla_flops(fn, *args, **kwargs) -> float | None:
    """XLA's own `cost_analysis()["flops"]` for `fn` (a cross-check; it counts a `scan` body once)."""
    compiled = jax.jit(lambda *a: fn(*a, **kwargs)).lower(*args).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return analysis.get("flops") if analysis else None
