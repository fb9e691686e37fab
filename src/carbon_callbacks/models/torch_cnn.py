"""The reference CNN in torch: a tiny U-Net autoencoder with a strided and a transposed convolution.

See `models/cnn_config.py` for the layers. `CNN(config)` maps images `(batch, channels, size, size)` (NCHW) to a
reconstruction of the same shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carbon_callbacks.models.cnn_config import CNNConfig


class CNN(nn.Module):
    """The reference CNN: images `(batch, in_channels, size, size)` -> reconstructions of the same shape.

    Args:
        config: shapes. Defaults to `CNNConfig()`.
    """

    def __init__(self, config: CNNConfig | None = None) -> None:
        super().__init__()
        cfg = config or CNNConfig()
        self.config = cfg
        c, w = cfg.in_channels, cfg.width
        self.stem = nn.Conv2d(c, w, 3, padding=1)
        self.down = nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)
        self.mid = nn.Conv2d(2 * w, 2 * w, 3, padding=2, dilation=2, groups=2 * w)
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.head = nn.Conv2d(2 * w, c, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skip = F.gelu(self.stem(images))
        x = F.gelu(self.down(skip))
        x = F.gelu(self.mid(x))
        x = F.gelu(self.up(x))
        return self.head(torch.cat([x, skip], dim=1))


def random_batch(config: CNNConfig, seed: int = 0) -> torch.Tensor:
    """Random images `(batch_size, in_channels, image_size, image_size)`, float32."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(config.batch_size, config.in_channels, config.image_size, config.image_size,
                       generator=generator)


def loss_fn(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean squared reconstruction error."""
    return F.mse_loss(reconstruction, images)


def train_step(model: CNN, optimizer: torch.optim.Optimizer, images: torch.Tensor) -> torch.Tensor:
    """One optimizer step; returns the loss (detached)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), images)
    loss.backward()
    optimizer.step()
    return loss.detach()
