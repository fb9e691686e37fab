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


@pytest.mark.parametrize("name", ["dense", "switch", "top2"])
def test_breakdown_matches_analytic(models, name):
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
def test_convolution_counts_products_with_real_inputs(name, op, in_shape, kernel, kwargs):
    """Forward and forward + both gradients: the products with a real input element, no padding taps, no cropped
    taps of a transposed conv (torch's own formula counts both); sum(conv(ones, ones)) counts them."""
    groups = kwargs.get("groups", 1)
    fn = getattr(torch.nn.functional, op)
    x = torch.ones(2, 4, *in_shape)
    w = torch.ones(*((4, 6 // groups) if "transpose" in op else (4 if groups == 4 else 6, 4 // groups)), *kernel)
    products = int(fn(x, w, **kwargs).sum())
    assert count(lambda x, w: fn(x, w, **kwargs), x, w).executed == 2 * products
    x.requires_grad_(), w.requires_grad_()
    step = count(lambda x, w: fn(x, w, **kwargs).sum().backward(), x, w)
    assert step.includes_backward and step.executed == 3 * 2 * products


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
