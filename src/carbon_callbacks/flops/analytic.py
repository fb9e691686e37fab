"""Exact matmul FLOPs and parameter counts of dense and mixture-of-experts transformers, in pure Python.

Conventions (the same in every counter of this package; see docs/flops.md):
- a multiply-add is 2 FLOPs; only matrix products are counted (projections, attention scores and values, FFN,
  router, logits, MoE dispatch/combine einsums). Softmax, norms, activations, biases and the loss are not counted.
- attention is counted without causal-mask halving unless `causal=True` is asked for, which counts the
  S (S + 1) / 2 query-key pairs on and below the diagonal of each decoder self-attention.
- a training step is forward + backward, and the backward of a matrix product is 2 x its forward (the gradients
  of both operands), so a step is 3 x forward. The one exception is the dispatch einsum of the `dense_dispatch`
  MoE implementation, whose one-hot dispatch mask takes no gradient: its backward is 1 x forward.
- model FLOPs count for an MoE layer the router and the top-k experts each token is routed to, no padding;
  hardware FLOPs count what the named implementation runs (`MOE_IMPLEMENTATIONS`).
- parameters activated per token are all parameters outside the experts plus `top_k` experts per MoE layer.
- a convolution (traced counters, `models.cnn_config`) does a multiply-add for every kernel tap at every output
  position, padding taps included, as torch's `FlopCounterMode` and published CNN FLOPs count (`flops._conv`).

The shape of the model: a decoder-only stack (GPT) or, with `num_decoder_layers`, an encoder-decoder (T5,
GShard, Switch) whose decoder layers add cross-attention over the encoder output. Every `moe_every`-th layer of
each stack (layer indices `moe_every - 1, 2 * moe_every - 1, ...`), or the layers listed in `moe_layers`, has an
MoE FFN in place of the dense one, optionally beside shared experts that every token passes through (Qwen2-MoE).
`TransformerConfig.from_hf` reads the shape from a Hugging Face config (`carbon_callbacks.flops._hf`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction

from carbon_callbacks._errors import InvalidInputError, check_count, check_number, unknown_name

#: How an MoE layer is run; each has its own hardware-FLOP formula.
#: - `token_gather`: tokens are gathered into `num_experts` buffers of `capacity` slots each (empty slots are
#:   padding), experts run as one batched matmul over all slots, outputs are scattered back (GShard/Switch
#:   capacity, gather/scatter implementation). Hardware = model + the padding slots' expert FLOPs.
#: - `dense_dispatch`: as above but dispatch and combine are one-hot einsums (`tec,td->ecd`, `tec,ecd->td`), as
#:   in GShard and Mesh TensorFlow; adds 2 x tokens x experts x capacity x d_model FLOPs per einsum.
#: - `compute_all_mask`: every expert runs on every token, outputs are masked by the gates and summed with one
#:   einsum (`te,ted->td`).
MOE_IMPLEMENTATIONS = ("token_gather", "dense_dispatch", "compute_all_mask")

#: Layer kinds of the breakdown, in report order.
LAYER_KINDS = ("attention", "dense_ffn", "moe_experts", "router", "moe_dispatch", "embeddings_logits")

#: Norm layers and the parameters each holds per unit of d_model.
NORMS = {"layernorm": 2, "rmsnorm": 1, "none": 0}


def expert_capacity(tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Slots per expert: `ceil(capacity_factor * tokens * top_k / num_experts)` (GShard, Switch Transformer).

    The product is taken in exact rational arithmetic from the decimal value of `capacity_factor`, so 1.1 x 100
    tokens gives 110 slots, not 111.

    Args:
        tokens: tokens entering the MoE layer (batch x sequence for one group).
        num_experts: experts of the layer.
        top_k: experts each token is sent to.
        capacity_factor: slots per expert relative to a perfectly balanced load.
    """
    tokens = check_count("tokens", tokens)
    num_experts = check_count("num_experts", num_experts)
    top_k = check_count("top_k", top_k)
    factor = Fraction(str(check_number("capacity_factor", capacity_factor, positive=True)))
    return max(1, math.ceil(factor * tokens * top_k / num_experts))


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of a transformer for `transformer_flops`.

    Args:
        num_layers: layers of the decoder (decoder-only) or of the encoder (encoder-decoder).
        d_model: width of the residual stream.
        num_heads: attention heads.
        seq_len: tokens per sequence (the encoder's, for an encoder-decoder).
        batch_size: sequences per training step.
        vocab_size: vocabulary size.
        d_ff: hidden width of the FFN and of each expert. Defaults to `None` (4 x d_model).
        head_dim: width of each attention head. Defaults to `None` (d_model // num_heads).
        num_experts: experts per MoE layer; 0 for a dense model. Defaults to `0`.
        top_k: experts each token is routed to. Defaults to `1`.
        capacity_factor: expert capacity relative to a balanced load. Defaults to `1.0`.
        moe_every: every `moe_every`-th layer is MoE (1: all layers, 2: every other). Defaults to `1`.
        num_decoder_layers: decoder layers of an encoder-decoder; `None` for a decoder-only model.
            Defaults to `None`.
        decoder_seq_len: target length of an encoder-decoder. Defaults to `None` (seq_len).
        gated_ffn: FFN with a gated linear unit (3 matrices, as in T5.1.1 GEGLU) instead of 2.
            Defaults to `False`.
        tied_embeddings: the logits reuse the input embedding matrix. Defaults to `False`.
        learned_positions: a learned position table (GPT-2) counted in the parameters. Defaults to `True`.
        norm: `"layernorm"`, `"rmsnorm"` or `"none"`, for the parameter count. Defaults to `"layernorm"`.
        bias: linear layers carry biases (parameters only; bias additions are not FLOPs). Defaults to `False`.
        num_kv_heads: key/value heads of grouped-query attention. Defaults to `None` (num_heads).
        expert_d_ff: hidden width of each routed expert. Defaults to `None` (the FFN's width).
        num_shared_experts: experts of each MoE layer that every token passes through. Defaults to `0`.
        shared_expert_d_ff: hidden width of each shared expert. Defaults to `None` (the routed experts' width).
        shared_expert_gate: a `d_model -> 1` gate scales the shared experts' output (Qwen2-MoE).
            Defaults to `False`.
        moe_layers: the indices of the MoE layers of the decoder-only stack, or of the encoder; overrides
            `moe_every`. Defaults to `None`.
        decoder_moe_layers: the indices of the MoE layers of an encoder-decoder's decoder. Defaults to `None`
            (`moe_layers` if given, else `moe_every`).
        max_positions: rows of the learned position table(s). Defaults to `None` (the sequence lengths).
        relative_attention_buckets: buckets of the T5 relative position bias, one table of buckets x heads per
            stack (parameters only). Defaults to `0`.
        attention_window: sliding-window attention (Mistral): with `causal=True`, each query attends to at most
            this many positions. Defaults to `None`.
        attention_bias: Q, K, V and output projections carry biases. Defaults to `None` (`bias`).
        qkv_bias: Q, K and V projections carry biases (Qwen2). Defaults to `None` (`attention_bias`).
        ffn_bias: FFN and expert matrices carry biases. Defaults to `None` (`bias`).
        head_bias: the logits layer carries a bias. Defaults to `None` (`bias`).
    """

    num_layers: int
    d_model: int
    num_heads: int
    seq_len: int
    batch_size: int
    vocab_size: int
    d_ff: int | None = None
    head_dim: int | None = None
    num_experts: int = 0
    top_k: int = 1
    capacity_factor: float = 1.0
    moe_every: int = 1
    num_decoder_layers: int | None = None
    decoder_seq_len: int | None = None
    gated_ffn: bool = False
    tied_embeddings: bool = False
    learned_positions: bool = True
    norm: str = "layernorm"
    bias: bool = False
    num_kv_heads: int | None = None
    expert_d_ff: int | None = None
    num_shared_experts: int = 0
    shared_expert_d_ff: int | None = None
    shared_expert_gate: bool = False
    moe_layers: tuple[int, ...] | None = None
    decoder_moe_layers: tuple[int, ...] | None = None
    max_positions: int | None = None
    relative_attention_buckets: int = 0
    attention_window: int | None = None
    attention_bias: bool | None = None
    qkv_bias: bool | None = None
    ffn_bias: bool | None = None
    head_bias: bool | None = None

    def __post_init__(self) -> None:
        for name in ("num_layers", "d_model", "num_heads", "seq_len", "batch_size", "vocab_size", "moe_every"):
            check_count(name, getattr(self, name))
        for name in ("d_ff", "head_dim", "num_decoder_layers", "decoder_seq_len", "num_kv_heads", "expert_d_ff",
                     "shared_expert_d_ff", "max_positions", "attention_window"):
            if getattr(self, name) is not None:
                check_count(name, getattr(self, name))
        check_count("num_shared_experts", self.num_shared_experts, minimum=0)
        check_count("relative_attention_buckets", self.relative_attention_buckets, minimum=0)
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise InvalidInputError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})."
            )
        for name, stack in (("moe_layers", self.num_layers), ("decoder_moe_layers", self.num_decoder_layers)):
            layers = getattr(self, name)
            if layers is None:
                continue
            layers = tuple(sorted({check_count(f"{name} entry", i, minimum=0) for i in layers}))
            if stack is None or any(i >= stack for i in layers):
                raise InvalidInputError(f"{name} must index layers of its stack (0 to {(stack or 1) - 1}), "
                                        f"got {list(layers)}.")
            object.__setattr__(self, name, layers)
        check_count("num_experts", self.num_experts, minimum=0)
        check_count("top_k", self.top_k)
        check_number("capacity_factor", self.capacity_factor, positive=True)
        if self.head_dim is None and self.d_model % self.num_heads:
            raise InvalidInputError(
                f"d_model ({self.d_model}) must be a multiple of num_heads ({self.num_heads}), or pass head_dim."
            )
        if self.num_experts and self.top_k > self.num_experts:
            raise InvalidInputError(f"top_k ({self.top_k}) must not exceed num_experts ({self.num_experts}).")
        if self.norm not in NORMS:
            raise unknown_name("norm", self.norm, NORMS)

    @property
    def ffn_dim(self) -> int:
        """Hidden width of the FFN and of each expert."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def expert_ffn_dim(self) -> int:
        """Hidden width of each routed expert."""
        return self.expert_d_ff if self.expert_d_ff is not None else self.ffn_dim

    @property
    def shared_ffn_dim(self) -> int:
        """Hidden width of each shared expert."""
        return self.shared_expert_d_ff if self.shared_expert_d_ff is not None else self.expert_ffn_dim

    @property
    def attn_dim(self) -> int:
        """num_heads x head_dim: the width of Q (and of K and V without grouped-query attention)."""
        return self.num_heads * self._head_width

    @property
    def kv_dim(self) -> int:
        """num_kv_heads x head_dim: the width of K and V."""
        return (self.num_kv_heads or self.num_heads) * self._head_width

    @property
    def _head_width(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.num_heads

    @property
    def encoder_decoder(self) -> bool:
        return self.num_decoder_layers is not None

    def is_moe_layer(self, index: int, decoder: bool = False) -> bool:
        """Whether layer `index` (0-based, within its stack; `decoder`: of an encoder-decoder's decoder) is MoE."""
        if self.num_experts == 0:
            return False
        layers = self.decoder_moe_layers if decoder and self.decoder_moe_layers is not None else self.moe_layers
        if layers is not None:
            return index in layers
        return (index + 1) % self.moe_every == 0

    @classmethod
    def from_hf(cls, config, **workload) -> TransformerConfig:
        """The shape of a Hugging Face model from its config: a `transformers` `PretrainedConfig` or the dict of
        its `config.json` (read without importing `transformers`).

        Supported `model_type`s: `gpt2`, `llama`, `mistral`, `qwen2`, `mixtral`, `qwen2_moe`, `t5`, `mt5`,
        `switch_transformers`. The fields that set a size must be present; switches that `transformers` gives a
        default (for example `num_key_value_heads`, `tie_word_embeddings`) take that default. See docs/flops.md.

        Args:
            config: the `PretrainedConfig` or the `config.json` dict.
            **workload: `seq_len` (defaults to the model's context length where its config has one),
                `batch_size` (defaults to `1`), `decoder_seq_len` and `capacity_factor` (defaults to `1.0`).

        Returns:
            A `TransformerConfig`.

        Raises:
            InvalidInputError: for an unsupported `model_type`, a missing or unusable field (named), or a
                feature the count does not model (for example `use_sliding_window` in Qwen2-MoE).

        Example:
            >>> gpt2 = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
            ...         "n_positions": 1024}
            >>> transformer_flops(TransformerConfig.from_hf(gpt2, seq_len=1024)).params_total
            124439808
        """
        from carbon_callbacks.flops._hf import config_from_hf

        return config_from_hf(config, cls=cls, **workload)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(TransformerConfig)}


@dataclass(frozen=True)
class TransformerFlops:
    """FLOPs per training step and parameter counts of one `TransformerConfig`.

    Attributes:
        model_flops: FLOPs of one training step (forward + backward) the model needs: top-k experts, no padding.
        hardware_flops: FLOPs of one training step as `moe_implementation` runs it.
        forward_model_flops: model FLOPs of the forward pass alone.
        forward_hardware_flops: hardware FLOPs of the forward pass alone.
        params_total: all parameters.
        params_active_per_token: parameters a token passes through (all but the experts it is not routed to).
        percent_active: 100 x params_active_per_token / params_total.
        tokens_per_step: batch_size x the sequence length the logits are computed on.
        breakdown: model FLOPs per step by layer kind (`LAYER_KINDS`).
        hardware_breakdown: hardware FLOPs per step by layer kind.
        moe_implementation: the implementation `hardware_flops` is for.
        causal: whether decoder self-attention was counted on the lower triangle only.
        expert_capacity: slots per expert per MoE layer (per stack for an encoder-decoder); 0 for a dense model.
    """

    model_flops: int
    hardware_flops: int
    forward_model_flops: int
    forward_hardware_flops: int
    params_total: int
    params_active_per_token: int
    percent_active: float
    tokens_per_step: int
    breakdown: dict[str, int] = field(default_factory=dict)
    hardware_breakdown: dict[str, int] = field(default_factory=dict)
    moe_implementation: str = "token_gather"
    causal: bool = False
    expert_capacity: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class _Tally:
    """Per-kind forward FLOPs, and the part of them whose backward is 1x rather than 2x."""

    def __init__(self) -> None:
        self.forward = dict.fromkeys(LAYER_KINDS, 0)
        self.step = dict.fromkeys(LAYER_KINDS, 0)

    def add(self, kind: str, flops: int, backward_factor: int = 2) -> None:
        self.forward[kind] += flops
        self.step[kind] += flops * (1 + backward_factor)


def _causal_pairs(length: int, window: int | None) -> int:
    """Query-key pairs on and below the diagonal, each query seeing at most `window` positions."""
    if window is None or window >= length:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


def _attention(t: _Tally, cfg: TransformerConfig, batch: int, q_len: int, kv_len: int, causal: bool) -> None:
    d, a = cfg.d_model, cfg.attn_dim
    t.add("attention", 2 * batch * q_len * d * a)  # Q
    t.add("attention", 2 * batch * kv_len * d * 2 * cfg.kv_dim)  # K, V
    pairs = _causal_pairs(q_len, cfg.attention_window) if causal else q_len * kv_len
    t.add("attention", 2 * 2 * batch * pairs * a)  # scores QK^T and the weighted sum of V, over all heads
    t.add("attention", 2 * batch * q_len * a * d)  # output projection


def _ffn(t: _Tally, cfg: TransformerConfig, tokens: int, moe: bool, impl: str, hardware: bool) -> int:
    """Adds one FFN (dense or MoE) for `tokens` tokens; returns the expert capacity used (0 if dense)."""
    d, mats = cfg.d_model, 3 if cfg.gated_ffn else 2
    if not moe:
        t.add("dense_ffn", tokens * 2 * d * cfg.ffn_dim * mats)
        return 0
    per_token = 2 * d * cfg.expert_ffn_dim * mats  # FLOPs of one token through one expert
    e, k = cfg.num_experts, cfg.top_k
    t.add("router", 2 * tokens * d * e)
    if cfg.num_shared_experts:  # every token, like a dense FFN
        t.add("dense_ffn", tokens * cfg.num_shared_experts * 2 * d * cfg.shared_ffn_dim * mats)
    if cfg.shared_expert_gate:
        t.add("router", 2 * tokens * d)
    capacity = expert_capacity(tokens, e, k, cfg.capacity_factor)
    if not hardware:
        t.add("moe_experts", tokens * k * per_token)
    elif impl == "compute_all_mask":
        t.add("moe_experts", tokens * e * per_token)
        t.add("moe_dispatch", 2 * tokens * e * d)  # combine: te,ted->td
    else:
        t.add("moe_experts", e * capacity * per_token)
        if impl == "dense_dispatch":
            t.add("moe_dispatch", 2 * tokens * e * capacity * d, backward_factor=1)  # tec,td->ecd; mask: no grad
            t.add("moe_dispatch", 2 * tokens * e * capacity * d)  # tec,ecd->td; combine weights take gradients
    return capacity


def _tally(cfg: TransformerConfig, impl: str, causal: bool, hardware: bool) -> tuple[_Tally, int]:
    t = _Tally()
    b = cfg.batch_size
    capacity = 0
    if cfg.encoder_decoder:
        enc_len, dec_len = cfg.seq_len, cfg.decoder_seq_len or cfg.seq_len
        for i in range(cfg.num_layers):
            _attention(t, cfg, b, enc_len, enc_len, causal=False)
            capacity = _ffn(t, cfg, b * enc_len, cfg.is_moe_layer(i), impl, hardware) or capacity
        for i in range(cfg.num_decoder_layers):
            _attention(t, cfg, b, dec_len, dec_len, causal=causal)
            _attention(t, cfg, b, dec_len, enc_len, causal=False)
            capacity = _ffn(t, cfg, b * dec_len, cfg.is_moe_layer(i, decoder=True), impl, hardware) or capacity
        out_len = dec_len
    else:
        for i in range(cfg.num_layers):
            _attention(t, cfg, b, cfg.seq_len, cfg.seq_len, causal=causal)
            capacity = _ffn(t, cfg, b * cfg.seq_len, cfg.is_moe_layer(i), impl, hardware) or capacity
        out_len = cfg.seq_len
    t.add("embeddings_logits", 2 * b * out_len * cfg.d_model * cfg.vocab_size)
    return t, capacity


def _first(*values: bool | None) -> bool:
    return next(v for v in values if v is not None)


def _params(cfg: TransformerConfig) -> tuple[int, int]:
    """(total, active per token) parameter counts."""
    d, a, kv, e, k = cfg.d_model, cfg.attn_dim, cfg.kv_dim, cfg.num_experts, cfg.top_k
    norm = NORMS[cfg.norm] * d
    qkv_bias = _first(cfg.qkv_bias, cfg.attention_bias, cfg.bias)
    attn = 2 * d * a + 2 * d * kv + (a + 2 * kv if qkv_bias else 0) + (d if _first(cfg.attention_bias, cfg.bias) else 0)
    ffn_mats, ffn_bias = (3 if cfg.gated_ffn else 2), _first(cfg.ffn_bias, cfg.bias)

    def ffn(width: int) -> int:
        return ffn_mats * d * width + ((ffn_mats - 1) * width + d if ffn_bias else 0)

    dense, expert = ffn(cfg.ffn_dim), ffn(cfg.expert_ffn_dim)
    shared = cfg.num_shared_experts * ffn(cfg.shared_ffn_dim) + (d if cfg.shared_expert_gate else 0)
    router = d * e

    def stack(layers: int, attn_blocks: int, decoder: bool) -> tuple[int, int]:
        total = active = 0
        for i in range(layers):
            base = attn_blocks * (attn + norm) + norm
            if cfg.is_moe_layer(i, decoder):
                total += base + router + shared + e * expert
                active += base + router + shared + k * expert
            else:
                total += base + dense
                active += base + dense
        relative = cfg.relative_attention_buckets * cfg.num_heads  # one table per stack (T5)
        return total + norm + relative, active + norm + relative  # the stack's final norm

    total, active = stack(cfg.num_layers, 1, False)
    positions = (cfg.max_positions or cfg.seq_len) * d if cfg.learned_positions else 0
    if cfg.encoder_decoder:
        dec_total, dec_active = stack(cfg.num_decoder_layers, 2, True)
        total, active = total + dec_total, active + dec_active
        if cfg.learned_positions:
            positions += (cfg.max_positions or cfg.decoder_seq_len or cfg.seq_len) * d
    embed = cfg.vocab_size * d + positions
    head = 0 if cfg.tied_embeddings else cfg.vocab_size * d
    head += cfg.vocab_size if _first(cfg.head_bias, cfg.bias) else 0
    return total + embed + head, active + embed + head


def transformer_flops(
    config: TransformerConfig,
    *,
    moe_implementation: str | None = None,
    causal: bool = False,
) -> TransformerFlops:
    """Exact matmul FLOPs per training step and parameter counts of a transformer.

    Args:
        config: the model's shape; a `carbon_callbacks.models.GPTConfig` works too (its `moe_implementation`
            is then the default).
        moe_implementation: one of `MOE_IMPLEMENTATIONS`, for `hardware_flops`. Defaults to `None`
            (`config.moe_implementation` if it has one, else `"token_gather"`).
        causal: count decoder self-attention on the lower triangle only (S (S + 1) / 2 pairs). Defaults to
            `False`: the full S x S, which is what dense attention kernels compute.

    Returns:
        A `TransformerFlops`.

    Raises:
        UnknownNameError: for an unknown `moe_implementation`.

    Example:
        >>> cfg = TransformerConfig(num_layers=2, d_model=128, num_heads=4, seq_len=64, batch_size=8,
        ...                         vocab_size=512, d_ff=512)
        >>> transformer_flops(cfg).model_flops
        1509949440
    """
    impl = moe_implementation or getattr(config, "moe_implementation", None) or "token_gather"
    if impl not in MOE_IMPLEMENTATIONS:
        raise unknown_name("moe_implementation", impl, MOE_IMPLEMENTATIONS)
    model, capacity = _tally(config, impl, causal, hardware=False)
    hardware, _ = _tally(config, impl, causal, hardware=True)
    total, active = _params(config)
    out_len = (config.decoder_seq_len or config.seq_len) if config.encoder_decoder else config.seq_len
    return TransformerFlops(
        model_flops=sum(model.step.values()),
        hardware_flops=sum(hardware.step.values()),
        forward_model_flops=sum(model.forward.values()),
        forward_hardware_flops=sum(hardware.forward.values()),
        params_total=total,
        params_active_per_token=active,
        percent_active=100.0 * active / total,
        tokens_per_step=config.batch_size * out_len,
        breakdown=dict(model.step),
        hardware_breakdown=dict(hardware.step),
        moe_implementation=impl,
        causal=causal,
        expert_capacity=capacity,
    )


def generation_flops(config: TransformerConfig, *, batch: int, new_tokens: int, context: int,
                     logits_tokens: int | None = None) -> int:
    """Model FLOPs of one forward pass of generation with a KV cache: `new_tokens` tokens per sequence (the prompt
    at the first pass, then one per pass) attending to `context` positions (the cache plus themselves).

    Keys and values are projected for the new tokens only (the cache holds the rest); the scores and the weighted
    sum of values run over `new_tokens x context` pairs, without causal halving (the convention of
    `transformer_flops`); MoE layers count the router and the `top_k` experts; the logits are for
    `logits_tokens` positions per sequence (`generate` asks for the last one). Forward only: generation takes
    no gradient.

    Args:
        config: a decoder-only model's shape (its `seq_len` and `batch_size` are not used).
        batch: sequences generated together.
        new_tokens: tokens per sequence this pass adds to the cache.
        context: positions each new token attends to, itself included.
        logits_tokens: positions per sequence whose logits are computed. Defaults to `None`: `new_tokens`.

    Raises:
        InvalidInputError: for an encoder-decoder config, a count below 1, or a `context` below `new_tokens`.

    Example:
        >>> cfg = TransformerConfig(num_layers=2, d_model=128, num_heads=4, seq_len=64, batch_size=8,
        ...                         vocab_size=512, d_ff=512)
        >>> generation_flops(cfg, batch=1, new_tokens=64, context=64) * 3 * 8 == transformer_flops(cfg).model_flops
        True
    """
    if config.encoder_decoder:
        raise InvalidInputError("generation_flops counts decoder-only models; this config has decoder layers.")
    batch, new_tokens, context = (check_count(name, value) for name, value in
                                  (("batch", batch), ("new_tokens", new_tokens), ("context", context)))
    logits_tokens = new_tokens if logits_tokens is None else check_count("logits_tokens", logits_tokens)
    if context < new_tokens:
        raise InvalidInputError(f"context must be at least new_tokens ({new_tokens}), got {context}.")
    t = _Tally()
    d, a, tokens = config.d_model, config.attn_dim, batch * new_tokens
    for i in range(config.num_layers):
        t.add("attention", 2 * tokens * d * (a + 2 * config.kv_dim))  # Q, and K, V of the new tokens
        t.add("attention", 2 * 2 * tokens * context * a)  # scores and the weighted sum of V over the cache
        t.add("attention", 2 * tokens * a * d)  # output projection
        _ffn(t, config, tokens, config.is_moe_layer(i), "token_gather", hardware=False)
    t.add("embeddings_logits", 2 * batch * logits_tokens * d * config.vocab_size)
    return sum(t.forward.values())
