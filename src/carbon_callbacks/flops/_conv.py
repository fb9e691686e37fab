"""Exact multiply-adds of a convolution, shared by the torch, JAX and TensorFlow counters. Pure Python.

The convention (docs/flops.md, "Convolutions"): a convolution does one multiply-add for each (output element,
kernel tap, input channel of its group) whose tap lands on a real input element. Taps that land on padding, or on
the zeros a transposed convolution (`lhs_dilation`) inserts between input elements, are not counted; nor are
products whose output the operation does not return. This set of products is a property of the function the
convolution computes, not of how a framework runs it, so every framework counts the same number, and the
backward pass (input gradient and weight gradient: each the same products, reordered) counts 2 x forward.

Along each spatial dimension the products separate, so a convolution's count is
`batch x out_features x in_features_per_group x prod(per-dimension pairs)`, where a dimension's pairs are the
(output position, tap) pairs that land on a real input; `window_pairs` computes them in O(taps) steps, without
looking at the tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _first_residue(stride: int, offset: int, modulus: int) -> int | None:
    """The smallest `r` in `[0, modulus / gcd)` with `(r * stride + offset) % modulus == 0`, or `None`."""
    period = modulus // math.gcd(stride, modulus)
    for r in range(period):
        if (r * stride + offset) % modulus == 0:
            return r
    return None


def window_pairs(
    size: int,
    out: int,
    kernel: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    lhs_dilation: int = 1,
    pad_lo: int = 0,
) -> int:
    """(output position, kernel tap) pairs along one dimension whose tap lands on a real input element.

    Output position `o` (0 <= o < `out`) with tap `j` (0 <= j < `kernel`) reads position
    `p = o * stride + j * dilation - pad_lo` of the input after `lhs_dilation` (`lhs_dilation - 1` zeros inserted
    between neighbours); it is real when `0 <= p <= (size - 1) * lhs_dilation` and `p % lhs_dilation == 0`.
    Negative `pad_lo` crops.

    Args:
        size: input elements along the dimension (before `lhs_dilation`).
        out: output positions computed along it.
        kernel: taps of the kernel along it.
        stride: output stride (`window_strides`). Defaults to `1`.
        dilation: kernel dilation (`rhs_dilation`). Defaults to `1`.
        lhs_dilation: input dilation, as in a transposed convolution. Defaults to `1`.
        pad_lo: padding before the first input element. Defaults to `0`.

    Returns:
        The number of pairs.

    Example:
        >>> window_pairs(16, 16, 3, pad_lo=1)  # 3x3 'same' row: the first and last output miss one tap
        46
    """
    if size <= 0 or out <= 0 or kernel <= 0:
        return 0
    last = (size - 1) * lhs_dilation
    total = 0
    for j in range(kernel):
        offset = j * dilation - pad_lo  # p = o * stride + offset
        low = max(0, -(offset // stride))  # ceil(-offset / stride), at least 0
        high = min(out - 1, (last - offset) // stride)
        if high < low:
            continue
        if lhs_dilation == 1:
            total += high - low + 1
            continue
        residue = _first_residue(stride, offset, lhs_dilation)
        if residue is None:
            continue
        period = lhs_dilation // math.gcd(stride, lhs_dilation)
        total += (high - residue) // period - (low - 1 - residue) // period
    return total


def conv_macs(
    *,
    batch: int,
    out_features: int,
    in_features_per_group: int,
    sizes: Sequence[int],
    outs: Sequence[int],
    kernels: Sequence[int],
    strides: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    lhs_dilations: Sequence[int] | None = None,
    pads_lo: Sequence[int] | None = None,
) -> int:
    """Multiply-adds of one N-D convolution (forward); see `window_pairs` for the per-dimension arguments.

    Args:
        batch: batch elements of the output (for `batch_group_count > 1`, the output's batch).
        out_features: output channels.
        in_features_per_group: input channels each output channel reads (the kernel's input dimension).
        sizes, outs, kernels: per spatial dimension, the input size, output size and kernel size.
        strides, dilations, lhs_dilations, pads_lo: per spatial dimension. Default to 1s and 0s.
    """
    n = len(sizes)
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    lhs_dilations = lhs_dilations or [1] * n
    pads_lo = pads_lo or [0] * n
    pairs = 1
    for i in range(n):
        pairs *= window_pairs(
            sizes[i], outs[i], kernels[i], stride=strides[i], dilation=dilations[i],
            lhs_dilation=lhs_dilations[i], pad_lo=pads_lo[i],
        )
    return batch * out_features * in_features_per_group * pairs


def same_pad_lo(size: int, out: int, kernel: int, stride: int, dilation: int) -> int:
    """Padding before the first element under TensorFlow/XLA `SAME`: half the total, the odd one after."""
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2
