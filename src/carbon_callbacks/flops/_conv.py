"""Multiply-adds of a convolution, shared by the torch, JAX and TensorFlow counters and the analytic CNN count.
Pure Python.

The convention (docs/flops.md, "Convolutions") is the one of torch's `FlopCounterMode`, fvcore and the published
tables of CNN FLOPs: a convolution does one multiply-add for each (output element, kernel tap, input channel of
its group), **taps that land on padding included**. A transposed convolution does the products of the convolution
it is the adjoint of (from its output back to its input): one for each (input element, kernel tap, output channel
of its group); the zeros it inserts between its input elements (`lhs_dilation`) are not inputs, and the kernels
skip them. The input gradient and the weight gradient of a convolution each do its products once, so a training
step of a convolution is 3 x its forward, as for a matrix product.

Per spatial dimension the count is therefore a product of two sizes, whatever the stride, dilation and padding:
positions x taps, where the positions are the convolution's outputs (a transposed convolution's inputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def conv_macs(
    *,
    batch: int,
    out_features: int,
    in_features_per_group: int,
    positions: Sequence[int],
    kernels: Sequence[int],
) -> int:
    """Multiply-adds of one N-D convolution's forward: every kernel tap at every position, padding included.

    Args:
        batch: batch elements.
        out_features: output channels (of a transposed convolution: its input channels, the outputs of the
            convolution it is the adjoint of).
        in_features_per_group: input channels each output channel reads (the kernel's input dimension; of a
            transposed convolution: its output channels per group).
        positions: per spatial dimension, the output size (of a transposed convolution: its input size).
        kernels: per spatial dimension, the kernel size (taps, whatever its dilation).

    Returns:
        `batch x out_features x in_features_per_group x prod(positions) x prod(kernels)`.

    Example:
        >>> conv_macs(batch=1, out_features=64, in_features_per_group=3, positions=[112, 112], kernels=[7, 7])
        118013952
    """
    return batch * out_features * in_features_per_group * math.prod(positions) * math.prod(kernels)
