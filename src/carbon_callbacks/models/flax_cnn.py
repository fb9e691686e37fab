"""The reference CNN in Flax (linen): the same layers and shapes as `torch_cnn`. See `models/cnn_config.py`.

`CNN(config)` maps images `(batch, size, size, channels)` (NHWC) to a reconstruction of the same shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from carbon_callbacks.models.cnn_config import CNNConfig


class CNN(nn.Module):
    """The reference CNN: images `(batch, size, size, in_channels)` -> reconstructions of the same shape.

    Args:
        config: shapes. Defaults to `CNNConfig()`.
    """

    config: CNNConfig = CNNConfig()

    @nn.compact
    def __call__(self, images):
        c, w = self.config.in_channels, self.config.width
        skip = nn.gelu(nn.Conv(w, (3, 3), padding="SAME", name="stem")(images), approximate=False)
        x = nn.gelu(nn.Conv(2 * w, (4, 4), strides=2, padding="SAME", name="down")(skip), approximate=False)
        x = nn.Conv(2 * w, (3, 3), padding="SAME", kernel_dilation=2, feature_group_count=2 * w, name="mid")(x)
        x = nn.gelu(x, approximate=False)
        x = nn.gelu(nn.ConvTranspose(w, (2, 2), strides=(2, 2), padding="SAME", name="up")(x), approximate=False)
        return nn.Conv(c, (1, 1), name="head")(jnp.concatenate([x, skip], axis=-1))


def random_batch(config: CNNConfig, seed: int = 0):
    """Random images `(batch_size, image_size, image_size, in_channels)`, float32."""
    shape = (config.batch_size, config.image_size, config.image_size, config.in_channels)
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def loss_fn(reconstruction, images):
    """Mean squared reconstruction error."""
    return jnp.mean((reconstruction - images) ** 2)


def init(config: CNNConfig, seed: int = 0):
    """`(model, params)` for `config`."""
    model = CNN(config)
    return model, model.init(jax.random.PRNGKey(seed), random_batch(config, seed))["params"]


def make_train_step(model: CNN, learning_rate: float = 0.01):
    """A jitted SGD step `(params, images) -> (params, loss)`."""

    def step(params, images):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model.apply({"params": p}, images), images))(params)
        return jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, params, grads), loss

    return jax.jit(step)
