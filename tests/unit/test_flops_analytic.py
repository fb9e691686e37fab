"""The analytic FLOP and parameter counter, and `carbon-callbacks flops`. No framework imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from carbon_callbacks import cli
from carbon_callbacks._errors import InvalidInputError, UnknownNameError
from carbon_callbacks.flops import (
    LAYER_KINDS,
    TransformerConfig,
    classify_module,
    count,
    expert_capacity,
    transformer_flops,
)
from carbon_callbacks.models import DENSE, SWITCH, TOP2

# The worked check of docs/flops.md: L=2, d_model=128, heads=4, seq 64, batch 8, vocab 512, d_ff 512, untied head.
WORKED = TransformerConfig(num_layers=2, d_model=128, num_heads=4, seq_len=64, batch_size=8, vocab_size=512, d_ff=512)


def test_worked_example_forward_terms():
    r = transformer_flops(WORKED)
    tokens = 8 * 64
    per_layer = (
        2 * tokens * 128 * 3 * 128  # QKV  50,331,648
        + 2 * 2 * 8 * 64 * 64 * 128  # scores and values  16,777,216
        + 2 * tokens * 128 * 128  # output projection  16,777,216
        + 2 * 2 * tokens * 128 * 512  # FFN  134,217,728
    )
    logits = 2 * tokens * 128 * 512  # 67,108,864
    assert r.forward_model_flops == 2 * per_layer + logits == 503_316_480
    assert r.model_flops == r.hardware_flops == 3 * 503_316_480 == 1_509_949_440


def test_worked_example_breakdown_and_params():
    r = transformer_flops(WORKED)
    assert r.breakdown == {
        "attention": 503_316_480,
        "dense_ffn": 805_306_368,
        "moe_experts": 0,
        "router": 0,
        "moe_dispatch": 0,
        "embeddings_logits": 201_326_592,
    }
    # token 512x128 + positions 64x128 + 2 x (attention 4x128^2 + FFN 2x128x512 + 2 LayerNorms 2x2x128)
    # + final LayerNorm 2x128 + head 512x128
    assert r.params_total == r.params_active_per_token == 533_760
    assert r.percent_active == 100.0
    assert r.tokens_per_step == 512


def test_causal_counts_the_lower_triangle():
    full, causal = transformer_flops(WORKED), transformer_flops(WORKED, causal=True)
    pairs_saved = 64 * 64 - 64 * 65 // 2
    assert full.model_flops - causal.model_flops == 3 * 2 * (2 * 2 * 8 * pairs_saved * 128)
    assert causal.model_flops == 1_460_404_224


@pytest.mark.parametrize(
    ("tokens", "experts", "top_k", "factor", "expected"),
    [(128, 4, 1, 1.25, 40), (128, 4, 2, 1.25, 80), (100, 4, 1, 1.1, 28), (100, 10, 1, 1.1, 11), (3, 8, 1, 1.0, 1)],
)
def test_expert_capacity(tokens, experts, top_k, factor, expected):
    assert expert_capacity(tokens, experts, top_k, factor) == expected


def test_switch_model_and_hardware_flops():
    r = transformer_flops(SWITCH)  # 2 layers, d 64, f 256, 4 experts, top-1, capacity factor 1.25, MoE every 2nd
    t, d, f = 4 * 32, 64, 256
    expert_token = 2 * 2 * d * f
    dense = transformer_flops(DENSE)
    assert r.model_flops == dense.model_flops + 3 * (2 * t * d * 4)  # + router; top-1 expert == dense FFN
    assert r.expert_capacity == 40
    assert r.hardware_flops - r.model_flops == 3 * (4 * 40 - t) * expert_token  # padding slots
    assert (r.model_flops, r.hardware_flops) == (94_568_448, 100_859_904)


def test_hardware_variants_of_top2():
    t, d, f, e = 128, 64, 256, 4
    gather = transformer_flops(TOP2, moe_implementation="token_gather")
    dispatch = transformer_flops(TOP2, moe_implementation="dense_dispatch")
    all_ = transformer_flops(TOP2, moe_implementation="compute_all_mask")
    c = gather.expert_capacity
    assert c == 80
    assert dispatch.hardware_flops - gather.hardware_flops == (2 + 3) * 2 * t * e * c * d  # dispatch 2x, combine 3x
    assert all_.hardware_breakdown["moe_experts"] == 3 * t * e * 2 * 2 * d * f
    assert all_.hardware_breakdown["moe_dispatch"] == 3 * 2 * t * e * d
    assert gather.model_flops == dispatch.model_flops == all_.model_flops == 119_734_272
    assert (gather.hardware_flops, dispatch.hardware_flops, all_.hardware_flops) == (
        132_317_184,
        158_531_584,
        170_262_528,
    )


def test_moe_params_and_percent_active():
    r = transformer_flops(TOP2)
    expert = 2 * 64 * 256
    assert r.params_total - transformer_flops(DENSE).params_total == 3 * expert + 64 * 4  # 4 experts replace 1 FFN
    assert r.params_total - r.params_active_per_token == 2 * expert
    assert r.percent_active == pytest.approx(100 * 166_784 / 232_320)


def test_gshard_600b_published_config():
    # GShard (Lepikhin et al. 2020, arXiv:2006.16668, Table 1 "MoE(2048E, 36L)"): 36 layers in all (18 encoder,
    # 18 decoder), every other FFN an MoE of 2048 experts, top-2, d_model 1024, FFN 8192, 16 heads, 64k
    # SentencePiece vocabulary shared by source, target and softmax.
    cfg = TransformerConfig(
        num_layers=18, num_decoder_layers=18, d_model=1024, num_heads=16, d_ff=8192, num_experts=2048, top_k=2,
        moe_every=2, seq_len=1024, batch_size=4096, vocab_size=64000, learned_positions=False, tied_embeddings=True,
    )
    r = transformer_flops(cfg)
    assert r.params_total == 619_107_246_080  # Table 4 of Patterson et al. 2021: 619B
    assert r.params_active_per_token == 1_235_935_232
    # Patterson et al. print 0.25%; the exact count (all non-expert weights + 2 experts per MoE layer) is 0.20%.
    assert round(r.percent_active, 3) == 0.2
    assert abs(r.percent_active - 0.25) < 0.06


def test_switch_c_published_config():
    # Switch-C (Fedus et al. 2021, arXiv:2101.03961, Table 9): 15 encoder + 15 decoder layers, every FFN an MoE of
    # 2048 experts, top-1, d_model 2080, FFN 6144, 32 heads of 64, T5 vocabulary 32128 (tied); 1571B parameters.
    cfg = TransformerConfig(
        num_layers=15, num_decoder_layers=15, d_model=2080, num_heads=32, head_dim=64, d_ff=6144, num_experts=2048,
        top_k=1, seq_len=512, batch_size=2048, vocab_size=32128, learned_positions=False, tied_embeddings=True,
        norm="rmsnorm",
    )
    r = transformer_flops(cfg)
    assert round(r.params_total / 1e9) == 1571
    assert round(r.percent_active, 2) == 0.11  # Patterson et al. Table 4: 0.10%
    assert r.hardware_flops == r.model_flops  # capacity factor 1.0 and 1M tokens: no padding slots


def test_encoder_decoder_adds_cross_attention():
    enc_dec = TransformerConfig(num_layers=1, num_decoder_layers=1, d_model=64, num_heads=4, seq_len=16,
                                decoder_seq_len=8, batch_size=2, vocab_size=100, d_ff=128)
    r = transformer_flops(enc_dec)
    d, b = 64, 2

    def attention(q, kv):
        return 2 * b * q * d * d + 2 * b * kv * d * 2 * d + 4 * b * q * kv * d + 2 * b * q * d * d

    forward = attention(16, 16) + attention(8, 8) + attention(8, 16) + 4 * b * (16 + 8) * d * 128 + 2 * b * 8 * d * 100
    assert r.forward_model_flops == forward
    assert r.tokens_per_step == 16


def test_invalid_configs_name_the_field():
    with pytest.raises(InvalidInputError, match="num_heads"):
        TransformerConfig(num_layers=1, d_model=10, num_heads=3, seq_len=4, batch_size=1, vocab_size=8)
    with pytest.raises(InvalidInputError, match="top_k"):
        TransformerConfig(num_layers=1, d_model=8, num_heads=2, seq_len=4, batch_size=1, vocab_size=8,
                          num_experts=2, top_k=3)
    with pytest.raises(InvalidInputError, match="capacity_factor"):
        expert_capacity(10, 2, 1, 0)
    with pytest.raises(UnknownNameError, match="moe_implementation"):
        transformer_flops(WORKED, moe_implementation="megablocks")


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("GPT.blocks.0.attn.qkv", "attention"),
        ("jvp(GPT)/blocks_1/moe/experts/ecd,edf->ecf", "moe_experts"),
        ("GPT.blocks.1.moe.router", "router"),
        ("GPT.blocks.1.moe", "moe_dispatch"),
        ("gpt/blocks_0/mlp/fc/Tensordot", "dense_ffn"),
        ("GPT.head", "embeddings_logits"),
        ("GPT.ln_f", None),
        ("model.layers.0.mlp.gate_proj", "dense_ffn"),  # Hugging Face Llama: a SwiGLU matrix, not a router
        ("model.layers.0.mlp.gate", "router"),  # Mixtral, Qwen2-MoE
        ("model.layers.0.mlp.experts", "moe_experts"),
        ("model.layers.0.mlp.shared_expert.gate_proj", "dense_ffn"),  # Qwen2-MoE: runs on every token
        ("model.layers.0.mlp.shared_expert_gate", "router"),
    ],
)
def test_classify_module(path, kind):
    assert classify_module(path) == kind


def test_count_without_a_framework_says_what_to_pass():
    with pytest.raises(InvalidInputError, match="framework="):
        count(lambda x: x, [1.0, 2.0])


def test_importing_flops_imports_no_framework():
    code = (
        "import sys, carbon_callbacks.flops, carbon_callbacks.models, carbon_callbacks.cli.flops; "
        "print(sorted(m for m in ('torch', 'jax', 'tensorflow', 'keras', 'flax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


FLAGS = ["flops", "--layers", "2", "--d-model", "128", "--heads", "4", "--seq-len", "64", "--batch", "8",
         "--vocab", "512", "--d-ff", "512"]


def test_cli_json(capsys):
    assert cli.main([*FLAGS, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_flops"] == out["hardware_flops"] == 1_509_949_440
    assert (out["params_total"], out["params_active_per_token"], out["percent_active"]) == (533_760, 533_760, 100.0)
    assert set(out["breakdown"]) == set(LAYER_KINDS)


def test_cli_moe_json(capsys):
    argv = ["flops", "--layers", "2", "--d-model", "64", "--heads", "4", "--seq-len", "32", "--batch", "4",
            "--vocab", "256", "--d-ff", "256", "--experts", "4", "--top-k", "2", "--capacity-factor", "1.25",
            "--moe-every", "2", "--moe-impl", "dense_dispatch", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model_flops"], out["hardware_flops"]) == (119_734_272, 158_531_584)


def test_cli_table(capsys):
    assert cli.main(FLAGS) == 0
    out = capsys.readouterr().out
    assert "1509949440" in out and "533760 total" in out


@pytest.mark.parametrize(
    ("flag", "value"), [("--layers", "0"), ("--capacity-factor", "-1"), ("--experts", "-2"), ("--batch", "0")]
)
def test_cli_bad_input_names_the_flag(capsys, flag, value):
    argv = [*FLAGS, flag, value]  # argparse keeps the last value of a repeated flag
    assert cli.main(argv) == 2
    assert flag in capsys.readouterr().err


def test_cli_non_number_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["flops", "--layers", "two", "--d-model", "8", "--heads", "2", "--seq-len", "4", "--batch", "1",
                  "--vocab", "8"])
    assert exc.value.code == 2
    assert "--layers" in capsys.readouterr().err
