"""Shape and exact FLOP count of the reference CNN, shared by its torch, Flax and Keras versions. Pure Python.

The model is a tiny U-Net autoencoder on `image_size` x `image_size` images with `in_channels` channels, every
convolution with a bias, GELU between them:

| layer | operation | channels | size |
|---|---|---|---|
| `stem` | 3x3 convolution, stride 1, `same` | in -> w | S |
| `down` | 4x4 convolution, stride 2, `same` (padding 1 each side): the downsampling path | w -> 2w | S / 2 |
| `mid` | 3x3 depthwise convolution, dilation 2, `same` (padding 2 each side) | 2w -> 2w | S / 2 |
| `up` | 2x2 transposed convolution, stride 2: the upsampling path | 2w -> w | S |
| `head` | 1x1 convolution of `concat(up, stem)` (the skip connection) | 2w -> in | S |

The loss is the mean squared error to the input. `cnn_flops(config)` counts it by the convention of
docs/flops.md ("Convolutions"), the one of torch's `FlopCounterMode` and of published CNN FLOPs: a multiply-add for
every kernel tap at every output position, padding taps included (a transposed convolution: every tap at every
input position), 2 FLOPs each; the input and weight gradients each repeat the forward's products; the input image
takes no gradient, so `stem` has no input gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from carbon_callbacks._errors import InvalidInputError, check_count
from carbon_callbacks.flops._conv import conv_macs

#: The layers, in order.
CNN_LAYERS = ("stem", "down", "mid", "up", "head")


@dataclass(frozen=True)
class CNNConfig:
    """Shape of the reference CNN.

    Args:
        batch_size: images per batch. Defaults to `4`.
        image_size: height and width, a multiple of 2. Defaults to `16`.
        in_channels: image channels. Defaults to `3`.
        width: channels of the full-resolution layers (the downsampled ones have 2 x `width`). Defaults to `8`.
    """

    batch_size: int = 4
    image_size: int = 16
    in_channels: int = 3
    width: int = 8

    def __post_init__(self) -> None:
        for name in ("batch_size", "image_size", "in_channels", "width"):
            check_count(name, getattr(self, name))
        if self.image_size % 2 or self.image_size < 4:
            raise InvalidInputError(f"image_size must be an even number of at least 4, got {self.image_size}.")

    def with_(self, **changes) -> CNNConfig:
        """A copy with `changes` applied."""
        return replace(self, **changes)


@dataclass(frozen=True)
class CNNFlops:
    """Exact FLOPs and parameters of the reference CNN.

    Attributes:
        model_flops: FLOPs of one training step (forward, input gradients, weight gradients).
        forward_flops: FLOPs of the forward pass.
        params_total: parameters (weights and biases).
        forward_by_layer: forward FLOPs of each layer in `CNN_LAYERS`.
    """

    model_flops: int
    forward_flops: int
    params_total: int
    forward_by_layer: dict[str, int] = field(default_factory=dict)


def cnn_flops(config: CNNConfig) -> CNNFlops:
    """Exact FLOPs per training step and parameters of the reference CNN; see the module docstring.

    Example:
        >>> cnn_flops(CNNConfig()).model_flops
        5332992
    """
    b, s, c, w = config.batch_size, config.image_size, config.in_channels, config.width
    half = s // 2

    def macs(out_features, per_group, positions, kernel):
        return conv_macs(batch=b, out_features=out_features, in_features_per_group=per_group,
                         positions=[positions] * 2, kernels=[kernel] * 2)

    forward = {
        "stem": 2 * macs(w, c, s, 3),
        "down": 2 * macs(2 * w, w, half, 4),
        "mid": 2 * macs(2 * w, 1, half, 3),
        # a transposed convolution does the products of the convolution it is the adjoint of (S -> S / 2)
        "up": 2 * macs(2 * w, w, half, 2),
        "head": 2 * macs(c, 2 * w, s, 1),
    }
    step = sum(3 * flops for flops in forward.values()) - forward["stem"]  # the image takes no gradient
    params = (
        (9 * c * w + w)
        + (16 * w * 2 * w + 2 * w)
        + (9 * 2 * w + 2 * w)
        + (4 * 2 * w * w + w)
        + (2 * w * c + c)
    )
    return CNNFlops(model_flops=step, forward_flops=sum(forward.values()), params_total=params,
                    forward_by_layer=forward)


#: The reference CNN of tests and benchmarks.
CNN = CNNConfig()
