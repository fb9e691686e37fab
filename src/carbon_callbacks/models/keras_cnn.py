"""The reference CNN in Keras 3 (`keras.layers` only): the same layers and shapes as `torch_cnn`, on the JAX,
torch and TensorFlow backends. See `models/cnn_config.py`.

`build_cnn(config)` returns a built model mapping images `(batch, size, size, channels)` (channels last) to a
reconstruction of the same shape.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from carbon_callbacks.models.cnn_config import CNNConfig


def build_cnn(config: CNNConfig | None = None, seed: int = 0) -> keras.Model:
    """The reference CNN as a functional `keras.Model` with a static batch size."""
    cfg = config or CNNConfig()
    keras.utils.set_random_seed(seed)
    c, w = cfg.in_channels, cfg.width
    images = keras.Input((cfg.image_size, cfg.image_size, c), batch_size=cfg.batch_size)
    skip = layers.Conv2D(w, 3, padding="same", activation="gelu", name="stem")(images)
    x = layers.Conv2D(2 * w, 4, strides=2, padding="same", activation="gelu", name="down")(skip)
    x = layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, activation="gelu", name="mid")(x)
    x = layers.Conv2DTranspose(w, 2, strides=2, padding="same", activation="gelu", name="up")(x)
    out = layers.Conv2D(c, 1, name="head")(layers.Concatenate()([x, skip]))
    return keras.Model(images, out, name="cnn")


def random_batch(config: CNNConfig, seed: int = 0) -> np.ndarray:
    """Random images `(batch_size, image_size, image_size, in_channels)`, float32 numpy."""
    shape = (config.batch_size, config.image_size, config.image_size, config.in_channels)
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def loss_fn():
    """Mean squared reconstruction error, as a Keras loss."""
    return keras.losses.MeanSquaredError()
