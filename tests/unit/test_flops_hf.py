"""`TransformerConfig.from_hf` on published Hugging Face configs (as dicts: no `transformers` import), and
`carbon-callbacks flops --hf-config`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from carbon_callbacks import cli
from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks.flops import TransformerConfig, transformer_flops

# The config.json files of the Hugging Face Hub repositories named, as published (fields that only matter for
# training or generation left in, as a user would pass them).
GPT2 = {  # openai-community/gpt2
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
    "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True, "vocab_size": 50257,
}
LLAMA2_7B = {  # meta-llama/Llama-2-7b-hf
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
    "torch_dtype": "float16", "use_cache": True, "vocab_size": 32000,
}
MISTRAL_7B = {  # mistralai/Mistral-7B-v0.1
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
    "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 32000,
}
MIXTRAL_8X7B = {  # mistralai/Mixtral-8x7B-v0.1
    "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32, "num_experts_per_tok": 2,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 32000,
}
QWEN15_MOE_A27B = {  # Qwen/Qwen1.5-MoE-A2.7B
    "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "decoder_sparse_step": 1, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 5632, "max_position_embeddings": 8192, "max_window_layers": 21,
    "model_type": "qwen2_moe", "moe_intermediate_size": 1408, "norm_topk_prob": False, "num_attention_heads": 16,
    "num_experts": 60, "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 16,
    "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
    "shared_expert_intermediate_size": 5632, "sliding_window": 32768, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
SWITCH_BASE_8 = {  # google/switch-base-8
    "architectures": ["SwitchTransformersForConditionalGeneration"], "batch_prioritized_routing": False,
    "d_ff": 3072, "d_kv": 64, "d_model": 768, "decoder_sparse_step": 2, "decoder_start_token_id": 0,
    "dense_act_fn": "relu", "dropout_rate": 0.1, "encoder_sparse_step": 2, "eos_token_id": 1, "expert_capacity": 64,
    "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": False, "layer_norm_epsilon": 1e-06,
    "model_type": "switch_transformers", "num_decoder_layers": 12, "num_experts": 8, "num_heads": 12,
    "num_layers": 12, "num_selected_experts": 1, "num_sparse_decoder_layers": 6, "num_sparse_encoder_layers": 6,
    "pad_token_id": 0, "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
    "router_bias": False, "router_dtype": "float32", "router_ignore_padding_tokens": False,
    "router_jitter_noise": 0.01, "router_type": "tokens_masked", "router_z_loss_coef": 0.001, "vocab_size": 32128,
}
T5_V11_BASE = {  # google/t5-v1_1-base
    "architectures": ["T5ForConditionalGeneration"], "d_ff": 2048, "d_kv": 64, "d_model": 768,
    "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0, "is_encoder_decoder": True, "layer_norm_epsilon": 1e-06, "model_type": "t5",
    "num_decoder_layers": 12, "num_heads": 12, "num_layers": 12, "output_past": True, "pad_token_id": 0,
    "relative_attention_num_buckets": 32, "tie_word_embeddings": False, "vocab_size": 32128,
}

#: name -> (config, published total parameters, published active parameters or None, source)
PUBLISHED = {
    # GPT-2 paper / model card: "124M"; the count of GPT2LMHeadModel (tied head) is 124,439,808.
    "gpt2": (GPT2, 124.4e6, None),
    # Llama 2 paper (Touvron et al. 2023) model card: 6.74B.
    "llama2-7b": (LLAMA2_7B, 6.74e9, None),
    # Mistral 7B announcement: 7.3B; exact 7,241,732,096.
    "mistral-7b": (MISTRAL_7B, 7.24e9, None),
    # Mixtral of experts (Jiang et al. 2024, arXiv:2401.04088): 46.7B total, 12.9B active per token.
    "mixtral-8x7b": (MIXTRAL_8X7B, 46.7e9, 12.9e9),
    # Qwen1.5-MoE-A2.7B model card: 14.3B total, 2.7B activated.
    "qwen1.5-moe-a2.7b": (QWEN15_MOE_A27B, 14.3e9, 2.7e9),
    # google/switch-base-8 model card (Fedus et al. 2021): about 620M.
    "switch-base-8": (SWITCH_BASE_8, 620e6, None),
    # google/t5-v1_1-base: 247.6M (untied head, gated-GELU).
    "t5-v1.1-base": (T5_V11_BASE, 247.6e6, None),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameters_match_published_within_1_percent(name):
    config, total, active = PUBLISHED[name]
    r = transformer_flops(TransformerConfig.from_hf(config, seq_len=512))
    assert abs(r.params_total / total - 1) < 0.01, r.params_total
    if active is not None:
        assert abs(r.params_active_per_token / active - 1) < 0.01, r.params_active_per_token


def test_exact_counts_of_the_published_configs():
    """Exact totals (which the real transformers modules match: integrations/flops/test_hf_flops.py)."""
    exact = {name: transformer_flops(TransformerConfig.from_hf(c, seq_len=512)) for name, (c, _, _) in
             PUBLISHED.items()}
    assert exact["gpt2"].params_total == 124_439_808
    assert exact["llama2-7b"].params_total == 6_738_415_616
    assert exact["mistral-7b"].params_total == 7_241_732_096
    assert (exact["mixtral-8x7b"].params_total, exact["mixtral-8x7b"].params_active_per_token) == (
        46_702_792_704, 12_879_925_248)
    assert (exact["qwen1.5-moe-a2.7b"].params_total, exact["qwen1.5-moe-a2.7b"].params_active_per_token) == (
        14_315_784_192, 2_689_173_504)
    assert exact["switch-base-8"].params_total == 619_339_008


def test_mixtral_shape():
    cfg = TransformerConfig.from_hf(MIXTRAL_8X7B, seq_len=4096, batch_size=2)
    assert (cfg.num_kv_heads, cfg.kv_dim, cfg.gated_ffn, cfg.num_experts, cfg.top_k) == (8, 1024, True, 8, 2)
    assert not cfg.tied_embeddings and not cfg.learned_positions and cfg.norm == "rmsnorm"
    r = transformer_flops(cfg)
    tokens = 2 * 4096
    # per layer, forward: Q and O 2 x 4096^2, K and V 2 x 4096 x 1024 (grouped-query), per token
    projections = 2 * tokens * (2 * 4096 * 4096 + 2 * 4096 * 1024)
    scores = 2 * 2 * 2 * 4096 * 4096 * 4096
    assert r.breakdown["attention"] == 3 * 32 * (projections + scores)
    assert r.breakdown["moe_experts"] == 3 * 32 * tokens * 2 * (2 * 3 * 4096 * 14336)  # top-2 SwiGLU experts
    assert r.breakdown["router"] == 3 * 32 * 2 * tokens * 4096 * 8


def test_qwen_moe_shared_expert_and_gate():
    cfg = TransformerConfig.from_hf(QWEN15_MOE_A27B, seq_len=1024)
    assert (cfg.expert_ffn_dim, cfg.num_shared_experts, cfg.shared_ffn_dim, cfg.shared_expert_gate) == (
        1408, 1, 5632, True)
    assert cfg.moe_layers == tuple(range(24)) and cfg.qkv_bias and not cfg.bias
    r = transformer_flops(cfg)
    tokens = 1024
    assert r.breakdown["dense_ffn"] == 3 * 24 * tokens * 2 * 3 * 2048 * 5632  # the shared expert, every token
    assert r.breakdown["router"] == 3 * 24 * 2 * tokens * 2048 * (60 + 1)  # router and shared-expert gate
    assert r.breakdown["moe_experts"] == 3 * 24 * tokens * 4 * 2 * 3 * 2048 * 1408


def test_qwen_moe_sparse_step_and_mlp_only_layers():
    cfg = TransformerConfig.from_hf({**QWEN15_MOE_A27B, "decoder_sparse_step": 2, "mlp_only_layers": [3]},
                                    seq_len=64)
    assert cfg.moe_layers == tuple(i for i in range(24) if i % 2 == 1 and i != 3)
    assert not cfg.is_moe_layer(3) and cfg.is_moe_layer(5)


def test_switch_sparse_layers_follow_transformers():
    """transformers' SwitchTransformersStack: layer i is sparse when i % sparse_step == 1."""
    cfg = TransformerConfig.from_hf(SWITCH_BASE_8, seq_len=512, decoder_seq_len=114)
    assert cfg.moe_layers == cfg.decoder_moe_layers == (1, 3, 5, 7, 9, 11)
    assert cfg.encoder_decoder and cfg.top_k == 1 and cfg.tied_embeddings and cfg.relative_attention_buckets == 32
    derived = {k: v for k, v in SWITCH_BASE_8.items() if k not in ("encoder_sparse_step", "decoder_sparse_step")}
    assert TransformerConfig.from_hf({**derived, "num_sparse_encoder_layers": 4}, seq_len=8).moe_layers == (1, 4, 7,
                                                                                                          10)


def test_gpt2_counts_its_position_table_and_no_head_bias():
    cfg = TransformerConfig.from_hf(GPT2, seq_len=128)
    assert cfg.max_positions == 1024 and cfg.tied_embeddings and cfg.bias and cfg.head_bias is False
    r = transformer_flops(cfg)
    d, layer = 768, 12 * (4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 2 * 2 * 768)
    assert r.params_total == 50257 * d + 1024 * d + layer + 2 * d


def test_sequence_length_defaults_to_the_context_length():
    assert TransformerConfig.from_hf(GPT2).seq_len == 1024
    with pytest.raises(InvalidInputError, match="seq_len"):
        TransformerConfig.from_hf(SWITCH_BASE_8)


def test_sliding_window_limits_causal_pairs_only():
    long = TransformerConfig.from_hf(MISTRAL_7B, seq_len=8192)
    unlimited = TransformerConfig.from_hf({**MISTRAL_7B, "sliding_window": None}, seq_len=8192)
    assert transformer_flops(long).model_flops == transformer_flops(unlimited).model_flops  # full S x S either way
    pairs = 4096 * 4097 // 2 + 4096 * 4096  # the first 4096 queries see their prefix, the rest 4096 keys
    saved = 8192 * 8193 // 2 - pairs
    windowed, full = transformer_flops(long, causal=True), transformer_flops(unlimited, causal=True)
    assert full.model_flops - windowed.model_flops == 3 * 32 * 2 * 2 * saved * 4096


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({**MIXTRAL_8X7B, "model_type": "falcon"}, "model_type"),
        ({k: v for k, v in MIXTRAL_8X7B.items() if k != "model_type"}, "model_type"),
        ({k: v for k, v in MIXTRAL_8X7B.items() if k != "num_local_experts"}, "num_local_experts"),
        ({k: v for k, v in LLAMA2_7B.items() if k != "intermediate_size"}, "intermediate_size"),
        ({k: v for k, v in QWEN15_MOE_A27B.items() if k != "moe_intermediate_size"}, "moe_intermediate_size"),
        ({k: v for k, v in GPT2.items() if k != "n_embd"}, "n_embd"),
        ({k: v for k, v in SWITCH_BASE_8.items() if k != "d_kv"}, "d_kv"),
        ({**QWEN15_MOE_A27B, "use_sliding_window": True}, "use_sliding_window"),
        ({**LLAMA2_7B, "hidden_size": "big"}, "hidden_size"),
    ],
)
def test_unknown_type_or_missing_field_is_named(config, field):
    with pytest.raises(InvalidInputError, match=field):
        TransformerConfig.from_hf(config, seq_len=16)


def test_reading_a_dict_imports_no_transformers():
    code = (
        "import sys; from carbon_callbacks.flops import TransformerConfig; "
        "TransformerConfig.from_hf({'model_type': 'gpt2', 'n_layer': 2, 'n_embd': 8, 'n_head': 2, "
        "'vocab_size': 10, 'n_positions': 16}); "
        "print(sorted(m for m in ('transformers', 'torch', 'jax', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_hf_config_json_has_the_usual_keys(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(MIXTRAL_8X7B))
    assert cli.main(["flops", "--hf-config", str(path), "--batch", "8", "--seq-len", "4096", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("model_flops", "hardware_flops", "params_total", "params_active_per_token", "percent_active"):
        assert key in out
    expected = transformer_flops(TransformerConfig.from_hf(MIXTRAL_8X7B, seq_len=4096, batch_size=8))
    assert (out["model_flops"], out["params_total"]) == (expected.model_flops, 46_702_792_704)
    assert round(out["percent_active"], 1) == 27.6


def test_cli_hf_config_table(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN15_MOE_A27B))
    assert cli.main(["flops", "--hf-config", str(path), "--batch", "2", "--seq-len", "128"]) == 0
    assert "14315784192 total, 2689173504 activated per token" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--layers", "2"], "--layers"),
        (["--experts", "4"], "--experts"),
        (["--seq-len", "0"], "--seq-len"),
    ],
)
def test_cli_hf_config_refuses_shape_flags_and_bad_numbers(tmp_path, capsys, argv, match):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GPT2))
    assert cli.main(["flops", "--hf-config", str(path), *argv]) == 2
    assert match in capsys.readouterr().err


def test_cli_hf_config_unreadable(tmp_path, capsys):
    assert cli.main(["flops", "--hf-config", str(tmp_path / "missing.json")]) == 2
    assert "--hf-config" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert cli.main(["flops", "--hf-config", str(tmp_path / "bad.json")]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_cli_without_hf_config_names_the_missing_flags(capsys):
    assert cli.main(["flops", "--layers", "2"]) == 2
    err = capsys.readouterr().err
    assert "--d-model" in err and "--hf-config" in err
