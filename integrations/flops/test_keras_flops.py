"""Traced Keras counts of the reference GPT, one subprocess per backend (Keras picks its backend at import)."""

from __future__ import annotations

import pytest

from carbon_callbacks.flops import transformer_flops
from carbon_callbacks.models.cnn_config import CNN, cnn_flops
from carbon_callbacks.models.config import DENSE, SWITCH, TOP2

from _keras_run import keras_counts  # noqa: E402  (sibling helper module)

#: Few builds: each costs seconds on the JAX backend (ResNet50's weight initializers, tens of seconds).
NAMES = ("dense", "switch", "top2:dense_dispatch", "cnn", "mobilenetv2", "resnet50", "mobilenetv2_224")
CONFIGS = {
    "dense": DENSE,
    "switch": SWITCH,
    "top2:dense_dispatch": TOP2.with_(moe_implementation="dense_dispatch"),
}


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras_backend_matches_analytic(backend):
    out = keras_counts(backend, NAMES)
    assert out["backend"] == backend
    for name, result in out["counts"].items():
        if name not in CONFIGS:
            continue
        analytic = transformer_flops(CONFIGS[name])
        tolerance = 0.01 if name in ("dense", "switch") else 0.02
        assert abs(result["total"] / analytic.hardware_flops - 1) < tolerance, (backend, name)
        assert result["total"] == analytic.hardware_flops, (backend, name)
        assert result["params"] == analytic.params_total, (backend, name)
        assert result["includes_backward"] and result["warnings"] == [], (backend, name)
    if backend == "tensorflow":  # the einsum the stock TF profiler misses is counted, by layer kind too
        breakdown = out["counts"]["top2:dense_dispatch"]["breakdown"]
        assert breakdown["moe_dispatch"] == transformer_flops(CONFIGS["top2:dense_dispatch"]).hardware_breakdown[
            "moe_dispatch"
        ]


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras_cnn_matches_analytic(backend):
    """Strided, dilated depthwise and transposed convolutions: exact on every backend, padding taps included."""
    result = keras_counts(backend, NAMES)["counts"]["cnn"]
    assert result["total"] == cnn_flops(CNN).model_flops, backend
    assert result["params"] == cnn_flops(CNN).params_total, backend
    assert result["includes_backward"] and result["warnings"] == [], backend


def test_keras_applications_mobilenet_agrees_across_backends():
    """keras.applications' MobileNetV2 on 32 x 32 images (strided and depthwise convolutions, built without
    weights): the same count on the three backends. Keras-torch runs the asymmetric "same" stride-2 stem as a
    separate pad and a "valid" convolution: the same taps are counted."""
    totals = {b: keras_counts(b, NAMES)["counts"]["mobilenetv2"]["total"] for b in ("tensorflow", "jax", "torch")}
    assert totals["tensorflow"] == totals["jax"] == totals["torch"], totals


#: keras.applications model -> (its entry in `_published_cnns`, multiply-adds of the stem convolution).
APPLICATIONS = {"resnet50": ("resnet50_v1", 112 * 112 * 7 * 7 * 3 * 64),
                "mobilenetv2_224": ("mobilenetv2", 112 * 112 * 3 * 3 * 3 * 32)}


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
@pytest.mark.parametrize("name", list(APPLICATIONS))
def test_keras_applications_match_published_flops(backend, name):
    """keras.applications' ResNet50 (v1: the stride on the first 1x1 convolution, as in the paper) and MobileNetV2
    at 224 x 224, built without weights: the forward is 2 x the hand count, which is the published figure, on every
    backend; the training step 3 x forward less the image's gradient."""
    from _published_cnns import matches_published, mobilenetv2_macs, resnet50_macs

    published, stem_macs = APPLICATIONS[name]
    macs = resnet50_macs(v1_5=False) if name == "resnet50" else mobilenetv2_macs()
    assert matches_published(published, macs)
    result = keras_counts(backend, NAMES)["counts"][name]
    assert result["params"] == (25_636_712 if name == "resnet50" else 3_538_984)  # Keras's applications table
    assert result["forward"] == 2 * macs, (backend, result["forward"] / (2 * macs))
    assert result["total"] == 3 * 2 * macs - 2 * stem_macs
    assert result["includes_backward"] and result["warnings"] == []
