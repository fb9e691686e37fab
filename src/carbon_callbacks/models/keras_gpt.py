"""The reference GPT in Keras 3 (`keras.layers` and `keras.ops` only): runs on the JAX, torch and TensorFlow
backends, with the same layers and shapes as `torch_gpt`. See `models/config.py`.

`build_gpt(config)` returns a built `GPT` model mapping token ids `(batch, seq)` int32 to logits
`(batch, seq, vocab)`. The MoE layer runs the implementations of `torch_gpt.MoE`, in static shapes; the number
of tokens per batch must be static (it sets the expert capacity).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from carbon_callbacks.flops.analytic import expert_capacity
from carbon_callbacks.models.config import GPTConfig


class Attention(layers.Layer):
    """Causal multi-head self-attention with a fused QKV projection, no biases."""

    def __init__(self, config: GPTConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.qkv = layers.Dense(3 * config.attn_dim, use_bias=False, name="qkv")
        self.proj = layers.Dense(config.d_model, use_bias=False, name="proj")

    def call(self, x):
        cfg = self.config
        s = ops.shape(x)[1]  # a tensor where the length varies (TensorFlow's generalized graph)
        qkv = ops.reshape(self.qkv(x), (-1, s, 3, cfg.num_heads, cfg.attn_dim // cfg.num_heads))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = ops.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.attn_dim // cfg.num_heads)
        causal = ops.tril(ops.ones((s, s), dtype="bool"))
        weights = ops.softmax(ops.where(causal, scores, -1e9), axis=-1)
        y = ops.einsum("bhqk,bkhd->bqhd", weights, v)
        return self.proj(ops.reshape(y, (-1, s, cfg.attn_dim)))


class MLP(layers.Layer):
    def __init__(self, config: GPTConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fc = layers.Dense(config.ffn_dim, use_bias=False, name="fc")
        self.proj = layers.Dense(config.d_model, use_bias=False, name="proj")

    def call(self, x):
        return self.proj(ops.gelu(self.fc(x), approximate=False))


class Experts(layers.Layer):
    def __init__(self, config: GPTConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        e, d, f = config.num_experts, config.d_model, config.ffn_dim
        normal = keras.initializers.RandomNormal
        self.w_in = self.add_weight((e, d, f), initializer=normal(stddev=d**-0.5), name="w_in")
        self.w_out = self.add_weight((e, f, d), initializer=normal(stddev=f**-0.5), name="w_out")

    def call(self, x, all_tokens: bool = False):
        if all_tokens:
            hidden = ops.gelu(ops.einsum("td,edf->tef", x, self.w_in), approximate=False)
            return ops.einsum("tef,efd->ted", hidden, self.w_out)
        hidden = ops.gelu(ops.einsum("ecd,edf->ecf", x, self.w_in), approximate=False)
        return ops.einsum("ecf,efd->ecd", hidden, self.w_out)


class MoE(layers.Layer):
    def __init__(self, config: GPTConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.router = layers.Dense(config.num_experts, use_bias=False, name="router")
        self.experts = Experts(config, name="experts")

    def call(self, x):
        cfg = self.config
        s, d = x.shape[1], x.shape[2]
        if x.shape[0] is None:
            raise ValueError("MoE needs a static batch size: it sets the expert capacity.")
        t = x.shape[0] * s
        e, k = cfg.num_experts, cfg.top_k
        h = ops.reshape(x, (t, d))
        probs = ops.softmax(self.router(h), axis=-1)
        gates, index = ops.top_k(probs, k)
        if k > 1:
            gates = gates / ops.sum(gates, axis=-1, keepdims=True)
        if cfg.moe_implementation == "compute_all_mask":
            weights = sum(ops.one_hot(index[:, j], e, dtype=h.dtype) * gates[:, j : j + 1] for j in range(k))
            return ops.reshape(ops.einsum("te,ted->td", weights, self.experts(h, all_tokens=True)), (-1, s, d))
        capacity = expert_capacity(t, e, k, cfg.capacity_factor)
        expert = ops.reshape(ops.transpose(index), (-1,))
        onehot = ops.one_hot(expert, e, dtype="int32")
        position = ops.sum((ops.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)
        keep = ops.cast(position < capacity, h.dtype)
        gate = ops.reshape(ops.transpose(gates), (-1,)) * keep
        if cfg.moe_implementation == "dense_dispatch":
            slots = ops.one_hot(ops.minimum(position, capacity - 1), capacity, dtype=h.dtype) * keep[:, None]
            mask = ops.stop_gradient(ops.cast(onehot, h.dtype)[:, :, None] * slots[:, None, :])
            dispatch = ops.sum(ops.reshape(mask, (k, t, e, capacity)), axis=0)
            combine = ops.sum(ops.reshape(mask * gate[:, None, None], (k, t, e, capacity)), axis=0)
            out = self.experts(ops.einsum("tec,td->ecd", dispatch, h))
            return ops.reshape(ops.einsum("tec,ecd->td", combine, out), (-1, s, d))
        slot = ops.where(position < capacity, expert * capacity + position, e * capacity)
        token = ops.tile(ops.arange(t), (k,))
        buffer = ops.segment_sum(ops.take(h, token, axis=0), slot, num_segments=e * capacity + 1)
        out = ops.reshape(self.experts(ops.reshape(buffer[:-1], (e, capacity, d))), (e * capacity, d))
        out = ops.concatenate([out, ops.zeros((1, d), dtype=out.dtype)], axis=0)
        y = ops.take(out, slot, axis=0) * gate[:, None]
        return ops.reshape(ops.sum(ops.reshape(y, (k, t, d)), axis=0), (-1, s, d))


class Block(layers.Layer):
    def __init__(self, config: GPTConfig, moe: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ln1 = layers.LayerNormalization(epsilon=1e-5, name="ln1")
        self.attn = Attention(config, name="attn")
        self.ln2 = layers.LayerNormalization(epsilon=1e-5, name="ln2")
        if moe:
            self.moe = MoE(config, name="moe")
        else:
            self.mlp = MLP(config, name="mlp")

    def call(self, x):
        x = x + self.attn(self.ln1(x))
        ffn = self.moe if hasattr(self, "moe") else self.mlp
        return x + ffn(self.ln2(x))


class GPT(keras.Model):
    """The reference GPT: token ids `(batch, seq)` -> logits `(batch, seq, vocab)`.

    Args:
        config: shapes and MoE settings. Defaults to `GPTConfig()`.
    """

    def __init__(self, config: GPTConfig | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        cfg = config or GPTConfig()
        self.config = cfg
        self.tok_embed = layers.Embedding(cfg.vocab_size, cfg.d_model, name="tok_embed")
        self.pos_embed = layers.Embedding(cfg.seq_len, cfg.d_model, name="pos_embed")
        self.blocks = [Block(cfg, cfg.is_moe_layer(i), name=f"blocks_{i}") for i in range(cfg.num_layers)]
        self.ln_f = layers.LayerNormalization(epsilon=1e-5, name="ln_f")
        self.head = layers.Dense(cfg.vocab_size, use_bias=False, name="head")

    def call(self, tokens):
        x = self.tok_embed(tokens) + self.pos_embed(ops.arange(ops.shape(tokens)[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def random_batch(config: GPTConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random `(tokens, targets)` batch of shape `(batch_size, seq_len)`, int32 numpy; targets shifted."""
    data = np.random.default_rng(seed).integers(0, config.vocab_size, (config.batch_size, config.seq_len + 1))
    return data[:, :-1].astype("int32"), data[:, 1:].astype("int32")


def loss_fn():
    """Mean next-token cross-entropy from logits, as a Keras loss."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_gpt(config: GPTConfig | None = None, seed: int = 0) -> GPT:
    """A `GPT` built by one symbolic call on a batch of `config`'s shape (nothing is computed)."""
    cfg = config or GPTConfig()
    keras.utils.set_random_seed(seed)
    model = GPT(cfg)
    model(keras.KerasTensor((cfg.batch_size, cfg.seq_len), dtype="int32"))
    return model
