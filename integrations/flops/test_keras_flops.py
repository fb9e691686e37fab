"""Traced Keras counts of the reference GPT, one subprocess per backend (Keras picks its backend at import)."""

from __future__ import annotations

import pytest

from carbon_callbacks.flops import transformer_flops
from carbon_callbacks.models.cnn_config import CNN, cnn_flops
from carbon_callbacks.models.config import DENSE, SWITCH, TOP2

from _keras_run import keras_counts  # noqa: E402  (sibling helper module)

# Few builds: each costs seconds on the JAX backend.
NAMES = ("dense", "switch", "top2:dense_dispatch", "cnn", "mobilenetv2")
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
        if name in ("cnn", "mobilenetv2"):
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
    """Strided, dilated depthwise and transposed convolutions: exact on every backend (the JAX backend used to
    count the zeros a transposed convolution and a strided convolution's input gradient insert)."""
    result = keras_counts(backend, NAMES)["counts"]["cnn"]
    assert result["total"] == cnn_flops(CNN).model_flops, backend
    assert result["params"] == cnn_flops(CNN).params_total, backend
    assert result["includes_backward"] and result["warnings"] == [], backend


def test_keras_applications_mobilenet_agrees_across_backends():
    """keras.applications' MobileNetV2 (strided and depthwise convolutions, built without weights): the same
    count within 0.5% on the three backends. TensorFlow and JAX agree exactly; Keras-torch pads asymmetric "same"
    convolutions with a separate pad op, whose zeros the torch count takes for real inputs (docs/flops.md)."""
    totals = {b: keras_counts(b, NAMES)["counts"]["mobilenetv2"]["total"] for b in ("tensorflow", "jax", "torch")}
    assert totals["tensorflow"] == totals["jax"]
    assert abs(totals["torch"] / totals["tensorflow"] - 1) < 0.005, totals
