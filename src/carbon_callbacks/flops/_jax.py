"""Traced FLOP counting in JAX: matrix products on the jaxpr of the whole step.

Counts `dot_general` (2 x output elements x contracted length) and `conv_general_dilated` (2 x the multiply-adds
with a real input element, `_conv.conv_macs`: the zeros of padding and of `lhs_dilation` are not products) in the
jaxpr and in every jaxpr nested in it (`jit`, `remat`, `custom_jvp`/`custom_vjp`, `shard_map`), multiplying
`scan` bodies by their length. A `while` body whose trip count is not static is counted once and reported in
`warnings`; of a `cond`'s branches the largest is counted.

XLA's `cost_analysis` counts a `scan` body once (0.58x on a 2-layer scanned GPT), so it serves only as a
cross-check (`xla_flops`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import jax

from carbon_callbacks.flops._conv import conv_macs
from carbon_callbacks.flops._result import FlopCount, finish

_WRAPPER = re.compile(r"\w+\(|\)")


def _shape(var) -> tuple[int, ...]:
    return tuple(getattr(var.aval, "shape", ()))


def _dot_general(eqn) -> int:
    (contract_lhs, _), _ = eqn.params["dimension_numbers"]
    lhs = _shape(eqn.invars[0])
    contracted = math.prod(lhs[i] for i in contract_lhs)
    return 2 * math.prod(_shape(eqn.outvars[0])) * contracted


def _conv(eqn) -> int:
    """2 x the multiply-adds with a real input element (`_conv.window_pairs`): taps on padding or on the zeros
    of `lhs_dilation` (a strided convolution's input gradient, a transposed convolution) are not products."""
    params = eqn.params
    lhs, rhs, out = _shape(eqn.invars[0]), _shape(eqn.invars[1]), _shape(eqn.outvars[0])
    dims = params["dimension_numbers"]
    lhs_spatial = [lhs[i] for i in dims.lhs_spec[2:]]
    rhs_spatial = [rhs[i] for i in dims.rhs_spec[2:]]
    out_spatial = [out[i] for i in dims.out_spec[2:]]
    n = len(out_spatial)
    return 2 * conv_macs(
        batch=out[dims.out_spec[0]],
        out_features=out[dims.out_spec[1]],
        in_features_per_group=rhs[dims.rhs_spec[1]],
        sizes=lhs_spatial,
        outs=out_spatial,
        kernels=rhs_spatial,
        strides=params.get("window_strides") or [1] * n,
        dilations=params.get("rhs_dilation") or [1] * n,
        lhs_dilations=params.get("lhs_dilation") or [1] * n,
        pads_lo=[lo for lo, _ in params["padding"]],
    )


_FORMULAS = {"dot_general": _dot_general, "conv_general_dilated": _conv}


class _Walker:
    def __init__(self) -> None:
        self.own: dict[str, int] = defaultdict(int)
        self.total = 0
        self.backward = False
        self.warnings: list[str] = []

    def walk(self, jaxpr, prefix: str, times: int) -> None:
        for eqn in jaxpr.eqns:
            stack = str(eqn.source_info.name_stack)
            if "transpose(" in stack:
                self.backward = True
            path = "/".join(p for p in (prefix, _WRAPPER.sub("", stack)) if p)
            name = eqn.primitive.name
            formula = _FORMULAS.get(name)
            if formula is not None:
                flops = formula(eqn) * times
                self.total += flops
                self.own[path] += flops
                continue
            params = eqn.params
            if name == "scan":
                self.walk(params["jaxpr"].jaxpr, path, times * int(params["length"]))
            elif name == "while":
                self.warnings.append(
                    f"`while` loop at {path or '<top>'}: trip count not static, its body counted once"
                )
                self.walk(params["body_jaxpr"].jaxpr, path, times)
            elif name == "cond":
                counts = []
                for branch in params["branches"]:
                    sub = _Walker()
                    sub.walk(branch.jaxpr, path, times)
                    counts.append(sub)
                largest = max(counts, key=lambda w: w.total)
                if len({w.total for w in counts}) > 1:
                    self.warnings.append(f"`cond` at {path or '<top>'}: branches differ, the largest counted")
                self._merge(largest)
            else:
                for key, value in params.items():
                    if key in ("update_jaxpr",):  # scatter combiners: no products
                        continue
                    inner = getattr(value, "jaxpr", value)
                    if hasattr(inner, "eqns"):
                        self.walk(inner, path, times)

    def _merge(self, other: _Walker) -> None:
        self.total += other.total
        self.backward = self.backward or other.backward
        self.warnings.extend(other.warnings)
        for path, flops in other.own.items():
            self.own[path] += flops


def count_jaxpr(closed_jaxpr) -> _Walker:
    """Walks a (closed) jaxpr; returns the walker with `total`, `own` (per name-stack path), `backward`."""
    walker = _Walker()
    walker.walk(getattr(closed_jaxpr, "jaxpr", closed_jaxpr), "", 1)
    return walker


def count(fn, *args, **kwargs) -> FlopCount:
    """Counts the FLOPs of `fn(*args, **kwargs)` from its jaxpr; see `carbon_callbacks.flops.count`.

    Nothing runs: `jax.make_jaxpr` traces `fn` with abstract values. A function without a backward pass (no
    transposed products in its jaxpr) is counted as 3 x its forward.
    """
    jaxpr = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
    walker = count_jaxpr(jaxpr)
    return finish(
        walker.total,
        framework="jax",
        method="traced:jaxpr(dot_general+conv; scan x length)",
        includes_backward=walker.backward,
        own_flops=dict(walker.own),
        warnings=list(dict.fromkeys(walker.warnings)),
    )


def xla_flops(fn, *args, **kwargs) -> float | None:
    """XLA's own `cost_analysis()["flops"]` for `fn` (a cross-check; it counts a `scan` body once)."""
    compiled = jax.jit(lambda *a: fn(*a, **kwargs)).lower(*args).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return analysis.get("flops") if analysis else None
