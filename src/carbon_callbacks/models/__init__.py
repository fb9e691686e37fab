"""Reference models in torch, Flax and Keras with the same shapes: GPTs (dense, Switch top-1 and top-2 MoE) and a
small CNN (a U-Net with a strided and a transposed convolution).

`carbon_callbacks.models.config` and `cnn_config` are pure Python; `torch_gpt`, `flax_gpt`, `keras_gpt`,
`torch_cnn`, `flax_cnn` and `keras_cnn` import their framework.
"""

from carbon_callbacks.models.cnn_config import CNN
from carbon_callbacks.models.cnn_config import CNNConfig
from carbon_callbacks.models.cnn_config import cnn_flops
from carbon_callbacks.models.config import DENSE
from carbon_callbacks.models.config import SWITCH
from carbon_callbacks.models.config import TOP2
from carbon_callbacks.models.config import GPTConfig

__all__ = ["CNN", "CNNConfig", "DENSE", "GPTConfig", "SWITCH", "TOP2", "cnn_flops"]
