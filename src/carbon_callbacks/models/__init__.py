"""Reference GPT models (dense, Switch top-1 and top-2 MoE) in torch, Flax and Keras with the same shapes.

`carbon_callbacks.models.config` is pure Python; `torch_gpt`, `flax_gpt` and `keras_gpt` import their framework.
"""

from carbon_callbacks.models.config import DENSE
from carbon_callbacks.models.config import SWITCH
from carbon_callbacks.models.config import TOP2
from carbon_callbacks.models.config import GPTConfig

__all__ = ["DENSE", "GPTConfig", "SWITCH", "TOP2"]
