"""Shapes of the reference GPT models, shared by the torch, Flax and Keras versions. Pure Python.

The three implementations build the same layers from a `GPTConfig`, so their FLOPs and parameter counts can be
compared with each other and with `carbon_callbacks.flops.transformer_flops(config)`, which takes the config as is.

The model: token + learned position embeddings, `num_layers` pre-norm blocks (LayerNorm, causal multi-head
attention with a fused QKV projection, LayerNorm, GELU FFN or MoE FFN), a final LayerNorm and an untied logits
head; no biases in linear layers. Every `moe_every`-th block (indices `moe_every - 1, 2 * moe_every - 1, ...`)
has an MoE FFN when `num_experts > 0`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from carbon_callbacks._errors import unknown_name
from carbon_callbacks.flops.analytic import MOE_IMPLEMENTATIONS, TransformerConfig, expert_capacity


@dataclass(frozen=True)
class GPTConfig(TransformerConfig):
    """A `TransformerConfig` with small defaults and the MoE implementation the reference models run.

    Args:
        num_layers: blocks. Defaults to `2`.
        d_model: width. Defaults to `64`.
        num_heads: attention heads. Defaults to `4`.
        seq_len: tokens per sequence. Defaults to `32`.
        batch_size: sequences per batch. Defaults to `4`.
        vocab_size: vocabulary. Defaults to `256`.
        d_ff: FFN and expert width. Defaults to `256`.
        num_experts: experts per MoE layer, 0 for dense. Defaults to `0`.
        top_k: experts per token (1: Switch, 2: GShard). Defaults to `1`.
        capacity_factor: expert capacity factor. Defaults to `1.25`.
        moe_every: every N-th block is MoE. Defaults to `2`.
        moe_implementation: one of `MOE_IMPLEMENTATIONS`. Defaults to `"token_gather"`.
    """

    num_layers: int = 2
    d_model: int = 64
    num_heads: int = 4
    seq_len: int = 32
    batch_size: int = 4
    vocab_size: int = 256
    d_ff: int | None = 256
    capacity_factor: float = 1.25
    moe_every: int = 2
    moe_implementation: str = "token_gather"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.moe_implementation not in MOE_IMPLEMENTATIONS:
            raise unknown_name("moe_implementation", self.moe_implementation, MOE_IMPLEMENTATIONS)

    @property
    def capacity(self) -> int:
        """Slots per expert for one batch (all batch_size x seq_len tokens form one routing group)."""
        return expert_capacity(self.batch_size * self.seq_len, self.num_experts or 1, self.top_k, self.capacity_factor)

    def with_(self, **changes) -> GPTConfig:
        """A copy with `changes` applied."""
        return replace(self, **changes)


#: The reference configurations of tests, examples and benchmarks.
DENSE = GPTConfig()
SWITCH = GPTConfig(num_experts=4, top_k=1)
TOP2 = GPTConfig(num_experts=4, top_k=2)
#: Every reference variant by name: dense, Switch top-1, and top-2 under each MoE implementation.
VARIANTS = {
    "dense": DENSE,
    "switch": SWITCH,
    "top2": TOP2,
    "top2-dense_dispatch": TOP2.with_(moe_implementation="dense_dispatch"),
    "top2-compute_all_mask": TOP2.with_(moe_implementation="compute_all_mask"),
}
