"""What the JAX FLOP counter (`flops/_jax.py`) reads from inside JAX: jaxpr equation parameters, name stacks, and
the shape of the convolution gradients JAX's autodiff writes.

Each function names the JAX releases it was checked on. When what it reads is not there, it calls
`carbon_callbacks._compat.missing` (a warning once, or `InternalApiMissing` in strict mode) and returns the
fallback its docstring gives.
"""

from __future__ import annotations

import math
import re
import struct
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax

from carbon_callbacks._compat import missing

#: The JAX releases these functions were checked on.
CHECKED = "jax 0.10.2"


def _missing(api: str, consequence: str) -> None:
    missing("jax", api, CHECKED, consequence)


# --- equations and nested jaxprs ---------------------------------------------------------------------------------


def name_stack(eqn) -> str | None:
    """The equation's name stack as text, e.g. `transpose(jvp(Block_0))/Dense_1`.

    Checked on jax 0.10.2: `eqn.source_info.name_stack`, whose `str` wraps the scopes a transformation (`jvp`,
    `transpose`, `vmap`) applied to in `name(...)`.

    Returns:
        The text, or `None` where equations carry no name stack (fallback: no per-module breakdown, and the
        backward pass cannot be told from the forward; `flops._jax` then counts what it traced as a whole step).
    """
    try:
        return str(eqn.source_info.name_stack)
    except AttributeError:
        _missing("eqn.source_info.name_stack", "traced JAX counts have no per-module breakdown, and a function is "
                 "taken to hold its backward pass.")
        return None


_TRANSFORM = re.compile(r"\w+\(|\)")


def module_path(stack: str) -> str:
    """The module path of a name stack, its transformations dropped: `transpose(jvp(Block_0))/Dense_1` ->
    `Block_0/Dense_1`. Checked on jax 0.10.2 (the `name(...)` wrapping of `name_stack`)."""
    return _TRANSFORM.sub("", stack)


def is_backward(stack: str) -> bool:
    """Whether an equation with this name stack belongs to a backward pass: JAX's autodiff names the equations it
    transposes `transpose(jvp(...))`. Checked on jax 0.10.2."""
    return "transpose(" in stack


#: The name scope JAX's transpose of a `jax.checkpoint` (`remat`) body puts around the forward it recomputes.
_RECOMPUTED = "rematted_computation"


def differentiated_remat(eqn) -> bool:
    """Whether an equation is the backward of a `jax.checkpoint` (`remat`) body, which first recomputes its
    forward. Checked on jax 0.10.2: the `remat2` primitive (`checkpoint` before) with `differentiated=True`."""
    return eqn.primitive.name in ("remat2", "checkpoint", "remat") and bool(eqn.params.get("differentiated"))


def is_recomputation(stack: str) -> bool:
    """Whether an equation inside a `differentiated_remat` body recomputes the forward: JAX's `remat_transpose`
    evaluates that part under the name scope `rematted_computation` (checked on jax 0.10.2; elsewhere no
    recompute is told apart and the model FLOPs of a remat step keep it)."""
    return _RECOMPUTED in stack.split("/")


def _jaxprs_in_params():
    """JAX's own walk over an equation's nested jaxprs: `jax.extend.core` has it, older releases `jax.core`."""
    try:
        from jax.extend.core import jaxprs_in_params
    except ImportError:
        return getattr(jax.core, "jaxprs_in_params", None)
    return jaxprs_in_params


_JAXPRS_IN_PARAMS = _jaxprs_in_params()


def sub_jaxprs(eqn) -> list:
    """The jaxprs nested in an equation's parameters (`jit`, `remat`, `custom_jvp_call`, `shard_map`, ...).

    Checked on jax 0.10.2 (`jax.extend.core.jaxprs_in_params`) and 0.4.30 (`jax.core.jaxprs_in_params`, where
    older releases keep it). Fallback where both are missing: the parameters' values that have `eqns`, or a `jaxpr`
    attribute that has them.
    """
    if _JAXPRS_IN_PARAMS is None:
        _missing("jax.extend.core.jaxprs_in_params", "nested jaxprs are found by looking at every parameter.")
        found = []
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    found.append(inner)
        return found
    return list(_JAXPRS_IN_PARAMS(eqn.params))


def _param(eqn, key: str, consequence: str) -> Any:
    try:
        return eqn.params[key]
    except KeyError:
        _missing(f"the `{key}` parameter of `{eqn.primitive.name}`", consequence)
        return None


def scan_length(eqn) -> int:
    """The trip count of a `scan` equation (`params["length"]`, checked on jax 0.10.2). Fallback: 1 (the body
    counted once, as XLA's cost analysis does)."""
    length = _param(eqn, "length", "scan bodies are counted once, not once per iteration.")
    return 1 if length is None else int(length)


def scan_body(eqn):
    """The body of a `scan` equation (`params["jaxpr"]`, a closed jaxpr; checked on jax 0.10.2). Fallback: the
    nested jaxprs `sub_jaxprs` finds."""
    body = _param(eqn, "jaxpr", "the scan body is found among its nested jaxprs.")
    return sub_jaxprs(eqn) if body is None else [body.jaxpr]


def while_body(eqn):
    """The body of a `while` equation (`params["body_jaxpr"]`, checked on jax 0.10.2). Fallback: every nested
    jaxpr, the loop condition included (it holds no products in practice)."""
    body = _param(eqn, "body_jaxpr", "every jaxpr nested in a while loop is counted once.")
    return sub_jaxprs(eqn) if body is None else [body.jaxpr]


def cond_branches(eqn) -> list:
    """The branches of a `cond` equation (`params["branches"]`, checked on jax 0.10.2). Fallback: the nested
    jaxprs, each taken for a branch."""
    branches = _param(eqn, "branches", "the nested jaxprs of a cond are taken for its branches.")
    return sub_jaxprs(eqn) if branches is None else [b.jaxpr for b in branches]


def shard_map_copies(eqn) -> int:
    """How many times a `shard_map` body runs: once per device along the mesh axes it makes manual.

    Checked on jax 0.10.2: `params["mesh"].shape` and `params["newly_manual_axes"]` (earlier releases name the
    axes left automatic instead, `params["auto"]`; both are read). `jax.pmap` traces to the same `shard_map`.
    Fallback: every axis of the mesh (a `shard_map` without `axis_names`, the usual one).
    """
    mesh = _param(eqn, "mesh", "a shard_map body is counted once, for one device.")
    if mesh is None:
        return 1
    sizes = dict(mesh.shape)
    if "newly_manual_axes" in eqn.params:
        manual = set(eqn.params["newly_manual_axes"])
    elif "auto" in eqn.params:
        manual = set(sizes) - set(eqn.params["auto"])
    else:
        _missing("the manual axes of `shard_map` (`newly_manual_axes`)", "a shard_map body is counted once per "
                 "device of its whole mesh.")
        manual = set(sizes)
    copies = 1
    for axis in manual:
        copies *= int(sizes[axis])
    return copies


def shard_map_devices(eqn) -> list:
    """The devices of a `shard_map` equation's mesh (`params["mesh"]`, a `jax.sharding.Mesh`; checked on jax
    0.10.2). A mesh known only abstractly (`AbstractMesh`, under `jax.set_mesh`) has none. Fallback where the mesh
    is not there: none, and the step's devices are told from its arguments and `jit` shardings alone."""
    from jax.sharding import AbstractMesh, Mesh

    mesh = eqn.params.get("mesh")
    if isinstance(mesh, Mesh):
        return list(mesh.devices.flat)
    if not isinstance(mesh, AbstractMesh):
        _missing("the mesh of `shard_map`", "the devices of a step are told from its arguments and jit shardings "
                 "only.")
    return []


def jit_shardings(eqn) -> list:
    """The shardings a `jit` equation puts on its inputs and outputs (`params["in_shardings"]` and
    `params["out_shardings"]`, checked on jax 0.10.2, where the primitive is `jit`; `pjit` before), those that are
    `jax.sharding.Sharding`s. Fallback: none."""
    import jax

    try:
        given = (*eqn.params["in_shardings"], *eqn.params["out_shardings"])
    except KeyError:
        _missing("the shardings of a `jit` equation", "the devices of a step are told from its arguments and "
                 "shard_map meshes only.")
        return []
    return [s for s in given if isinstance(s, jax.sharding.Sharding)]


def dot_contraction(eqn) -> tuple[int, ...] | None:
    """The contracted dimensions of the left operand of a `dot_general` (`params["dimension_numbers"]`, checked
    on jax 0.10.2). Fallback: `None`, and the product is counted as 0 and reported."""
    numbers = _param(eqn, "dimension_numbers", "matrix products are counted as 0 and reported.")
    if numbers is None:
        return None
    (contract_lhs, _), _ = numbers
    return tuple(contract_lhs)


# --- convolutions --------------------------------------------------------------------------------------------------


class ConvGeometry(NamedTuple):
    """What a `conv_general_dilated` equation does, per spatial dimension, and where its dimensions are."""

    lhs_spec: tuple[int, ...]  # batch, feature, spatial... of the input
    rhs_spec: tuple[int, ...]  # out feature, in feature, spatial... of the kernel
    out_spec: tuple[int, ...]  # batch, feature, spatial... of the output
    window_strides: tuple[int, ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]


def conv_geometry(eqn) -> ConvGeometry | None:
    """The layout and strides of a `conv_general_dilated` equation.

    Checked on jax 0.10.2: `params["dimension_numbers"]` (a `ConvDimensionNumbers` of `lhs_spec`, `rhs_spec`,
    `out_spec`), `params["window_strides"]`, `params["lhs_dilation"]`, `params["rhs_dilation"]`. Fallback: `None`,
    and the convolution is counted as 0 and reported.
    """
    try:
        params = eqn.params
        dims = params["dimension_numbers"]
        n = len(dims.lhs_spec) - 2
        ones = (1,) * n
        ints = lambda values: tuple(int(v) for v in values)  # noqa: E731 - jax 0.4 gives NumPy integers
        return ConvGeometry(
            ints(dims.lhs_spec), ints(dims.rhs_spec), ints(dims.out_spec), ints(params["window_strides"] or ones),
            ints(params["lhs_dilation"] or ones), ints(params["rhs_dilation"] or ones),
        )
    except (KeyError, AttributeError):
        _missing("the parameters of `conv_general_dilated` (dimension_numbers, strides, dilations)",
                 "convolutions are counted as 0 and reported.")
        return None


#: Ops JAX's convolution transpose rule may put between the reversed kernel and the convolution (a cast).
_CASTS = ("convert_element_type",)


def kernel_is_reversed(eqn, producers: dict) -> bool:
    """Whether a convolution's kernel comes out of `rev`: how JAX's autodiff writes a convolution's input gradient.

    Checked on jax 0.10.2 (`_conv_general_dilated_transpose_lhs`): the input gradient of a convolution is a
    convolution of the output gradient with `lax.rev` of the kernel (cast to the gradient's dtype where they
    differ), bound in the same jaxpr; its weight gradient is a convolution of the input with the output gradient,
    no `rev`. `producers` maps each variable of the equation's jaxpr to the equation that made it.
    `conv_input_gradient_is_marked` checks once that JAX still does this.
    """
    var = eqn.invars[1]
    for _ in range(4):
        producer = producers.get(var)
        if producer is None:
            return False
        if producer.primitive.name == "rev":
            return True
        if producer.primitive.name not in _CASTS:
            return False
        var = producer.invars[0]
    return False


_MARKED: list[bool] = []


def conv_input_gradient_is_marked() -> bool:
    """Whether JAX still writes a convolution's input gradient with a reversed kernel (`kernel_is_reversed`).

    Traces the gradient of one strided convolution once per process and looks. Fallback where it does not: the
    gradient convolutions are told apart by their sizes (`flops._jax` says how), and this warns once.
    """
    if not _MARKED:
        import jax
        import jax.numpy as jnp

        def loss(x, k):
            return jax.lax.conv_general_dilated(x, k, (2,), "SAME").sum()

        closed = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(jnp.ones((1, 1, 8)), jnp.ones((1, 1, 3)))
        producers = {v: e for e in closed.jaxpr.eqns for v in e.outvars}
        convs = [e for e in closed.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
        marked = [kernel_is_reversed(e, producers) for e in convs]
        _MARKED.append(len(convs) == 3 and sum(marked) == 1)
        if not _MARKED[0]:
            _missing("a reversed kernel (`rev`) in a convolution's input gradient", "convolution gradients are told "
                     "apart by their sizes, which can miscount the gradients of convolutions on tiny inputs.")
    return _MARKED[0]


# --- the Flax adapter: the step's arguments, processes, devices ----------------------------------------------------
# Public JAX and Flax APIs, gathered here so the adapter maps hooks only; `jit_cache_size` alone reads an internal.



def jit_cache_size(fn: Any) -> int | None:
    """Entries in a jitted function's compilation cache (`jax.jit`'s `_cache_size()`; an `nnx.jit` function keeps
    its `jax.jit` function as `jitted_fn`), or `None` for a function that is not jitted.

    Checked on jax 0.4.30 to 0.10.2 and flax 0.8.5 to 0.12.8. Only an optimisation reads it (skipping the
    signature of a step whose cache did not grow), so a JAX without it costs a tree flatten per step and nothing
    else: no warning.
    """
    size = getattr(fn, "_cache_size", None) or getattr(getattr(fn, "jitted_fn", None), "_cache_size", None)
    if size is None:
        return None
    try:
        return int(size())
    except Exception:
        return None


_PYTHON_SCALARS = (bool, int, float, complex)


def _leaf_signature(leaf: Any) -> tuple:
    shape = getattr(leaf, "shape", None)
    if shape is not None:
        return (tuple(shape), getattr(leaf, "dtype", None))
    if isinstance(leaf, _PYTHON_SCALARS):  # `TrainState.create(...).step` is a Python 0, later an int32 array
        return ((), jax.dtypes.canonicalize_dtype(type(leaf)))
    return (type(leaf),)


def step_signature(args: tuple, kwargs: dict) -> tuple:
    """A hashable key of the arguments' tree structure and leaf shapes/dtypes (not their values)."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    return (treedef, *map(_leaf_signature, leaves))


def process_sum(values: Sequence[float]) -> list[float]:
    """Sums `values` over JAX processes with `multihost_utils.process_allgather` (call on every process).

    The float64 totals travel bit-exact as pairs of uint32 words (JAX keeps 32-bit types unless x64 is on) and
    are summed on the host in float64, in process order, so every process gets the same result.
    """
    import numpy as np
    from jax.experimental import multihost_utils

    words = struct.unpack(f"<{2 * len(values)}I", struct.pack(f"<{len(values)}d", *values))
    gathered = multihost_utils.process_allgather(np.asarray(words, dtype=np.uint32))
    rows = np.asarray(gathered).reshape(jax.process_count(), -1)
    per_process = [struct.unpack(f"<{len(values)}d", struct.pack(f"<{2 * len(values)}I", *row.tolist()))
                   for row in rows]
    return [math.fsum(column) for column in zip(*per_process)]


def process_host(source: str = "jax: the host names of every process, gathered"):
    """This process's host and place on it (`carbon_callbacks._host.Host`): with several processes, every process's
    host name is gathered with `multihost_utils.process_allgather` (call on every process) and its local rank is the
    number of processes before it on the same host. The GPUs it drives are its `jax.local_devices()`' CUDA
    ordinals (`local_hardware_id`); on CPU and TPU, none."""
    import numpy as np

    from carbon_callbacks._host import from_framework, from_host_names, host_name

    gpus = [getattr(d, "local_hardware_id", None) for d in jax.local_devices() if d.platform == "gpu"]
    devices = gpus if gpus and all(g is not None for g in gpus) else None
    if jax.process_count() == 1:
        return from_framework(0, 0, 1, devices, "jax: one process")
    from jax.experimental import multihost_utils

    name = host_name().encode("utf-8")[:255]
    padded = np.frombuffer(name.ljust(256, b"\0"), dtype=np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), 256)
    names = [bytes(row.astype(np.uint8).tolist()).rstrip(b"\0").decode("utf-8", "replace") for row in rows]
    return from_host_names(names, jax.process_index(), devices, source)


def count_params(args: tuple) -> int | None:
    """Parameters of the model among the step's arguments: a `TrainState`'s `params` or an NNX module's `Param`s."""
    nnx = sys.modules.get("flax.nnx")  # only if the user imported it
    for arg in args:
        if nnx is not None and isinstance(arg, nnx.Module):
            params = nnx.state(arg, nnx.Param)
        else:
            params = getattr(arg, "params", None)
        if params is not None:
            return sum(int(getattr(leaf, "size", 0)) for leaf in jax.tree_util.tree_leaves(params))
    return None


def token_leaves(args: tuple):
    """(shape, is_integer) of the step's array arguments, for the batch's token ids."""
    for leaf in jax.tree_util.tree_leaves(args):
        shape = getattr(leaf, "shape", None)
        if shape is not None:
            yield tuple(shape), jax.numpy.issubdtype(leaf.dtype, jax.numpy.integer)


def chips_of(args: tuple) -> int:
    """Chips the step runs on: the devices its arguments are placed on (a mesh's, or one device) in every process.

    A step over a device mesh (data parallel over its devices) runs on all of them, so its MFU is over all of them.
    """
    devices = set()
    for leaf in jax.tree_util.tree_leaves(args):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.Sharding):
            devices.update(sharding.device_set)
    local = all(d.process_index == jax.process_index() for d in devices)
    return max(len(devices), 1) * (jax.process_count() if local else 1)


def block(out: Any) -> None:
    """Waits for the step that produced `out` (nothing to wait for once a later call took its donated arrays)."""
    if out is not None:
        try:
            jax.block_until_ready(out)
        except Exception:  # a donated (deleted) array: its step is done
            pass
