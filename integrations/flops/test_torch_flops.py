"""Traced torch counts of the reference GPT against the analytic counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from carbon_callbacks.flops import count, transformer_flops
from carbon_callbacks.models.config import VARIANTS
from carbon_callbacks.models.torch_gpt import GPT, loss_fn, random_batch, train_step

CASES = VARIANTS


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: GPT(cfg) for name, cfg in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_module_count_matches_analytic_hardware_flops(models, name):
    cfg = CASES[name]
    tokens, _ = random_batch(cfg)
    result = count(models[name], tokens)
    analytic = transformer_flops(cfg)
    assert result.framework == "torch" and result.includes_backward
    assert "meta" in result.method and result.warnings == ()
    assert abs(result.total / analytic.hardware_flops - 1) < (0.01 if name in ("dense", "switch", "top2") else 0.02)
    assert result.total == analytic.hardware_flops  # exact on these shapes


@pytest.mark.parametrize("name", list(CASES))
def test_breakdown_matches_analytic(models, name):
    """Forward and backward FLOPs land in the layer kind of the module that runs them (compute-all-then-mask MoE
    included: its masking products are the MoE block's own, `moe_dispatch`)."""
    cfg = CASES[name]
    result = count(models[name], random_batch(cfg)[0])
    analytic = transformer_flops(cfg).hardware_breakdown
    assert {k: result.breakdown[k] for k in analytic} == analytic
    assert result.breakdown["other"] == 0


def test_params_match_analytic(models):
    for name, model in models.items():
        assert sum(p.numel() for p in model.parameters()) == transformer_flops(CASES[name]).params_total, name


def test_train_step_counted_as_run(models):
    cfg = CASES["switch"]
    model = models["switch"]
    tokens, targets = random_batch(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    result = count(train_step, model, optimizer, tokens, targets)
    assert result.includes_backward and result.method == "traced:torch-flop-counter(as run)"
    assert result.total == result.executed == transformer_flops(cfg).hardware_flops


def test_forward_only_function_is_tripled_and_says_so(models):
    cfg = CASES["dense"]
    tokens, targets = random_batch(cfg)
    with torch.no_grad():
        result = count(lambda t, y: loss_fn(models["dense"](t), y), tokens, targets)
    assert not result.includes_backward and "x3" in result.method
    assert result.total == 3 * result.executed == transformer_flops(cfg).model_flops


def test_stock_counter_misses_cpu_attention(models):
    """What the extra formula fixes: FlopCounterMode alone counts CPU scaled-dot-product attention as zero."""
    cfg = CASES["dense"]
    tokens, targets = random_batch(cfg)
    with FlopCounterMode(display=False) as counter:
        loss_fn(models["dense"](tokens), targets).backward()
    assert counter.get_total_flops() / transformer_flops(cfg).model_flops == pytest.approx(14 / 15)


def test_falls_back_from_meta_with_a_warning():
    class NeedsValues(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8, bias=False)

        def forward(self, x):
            return self.lin(x) * float(x.abs().max().item() > 0)

    result = count(NeedsValues(), torch.ones(4, 8))
    assert result.total == 2 * (2 * 4 * 8 * 8)  # forward + weight gradient; the input takes no gradient
    assert "real" in result.method and "meta device" in result.warnings[0]


#: (name, functional op, input spatial shape, kernel spatial shape, keywords); 4 input channels.
CONVS = [
    ("1d-strided", "conv1d", (9,), (3,), dict(stride=2, padding=1)),
    ("2d-strided-dilated-grouped", "conv2d", (8, 7), (3, 3), dict(stride=(2, 1), padding=2, dilation=2, groups=2)),
    ("2d-depthwise", "conv2d", (7, 7), (3, 3), dict(stride=2, padding=1, groups=4)),
    ("3d-strided", "conv3d", (5, 6, 7), (2, 3, 2), dict(stride=(2, 1, 2), padding=(1, 1, 0))),
    ("1d-transposed", "conv_transpose1d", (6,), (4,), dict(stride=3, padding=1, output_padding=2)),
    ("2d-transposed-grouped", "conv_transpose2d", (5, 4), (3, 3), dict(stride=2, padding=1, output_padding=1,
                                                                      groups=2)),
    ("3d-transposed-dilated", "conv_transpose3d", (3, 4, 3), (2, 2, 3), dict(stride=2, dilation=(1, 2, 1),
                                                                          padding=(0, 1, 1))),
]


@pytest.mark.parametrize(("name", "op", "in_shape", "kernel", "kwargs"), CONVS, ids=[c[0] for c in CONVS])
def test_convolution_counts_every_tap_at_every_position(name, op, in_shape, kernel, kwargs):
    """Forward: torch's own formula (`conv_flop_count`: every tap at every output position, padding included; a
    transposed conv every tap at every input position). Forward + both gradients: 3 x that (torch's own backward
    formula counts a grouped conv's weight gradient `groups` times)."""
    from torch.utils.flop_counter import conv_flop_count

    groups = kwargs.get("groups", 1)
    fn = getattr(torch.nn.functional, op)
    x = torch.ones(2, 4, *in_shape)
    w = torch.ones(*((4, 6 // groups) if "transpose" in op else (4 if groups == 4 else 6, 4 // groups)), *kernel)
    y = fn(x, w, **kwargs)
    forward = conv_flop_count(list(x.shape), list(w.shape), list(y.shape), transposed="transpose" in op)
    assert count(lambda x, w: fn(x, w, **kwargs), x, w).executed == forward
    x.requires_grad_(), w.requires_grad_()
    step = count(lambda x, w: fn(x, w, **kwargs).sum().backward(), x, w)
    assert step.includes_backward and step.executed == 3 * forward


def test_reference_cnn_matches_analytic():
    from carbon_callbacks.models import torch_cnn
    from carbon_callbacks.models.cnn_config import CNN, cnn_flops

    model = torch_cnn.CNN(CNN)
    result = count(model, torch_cnn.random_batch(CNN))
    assert "meta" in result.method and result.warnings == ()
    assert result.total == cnn_flops(CNN).model_flops
    assert sum(p.numel() for p in model.parameters()) == cnn_flops(CNN).params_total


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="no torch._grouped_mm")
def test_grouped_mm_weight_gradient_counts_each_token_once():
    """The MoE path of transformers 5: tokens sorted by expert, one grouped matmul. Its weight gradient is a
    grouped matmul of two 2-D operands whose groups split the token dimension: 64 x 32 x 96 products, not 4x."""
    tokens = torch.randn(64, 32, requires_grad=True)
    experts = torch.randn(4, 32, 96, requires_grad=True)
    offsets = torch.tensor([16, 32, 48, 64], dtype=torch.int32)
    try:
        torch._grouped_mm(tokens, experts, offsets)
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"torch._grouped_mm does not run here: {err}")
    result = count(lambda a, b: torch._grouped_mm(a, b, offsets).backward(torch.ones(64, 96)), tokens, experts)
    assert result.executed == 3 * 2 * 64 * 32 * 96


def _resnet50() -> torch.nn.Module:
    """ResNet-50 v1.5 as torchvision builds it (the stride on each downsampling block's 3x3 convolution)."""
    from _published_cnns import RESNET50_STAGES

    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, c_in: int, width: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width),
            )
            self.shortcut = nn.Identity() if stride == 1 and c_in == 4 * width else nn.Sequential(
                nn.Conv2d(c_in, 4 * width, 1, stride, bias=False), nn.BatchNorm2d(4 * width))

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c_in = 64
    for blocks, width, stride in RESNET50_STAGES:
        for i in range(blocks):
            layers.append(Bottleneck(c_in, width, stride if i == 0 else 1))
            c_in = 4 * width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


def _mobilenetv2() -> torch.nn.Module:
    """MobileNetV2 (width 1.0) as torchvision builds it."""
    from _published_cnns import MOBILENETV2_STAGES

    nn = torch.nn

    def conv_bn_relu(c_in, c_out, kernel, stride=1, groups=1):
        return [nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                nn.BatchNorm2d(c_out), nn.ReLU6()]

    class InvertedResidual(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
            super().__init__()
            hidden = c_in * expansion
            self.body = nn.Sequential(
                *(conv_bn_relu(c_in, hidden, 1) if expansion != 1 else []),
                *conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
            )
            self.residual = stride == 1 and c_in == c_out

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    layers, c_in = conv_bn_relu(3, 32, 3, 2), 32
    for expansion, c_out, blocks, stride in MOBILENETV2_STAGES:
        for i in range(blocks):
            layers.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expansion))
            c_in = c_out
    return nn.Sequential(*layers, *conv_bn_relu(320, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(1280, 1000))


#: name -> (builder, parameters torchvision lists, multiply-adds of the stem convolution, whose input takes no
#: gradient).
PUBLISHED = {
    "resnet50_v1.5": (_resnet50, 25_557_032, 112 * 112 * 7 * 7 * 3 * 64),
    "mobilenetv2": (_mobilenetv2, 3_504_872, 112 * 112 * 3 * 3 * 3 * 32),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_cnn_matches_published_flops(name):
    """ResNet-50 and MobileNetV2 at 224 x 224: the forward is 2 x the published multiply-adds (torchvision's table,
    which counts padding taps as we do), the step 3 x forward less the image's gradient."""
    from _published_cnns import matches_published, mobilenetv2_macs, resnet50_macs

    build, params, stem_macs = PUBLISHED[name]
    torch.manual_seed(0)
    model = build().eval()
    assert sum(p.numel() for p in model.parameters()) == params
    macs = resnet50_macs() if name.startswith("resnet") else mobilenetv2_macs()
    assert matches_published(name, macs)
    images = torch.zeros(1, 3, 224, 224)

    def forward(x):
        with torch.no_grad():
            return model(x)

    assert count(forward, images).executed == 2 * macs
    step = count(model, images)
    assert "meta" in step.method and step.includes_backward
    assert step.total == 3 * 2 * macs - 2 * stem_macs
