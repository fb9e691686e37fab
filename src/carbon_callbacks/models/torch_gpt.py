"""The reference GPT in torch: dense, or with Switch (top-1) / top-2 MoE FFN layers. See `models/config.py`.

`GPT(config)` takes token ids `(batch, seq)` int64 and returns logits `(batch, seq, vocab)`. The MoE layer runs
one of `MOE_IMPLEMENTATIONS`, all with static shapes (so it also runs on the `meta` device):
- `token_gather`: each (token, choice) gets a slot in its expert's buffer of `capacity` slots, in order of
  choice then token (all first choices before any second choice, as in GShard); tokens past capacity are dropped
  (their slot is an overflow row that no expert reads). Experts run as one batched matmul over all
  experts x capacity slots.
- `dense_dispatch`: the same slots, but dispatch and combine are one-hot einsums (GShard, Mesh TensorFlow).
- `compute_all_mask`: every expert on every token, combined with the gates (zero for experts not chosen).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carbon_callbacks.models.config import GPTConfig


class Attention(nn.Module):
    """Causal multi-head self-attention with a fused QKV projection, no biases."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.attn_dim, bias=False)
        self.proj = nn.Linear(config.attn_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    """The dense FFN: Linear, GELU, Linear."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.ffn_dim, bias=False)
        self.proj = nn.Linear(config.ffn_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Experts(nn.Module):
    """`num_experts` FFNs stored as two stacked weights, applied to `(experts, slots, d_model)` buffers."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        e, d, f = config.num_experts, config.d_model, config.ffn_dim
        self.w_in = nn.Parameter(torch.randn(e, d, f) * d**-0.5)
        self.w_out = nn.Parameter(torch.randn(e, f, d) * f**-0.5)

    def forward(self, x: torch.Tensor, all_tokens: bool = False) -> torch.Tensor:
        """`(experts, slots, d)` -> same; with `all_tokens`, `(tokens, d)` -> `(tokens, experts, d)`."""
        if not all_tokens:
            return torch.bmm(F.gelu(torch.bmm(x, self.w_in)), self.w_out)
        return torch.einsum("tef,efd->ted", F.gelu(torch.einsum("td,edf->tef", x, self.w_in)), self.w_out)


class MoE(nn.Module):
    """A routed FFN: softmax router, top-k experts, capacity `config.capacity` per expert."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.router = nn.Linear(config.d_model, config.num_experts, bias=False)
        self.experts = Experts(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        b, s, d = x.shape
        e, k = cfg.num_experts, cfg.top_k
        h = x.reshape(b * s, d)
        t = h.shape[0]
        probs = F.softmax(self.router(h), dim=-1)
        gates, index = probs.topk(k, dim=-1)  # (t, k)
        if k > 1:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        if cfg.moe_implementation == "compute_all_mask":
            weights = torch.zeros_like(probs).scatter(1, index, gates)  # (t, e), zero off the chosen experts
            return torch.einsum("te,ted->td", weights, self.experts(h, all_tokens=True)).view(b, s, d)
        capacity = expert_capacity_for(t, cfg)
        expert = index.t().reshape(-1)  # (k t,), choice-major: every first choice before any second
        onehot = F.one_hot(expert, e)
        position = ((onehot.cumsum(0) - 1) * onehot).sum(-1)  # rank of this (token, choice) at its expert
        keep = position < capacity
        gate = gates.t().reshape(-1) * keep
        if cfg.moe_implementation == "dense_dispatch":
            slots = F.one_hot(position.clamp(max=capacity - 1), capacity) * keep[:, None]
            mask = (onehot[:, :, None] * slots[:, None, :]).to(h.dtype)  # (k t, e, c), no gradient
            dispatch = mask.view(k, t, e, capacity).sum(0)
            combine = (mask * gate[:, None, None]).view(k, t, e, capacity).sum(0)
            expert_out = self.experts(torch.einsum("tec,td->ecd", dispatch, h))
            return torch.einsum("tec,ecd->td", combine, expert_out).view(b, s, d)
        slot = torch.where(keep, expert * capacity + position, e * capacity)  # overflow -> the last row
        token = torch.arange(t, device=h.device).repeat(k)
        buffer = h.new_zeros(e * capacity + 1, d).index_add(0, slot, h[token])
        expert_out = self.experts(buffer[:-1].view(e, capacity, d)).reshape(e * capacity, d)
        expert_out = torch.cat([expert_out, expert_out.new_zeros(1, d)])
        return (expert_out[slot] * gate[:, None]).view(k, t, d).sum(0).view(b, s, d)


def expert_capacity_for(tokens: int, config: GPTConfig) -> int:
    from carbon_callbacks.flops.analytic import expert_capacity

    return expert_capacity(tokens, config.num_experts, config.top_k, config.capacity_factor)


class Block(nn.Module):
    """Pre-norm transformer block: attention, then a dense or MoE FFN."""

    def __init__(self, config: GPTConfig, moe: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = Attention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        if moe:
            self.moe = MoE(config)
        else:
            self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        ffn = self.moe if hasattr(self, "moe") else self.mlp
        return x + ffn(self.ln2(x))


class GPT(nn.Module):
    """The reference GPT: token ids `(batch, seq)` -> logits `(batch, seq, vocab)`.

    Args:
        config: shapes and MoE settings. Defaults to `GPTConfig()` (dense, 2 layers, d_model 64).
    """

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        cfg = config or GPTConfig()
        self.config = cfg
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, cfg.is_moe_layer(i)) for i in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok_embed(tokens) + self.pos_embed(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def random_batch(config: GPTConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random `(tokens, targets)` batch of shape `(batch_size, seq_len)`, int64; targets are tokens shifted."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(0, config.vocab_size, (config.batch_size, config.seq_len + 1), generator=generator)
    return data[:, :-1].contiguous(), data[:, 1:].contiguous()


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def train_step(
    model: GPT, optimizer: torch.optim.Optimizer, tokens: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """One optimizer step; returns the loss (detached)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(tokens), targets)
    loss.backward()
    optimizer.step()
    return loss.detach()
