"""ResNet-50 and MobileNetV2 counted by hand (pure Python), and the published figures they are checked against.

The counts follow docs/flops.md ("Convolutions"): a multiply-add for every kernel tap at every output position,
padding taps included, and one per weight of the classifier per image; nothing else (pooling, norms, activations,
biases). The published "FLOPs" or "GFLOPS" of these networks count the same multiply-adds of one forward pass of
one 224 x 224 image:

- ResNet-50 v1.5 (the stride of each downsampling block on its 3x3 convolution, as in torchvision): torchvision's
  model table, 4.09 GFLOPS (`_ops: 4.089` in its weights' metadata,
  https://pytorch.org/vision/stable/models/generated/torchvision.models.resnet50.html).
- ResNet-50 v1 (the stride on the first 1x1 convolution, as in the paper and `keras.applications.ResNet50`):
  He et al., "Deep Residual Learning for Image Recognition" (2015), Table 1: 3.8 x 10^9 FLOPs (multiply-adds).
- MobileNetV2 (width 1.0): torchvision's model table, 0.30 GFLOPS (`_ops: 0.301`,
  https://pytorch.org/vision/stable/models/generated/torchvision.models.mobilenet_v2.html); Sandler et al.,
  "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (2018), Table 4: 300M multiply-adds.
"""

from __future__ import annotations

#: Published multiply-adds of one forward pass at 224 x 224, and how far from it a count may be: half a unit of
#: the last digit given (torchvision gives three decimals of GMACs), or, for the paper's one-decimal 3.8, 2%.
PUBLISHED_MACS = {
    "resnet50_v1.5": (4.089e9, 0.0005e9),  # torchvision `_ops`
    "resnet50_v1": (3.8e9, 0.02 * 3.8e9),  # He et al. 2015, Table 1
    "mobilenetv2": (0.301e9, 0.0005e9),  # torchvision `_ops`; Sandler et al. 2018: 300M
}

#: (expansion, output channels, blocks, stride of the first block) of MobileNetV2's inverted residual stages.
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                      (6, 320, 1, 1))
#: (blocks, bottleneck width, stride of the first block) of ResNet-50's four stages.
RESNET50_STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))


def resnet50_macs(v1_5: bool = True, size: int = 224, classes: int = 1000) -> int:
    """Multiply-adds of one forward pass of ResNet-50 on one `size` x `size` image."""
    res = size // 2
    macs = res * res * 7 * 7 * 3 * 64  # 7x7 stride-2 stem
    res //= 2  # 3x3 stride-2 max pool
    c_in = 64
    for blocks, width, stride in RESNET50_STAGES:
        for i in range(blocks):
            s = stride if i == 0 else 1
            out = res // s
            first = (res if v1_5 else out) ** 2 * c_in * width  # v1 strides the 1x1, v1.5 the 3x3
            macs += first + out * out * 9 * width * width + out * out * width * 4 * width
            if i == 0:
                macs += out * out * c_in * 4 * width  # the 1x1 projection shortcut, strided
            c_in, res = 4 * width, out
    return macs + 4 * 512 * classes


def mobilenetv2_macs(size: int = 224, classes: int = 1000) -> int:
    """Multiply-adds of one forward pass of MobileNetV2 (width 1.0) on one `size` x `size` image."""
    res = -(-size // 2)
    macs = res * res * 9 * 3 * 32  # 3x3 stride-2 stem
    c_in = 32
    for expansion, c_out, blocks, stride in MOBILENETV2_STAGES:
        for i in range(blocks):
            out = -(-res // (stride if i == 0 else 1))
            hidden = c_in * expansion
            if expansion != 1:
                macs += res * res * c_in * hidden  # 1x1 expansion
            macs += out * out * 9 * hidden + out * out * hidden * c_out  # 3x3 depthwise, 1x1 projection
            c_in, res = c_out, out
    return macs + res * res * 320 * 1280 + 1280 * classes


def matches_published(name: str, macs: int) -> bool:
    """Whether `macs` is the published figure, to the precision it is published with (`PUBLISHED_MACS`)."""
    value, tolerance = PUBLISHED_MACS[name]
    return abs(macs - value) <= tolerance
