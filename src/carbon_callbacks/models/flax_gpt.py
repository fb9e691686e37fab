"""The reference GPT in Flax (linen): the same layers and shapes as `torch_gpt`. See `models/config.py`.

`GPT(config)` maps token ids `(batch, seq)` int32 to logits `(batch, seq, vocab)`. The MoE layer runs the
implementations of `torch_gpt.MoE` with the same slot order, in static shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from carbon_callbacks.flops.analytic import expert_capacity
from carbon_callbacks.models.config import GPTConfig


class Attention(nn.Module):
    """Causal multi-head self-attention with a fused QKV projection, no biases."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        b, s, _ = x.shape
        qkv = nn.Dense(3 * cfg.attn_dim, use_bias=False, name="qkv")(x)
        q, k, v = jnp.moveaxis(qkv.reshape(b, s, 3, cfg.num_heads, -1), 2, 0)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        causal = jnp.tril(jnp.ones((s, s), dtype=bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, s, -1)
        return nn.Dense(cfg.d_model, use_bias=False, name="proj")(y)


class MLP(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.config.ffn_dim, use_bias=False, name="fc")(x), approximate=False)
        return nn.Dense(self.config.d_model, use_bias=False, name="proj")(h)


class Experts(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x, all_tokens: bool = False):
        e, d, f = self.config.num_experts, self.config.d_model, self.config.ffn_dim
        w_in = self.param("w_in", nn.initializers.normal(d**-0.5), (e, d, f))
        w_out = self.param("w_out", nn.initializers.normal(f**-0.5), (e, f, d))
        if all_tokens:
            return jnp.einsum("tef,efd->ted", nn.gelu(jnp.einsum("td,edf->tef", x, w_in), approximate=False), w_out)
        return jnp.einsum("ecf,efd->ecd", nn.gelu(jnp.einsum("ecd,edf->ecf", x, w_in), approximate=False), w_out)


class MoE(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        b, s, d = x.shape
        e, k = cfg.num_experts, cfg.top_k
        h = x.reshape(b * s, d)
        t = h.shape[0]
        probs = jax.nn.softmax(nn.Dense(e, use_bias=False, name="router")(h), axis=-1)
        gates, index = jax.lax.top_k(probs, k)
        if k > 1:
            gates = gates / gates.sum(-1, keepdims=True)
        experts = Experts(cfg, name="experts")
        if cfg.moe_implementation == "compute_all_mask":
            weights = jnp.zeros_like(probs).at[jnp.arange(t)[:, None], index].set(gates)
            return jnp.einsum("te,ted->td", weights, experts(h, all_tokens=True)).reshape(b, s, d)
        capacity = expert_capacity(t, e, k, cfg.capacity_factor)
        expert = index.T.reshape(-1)
        onehot = jax.nn.one_hot(expert, e, dtype=jnp.int32)
        position = ((jnp.cumsum(onehot, 0) - 1) * onehot).sum(-1)
        keep = position < capacity
        gate = gates.T.reshape(-1) * keep
        if cfg.moe_implementation == "dense_dispatch":
            slots = jax.nn.one_hot(jnp.minimum(position, capacity - 1), capacity, dtype=h.dtype) * keep[:, None]
            mask = onehot[:, :, None].astype(h.dtype) * slots[:, None, :]
            dispatch = mask.reshape(k, t, e, capacity).sum(0)
            combine = (mask * gate[:, None, None]).reshape(k, t, e, capacity).sum(0)
            out = experts(jnp.einsum("tec,td->ecd", dispatch, h))
            return jnp.einsum("tec,ecd->td", combine, out).reshape(b, s, d)
        slot = jnp.where(keep, expert * capacity + position, e * capacity)
        token = jnp.tile(jnp.arange(t), k)
        buffer = jnp.zeros((e * capacity + 1, d), h.dtype).at[slot].add(h[token])
        out = experts(buffer[:-1].reshape(e, capacity, d)).reshape(e * capacity, d)
        out = jnp.concatenate([out, jnp.zeros((1, d), out.dtype)])
        return (out[slot] * gate[:, None]).reshape(k, t, d).sum(0).reshape(b, s, d)


class Block(nn.Module):
    config: GPTConfig
    moe: bool

    @nn.compact
    def __call__(self, x):
        x = x + Attention(self.config, name="attn")(nn.LayerNorm(name="ln1")(x))
        ffn = MoE(self.config, name="moe") if self.moe else MLP(self.config, name="mlp")
        return x + ffn(nn.LayerNorm(name="ln2")(x))


class GPT(nn.Module):
    """The reference GPT: token ids `(batch, seq)` -> logits `(batch, seq, vocab)`.

    Args:
        config: shapes and MoE settings. Defaults to `GPTConfig()`.
    """

    config: GPTConfig = GPTConfig()

    @nn.compact
    def __call__(self, tokens):
        cfg = self.config
        x = nn.Embed(cfg.vocab_size, cfg.d_model, name="tok_embed")(tokens)
        x = x + nn.Embed(cfg.seq_len, cfg.d_model, name="pos_embed")(jnp.arange(tokens.shape[1]))
        for i in range(cfg.num_layers):
            x = Block(cfg, cfg.is_moe_layer(i), name=f"blocks_{i}")(x)
        return nn.Dense(cfg.vocab_size, use_bias=False, name="head")(nn.LayerNorm(name="ln_f")(x))


def random_batch(config: GPTConfig, seed: int = 0):
    """A random `(tokens, targets)` batch of shape `(batch_size, seq_len)`, int32; targets are tokens shifted."""
    data = jax.random.randint(jax.random.PRNGKey(seed), (config.batch_size, config.seq_len + 1), 0, config.vocab_size)
    return data[:, :-1], data[:, 1:]


def loss_fn(logits, targets):
    """Mean next-token cross-entropy."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1).mean()


def init(config: GPTConfig, seed: int = 0):
    """`(model, params)` for `config`."""
    model = GPT(config)
    tokens, _ = random_batch(config, seed)
    return model, model.init(jax.random.PRNGKey(seed), tokens)["params"]


def make_train_step(model: GPT, learning_rate: float = 0.1):
    """A jitted SGD step `(params, tokens, targets) -> (params, loss)` (no optimizer dependency)."""

    def step(params, tokens, targets):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model.apply({"params": p}, tokens), targets))(params)
        return jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, params, grads), loss

    return jax.jit(step)
