"""`TransformerConfig.from_hf` against the real `transformers` classes: their config objects (no download) and
tiny models built from them, whose parameters and traced FLOPs must equal the analytic counts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from carbon_callbacks.flops import TransformerConfig, count, transformer_flops  # noqa: E402


def _published() -> dict:
    """The published config.json dicts of tests/unit/test_flops_hf.py (one copy of them in the repository)."""
    path = Path(__file__).resolve().parents[2] / "tests" / "unit" / "test_flops_hf.py"
    spec = importlib.util.spec_from_file_location("_published_hf_configs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PUBLISHED


PUBLISHED = _published()


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_config_objects_count_like_their_json(name):
    values = PUBLISHED[name][0]
    config = transformers.AutoConfig.for_model(values["model_type"],
                                               **{k: v for k, v in values.items() if k != "model_type"})
    from_object = transformer_flops(TransformerConfig.from_hf(config, seq_len=512))
    from_json = transformer_flops(TransformerConfig.from_hf(values, seq_len=512))
    if name == "t5-v1.1-base":  # transformers 5 ties T5's head whatever the file says; so does the count
        assert from_object.params_total == from_json.params_total - 32128 * 768
        return
    assert from_object == from_json


def _tiny(name: str):
    t = transformers
    common = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, vocab_size=96)
    t5 = dict(d_model=32, d_kv=8, num_heads=4, d_ff=48, vocab_size=96)
    return {
        "gpt2": (t.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=96, n_positions=64), t.GPT2LMHeadModel),
        "llama-gqa": (t.LlamaConfig(num_hidden_layers=2, attention_bias=True, **common), t.LlamaForCausalLM),
        "qwen2": (t.Qwen2Config(num_hidden_layers=2, **common), t.Qwen2ForCausalLM),
        "mixtral": (t.MixtralConfig(num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2, **common),
                    t.MixtralForCausalLM),
        "qwen2-moe": (t.Qwen2MoeConfig(num_hidden_layers=4, moe_intermediate_size=16, num_experts=6,
                                       num_experts_per_tok=2, shared_expert_intermediate_size=40,
                                       decoder_sparse_step=2, mlp_only_layers=[3], **common),
                      t.Qwen2MoeForCausalLM),
        "t5": (t.T5Config(num_layers=2, num_decoder_layers=3, **t5), t.T5ForConditionalGeneration),
        "switch": (t.SwitchTransformersConfig(num_layers=4, num_sparse_encoder_layers=2, num_sparse_decoder_layers=1,
                                              num_experts=4, **t5), t.SwitchTransformersForConditionalGeneration),
    }[name]


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "qwen2", "mixtral", "qwen2-moe", "t5", "switch"])
def test_tiny_models_match_the_analytic_count(name):
    """Parameters exactly; traced FLOPs of a training step equal the analytic model FLOPs (these transformers
    MoE layers run each expert on its routed tokens only: no capacity padding)."""
    config, model_class = _tiny(name)
    torch.manual_seed(0)
    model = model_class(config)
    analytic = transformer_flops(TransformerConfig.from_hf(config, seq_len=16, batch_size=2))
    assert sum(p.numel() for p in model.parameters()) == analytic.params_total
    ids = torch.randint(0, 96, (2, 16))
    kwargs = {"decoder_input_ids": torch.randint(0, 96, (2, 16))} if config.is_encoder_decoder else {}
    assert count(model, ids, **kwargs).total == analytic.model_flops
