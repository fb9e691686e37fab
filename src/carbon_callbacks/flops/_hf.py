"""`TransformerConfig.from_hf`: the shape of a Hugging Face model from its config. Pure Python.

Reads a `transformers` `PretrainedConfig` (through its `to_dict()`) or the dict of a `config.json`, and builds
the layers the `transformers` model class of that `model_type` builds:

- `gpt2`: multi-head attention and FFN with biases, learned positions, tied head;
- `llama`, `mistral`, `qwen2`: grouped-query attention, SwiGLU FFN, RMSNorm, RoPE, untied head;
- `mixtral`: as Mistral, every FFN a routed MoE of SwiGLU experts;
- `qwen2_moe`: as Qwen2, with routed SwiGLU experts plus a gated shared expert every `decoder_sparse_step`-th layer;
- `t5`, `mt5`: encoder-decoder with relative position bias, ReLU or gated FFN;
- `switch_transformers`: as T5, with a top-1 routed MoE on layers `i % sparse_step == 1`.

The table in docs/flops.md ("Hugging Face configs") has the details. A field that sets a size (layers, widths,
heads, vocabulary, experts, experts per token) must be in the config: its absence is an `InvalidInputError` naming
it. A switch that `transformers` defaults when the file leaves it out (`num_key_value_heads`, `head_dim`,
`tie_word_embeddings`, biases, sparse steps) takes that default, as loading the file with `transformers` would.
Norms are counted (LayerNorm: weight and bias; RMSNorm and T5's norm: weight).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from carbon_callbacks._errors import InvalidInputError, check_count, check_number


class _Fields:
    """Reads the fields of one config, naming the missing or bad one in the error."""

    def __init__(self, values: Mapping[str, Any], model_type: str) -> None:
        self.values = values
        self.model_type = model_type

    def size(self, name: str) -> int:
        """A required count."""
        value = self.values.get(name)
        if value is None:
            raise InvalidInputError(
                f"{name}: missing from the {self.model_type!r} config; it sets a size of the model, so it is not "
                "guessed. Add it to the config (see the model's config.json on the Hugging Face Hub)."
            )
        return check_count(f"config field {name}", value)

    def get(self, name: str, default: Any) -> Any:
        """An optional field, with the default `transformers` gives it."""
        value = self.values.get(name)
        return default if value is None else value

    def count(self, name: str, default: int | None, minimum: int = 1, null_disables: bool = False) -> int | None:
        """An optional count. An explicit `null` takes the default too, unless it `null_disables` the feature
        (`"sliding_window": null` is no window, while a missing `sliding_window` is Mistral's 4096)."""
        if null_disables and name in self.values and self.values[name] is None:
            return None
        value = self.get(name, default)
        return None if value is None else check_count(f"config field {name}", value, minimum=minimum)

    def flag(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise InvalidInputError(f"config field {name} must be true or false, got {value!r}.")
        return value

    def unsupported(self, name: str, why: str) -> InvalidInputError:
        return InvalidInputError(f"{name}: {why} in the {self.model_type!r} config is not modelled by the count.")


def _gpt2(f: _Fields) -> dict:
    if f.flag("add_cross_attention", False):
        raise f.unsupported("add_cross_attention", "cross-attention")
    d = f.size("n_embd")
    return dict(
        num_layers=f.size("n_layer"), d_model=d, num_heads=f.size("n_head"), vocab_size=f.size("vocab_size"),
        d_ff=f.count("n_inner", 4 * d), max_positions=f.size("n_positions"), learned_positions=True,
        tied_embeddings=f.flag("tie_word_embeddings", True), norm="layernorm", bias=True, head_bias=False,
    )


def _decoder(f: _Fields, *, qkv_bias: bool | None) -> dict:
    """The shared layout of Llama, Mistral, Qwen2 and their MoE variants."""
    d, heads = f.size("hidden_size"), f.size("num_attention_heads")
    return dict(
        num_layers=f.size("num_hidden_layers"), d_model=d, num_heads=heads, vocab_size=f.size("vocab_size"),
        num_kv_heads=f.count("num_key_value_heads", heads), head_dim=f.count("head_dim", d // heads),
        gated_ffn=True, norm="rmsnorm", learned_positions=False, bias=False, qkv_bias=qkv_bias,
        tied_embeddings=f.flag("tie_word_embeddings", False),
    )


def _no_sliding_window(f: _Fields) -> None:
    if f.flag("use_sliding_window", False):
        raise f.unsupported("use_sliding_window", "sliding-window attention on some layers only")


def _llama(f: _Fields) -> dict:
    return {
        **_decoder(f, qkv_bias=None), "d_ff": f.size("intermediate_size"),
        "attention_bias": f.flag("attention_bias", False), "ffn_bias": f.flag("mlp_bias", False),
    }


def _mistral(f: _Fields) -> dict:
    return {**_decoder(f, qkv_bias=None), "d_ff": f.size("intermediate_size"),
            "attention_window": f.count("sliding_window", 4096, null_disables=True)}


def _qwen2(f: _Fields) -> dict:
    _no_sliding_window(f)
    return {**_decoder(f, qkv_bias=True), "d_ff": f.size("intermediate_size")}


def _mixtral(f: _Fields) -> dict:
    return {
        **_decoder(f, qkv_bias=None), "d_ff": f.size("intermediate_size"),
        "num_experts": f.size("num_local_experts"), "top_k": f.size("num_experts_per_tok"),
        "attention_window": f.count("sliding_window", None),
    }


def _qwen2_moe(f: _Fields) -> dict:
    _no_sliding_window(f)
    base = _decoder(f, qkv_bias=f.flag("qkv_bias", True))
    step = f.count("decoder_sparse_step", 1)
    dense_only = {check_count("config field mlp_only_layers entry", i, minimum=0)
                  for i in f.get("mlp_only_layers", [])}
    return {
        **base, "d_ff": f.size("intermediate_size"), "expert_d_ff": f.size("moe_intermediate_size"),
        "num_experts": f.size("num_experts"), "top_k": f.size("num_experts_per_tok"),
        "num_shared_experts": 1, "shared_expert_d_ff": f.size("shared_expert_intermediate_size"),
        "shared_expert_gate": True,
        "moe_layers": tuple(i for i in range(base["num_layers"]) if i not in dense_only and (i + 1) % step == 0),
    }


def _t5_stacks(f: _Fields) -> dict:
    layers = f.size("num_layers")
    return dict(
        num_layers=layers, num_decoder_layers=f.count("num_decoder_layers", layers), d_model=f.size("d_model"),
        num_heads=f.size("num_heads"), head_dim=f.size("d_kv"), d_ff=f.size("d_ff"),
        vocab_size=f.size("vocab_size"), relative_attention_buckets=f.count("relative_attention_num_buckets", 32),
        learned_positions=False, norm="rmsnorm", bias=False, tied_embeddings=f.flag("tie_word_embeddings", True),
    )


def _t5(f: _Fields) -> dict:
    projection = str(f.get("feed_forward_proj", "relu"))
    return {**_t5_stacks(f), "gated_ffn": projection.startswith("gated-")}


def _sparse_layers(f: _Fields, layers: int, step_field: str, count_field: str) -> tuple[int, ...]:
    """Switch's sparse layers: `i % step == 1` (every layer if step is 1), as `transformers` builds them."""
    step = f.count(step_field, None, minimum=0)
    if step is None:  # derived as SwitchTransformersConfig does
        sparse = f.count(count_field, 3, minimum=0)
        step = layers // sparse if sparse > 0 else layers
    if step == 0:
        return ()
    return tuple(i for i in range(layers) if i % step == 1 or step == 1)


def _switch(f: _Fields) -> dict:
    if f.flag("router_bias", False):
        raise f.unsupported("router_bias", "a router bias")
    stacks = _t5_stacks(f)
    return {
        **stacks, "gated_ffn": False, "num_experts": f.size("num_experts"), "top_k": 1,
        "moe_layers": _sparse_layers(f, stacks["num_layers"], "encoder_sparse_step", "num_sparse_encoder_layers"),
        "decoder_moe_layers": _sparse_layers(f, stacks["num_decoder_layers"], "decoder_sparse_step",
                                             "num_sparse_decoder_layers"),
    }


#: model_type -> reader. Context-length field, for the default sequence length.
_FAMILIES = {
    "gpt2": (_gpt2, "n_positions"),
    "llama": (_llama, "max_position_embeddings"),
    "mistral": (_mistral, "max_position_embeddings"),
    "qwen2": (_qwen2, "max_position_embeddings"),
    "mixtral": (_mixtral, "max_position_embeddings"),
    "qwen2_moe": (_qwen2_moe, "max_position_embeddings"),
    "t5": (_t5, "n_positions"),
    "mt5": (_t5, "n_positions"),
    "switch_transformers": (_switch, None),
}

#: The `model_type`s `from_hf` reads.
HF_MODEL_TYPES = tuple(sorted(_FAMILIES))


def hf_config_dict(config: Any) -> dict:
    """The fields of a `PretrainedConfig` (its `to_dict()`) or of a `config.json` dict."""
    if isinstance(config, Mapping):
        return dict(config)
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        values = to_dict()
        values.setdefault("model_type", getattr(config, "model_type", None))
        return values
    raise InvalidInputError(
        f"config: expected a transformers PretrainedConfig or the dict of a config.json, got {type(config).__name__}."
    )


def config_from_hf(
    config: Any,
    *,
    cls: type,
    seq_len: int | None = None,
    batch_size: int = 1,
    decoder_seq_len: int | None = None,
    capacity_factor: float = 1.0,
):
    """See `TransformerConfig.from_hf`."""
    values = hf_config_dict(config)
    model_type = values.get("model_type")
    if not model_type:
        raise InvalidInputError(
            "model_type: missing from the config, so its architecture is unknown. Add the model's \"model_type\" "
            f"(one of {', '.join(HF_MODEL_TYPES)})."
        )
    if model_type not in _FAMILIES:
        raise InvalidInputError(
            f"model_type: {model_type!r} is not supported by the analytic count (supported: "
            f"{', '.join(HF_MODEL_TYPES)}). Count the model by tracing it instead (carbon_callbacks.flops.count)."
        )
    reader, context_field = _FAMILIES[model_type]
    fields = _Fields(values, model_type)
    shape = reader(fields)
    if seq_len is None:
        if context_field is None or values.get(context_field) is None:
            raise InvalidInputError(
                f"seq_len: the {model_type!r} config has no context length to default to; pass seq_len (--seq-len)."
            )
        seq_len = fields.size(context_field)
    return cls(
        **shape,
        seq_len=check_count("seq_len", seq_len),
        batch_size=check_count("batch_size", batch_size),
        decoder_seq_len=None if decoder_seq_len is None else check_count("decoder_seq_len", decoder_seq_len),
        capacity_factor=check_number("capacity_factor", capacity_factor, positive=True),
    )
