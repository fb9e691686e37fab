"""The same reference model counted through torch, JAX and Keras agrees within 1% (the CNN within 0.5%)."""

from __future__ import annotations

import pytest
from test_keras_flops import NAMES  # noqa: E402

from carbon_callbacks.flops import count
from carbon_callbacks.models.config import DENSE, SWITCH

from _keras_run import keras_counts  # noqa: E402  (sibling helper module)


def _torch_count(cfg):
    from carbon_callbacks.models import torch_gpt

    return count(torch_gpt.GPT(cfg), torch_gpt.random_batch(cfg)[0]).total


def _jax_count(cfg):
    from carbon_callbacks.models import flax_gpt

    model, params = flax_gpt.init(cfg)
    tokens, targets = flax_gpt.random_batch(cfg)
    return count(flax_gpt.make_train_step(model), params, tokens, targets).total


@pytest.fixture(scope="module")
def keras_tf():
    return keras_counts("tensorflow", NAMES)["counts"]  # the same call as test_keras_flops: one subprocess


@pytest.mark.parametrize(("name", "cfg"), [("dense", DENSE), ("switch", SWITCH)])
def test_torch_jax_keras_agree(keras_tf, name, cfg):
    counts = {"torch": _torch_count(cfg), "jax": _jax_count(cfg), "keras-tf": keras_tf[name]["total"]}
    low, high = min(counts.values()), max(counts.values())
    assert high / low - 1 < 0.01, counts


def test_cnn_agrees_across_torch_flax_and_every_keras_backend():
    from carbon_callbacks.models import flax_cnn, torch_cnn
    from carbon_callbacks.models.cnn_config import CNN

    model, params = flax_cnn.init(CNN)
    counts = {
        "torch": count(torch_cnn.CNN(CNN), torch_cnn.random_batch(CNN)).total,
        "flax": count(flax_cnn.make_train_step(model), params, flax_cnn.random_batch(CNN)).total,
    }
    for backend in ("tensorflow", "jax", "torch"):
        counts[f"keras-{backend}"] = keras_counts(backend, NAMES)["counts"]["cnn"]["total"]
    low, high = min(counts.values()), max(counts.values())
    assert high / low - 1 < 0.005, counts
