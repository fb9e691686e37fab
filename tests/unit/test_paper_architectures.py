"""Before training: FLOPs from an architecture and its tokens, the five bundled paper models, and the Table 4 check."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from carbon_callbacks import InvalidInputError, UnknownNameError, estimate
from carbon_callbacks._paper.architectures import (
    architecture_flops,
    get_paper_model,
    paper_models,
    with_lengths,
)
from carbon_callbacks._paper.table4 import LLMCARBON_INPUTS, reproduce_from_architectures
from carbon_callbacks.flops import TransformerConfig, transformer_flops

REFERENCE = files("carbon_callbacks") / "data" / "patterson2021_table4.csv"  # the paper's Table 4, as published
TABLE4 = {"T5", "Meena", "GShard-600B", "Switch Transformer", "GPT-3"}
GPT3_CLI = ["--model", "gpt3", "--tokens", "300e9", "--chip", "v100", "--chips", "10000", "--tflops-achieved", "24.6",
            "--watts", "330", "--pue", "1.1", "--intensity", "0.429"]
GPT2 = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}


def cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("carbon-callbacks") or ""
    command = [exe] if exe else [sys.executable, "-m", "carbon_callbacks.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


# ----------------------------------------------------------------------------------------------- bundled models
def test_the_five_table4_models_are_bundled_with_sources():
    models = paper_models()
    assert {m.table4_model for m in models.values()} == TABLE4
    for model in models.values():
        assert model.source.startswith("https://"), model.name
        assert model.tokens > 0 and model.tokens_source, model.name


@pytest.mark.parametrize("name", sorted(paper_models()))
def test_bundled_parameter_counts_match_the_papers(name):
    model = get_paper_model(name)
    counted = transformer_flops(model.config).params_total
    assert counted == pytest.approx(model.params_published, rel=0.05)


def test_aliases_and_names_are_normalized():
    assert get_paper_model("GPT-3").name == "gpt3"
    assert get_paper_model("T5").name == "t5-11b"
    assert get_paper_model("switch_transformer").name == "switch-c"


def test_unknown_model_lists_close_names():
    with pytest.raises(UnknownNameError, match="Unknown model 'gtp3'. Closest known: gpt3"):
        get_paper_model("gtp3")


def test_bundled_table4_names_match_the_reference():
    names = {row["model"] for row in csv.DictReader(REFERENCE.read_text("utf-8").splitlines())}
    assert names == TABLE4


# ----------------------------------------------------------------------------------------------- the count
def test_flops_per_token_are_the_step_count_over_its_tokens():
    cfg = TransformerConfig(num_layers=2, d_model=64, num_heads=4, seq_len=32, batch_size=3, vocab_size=100)
    arch = architecture_flops(cfg, 1e6)
    step = transformer_flops(cfg, causal=True)
    assert arch.model_flops_per_token == pytest.approx(step.model_flops / (3 * 32))
    assert arch.total_model_flops == pytest.approx(arch.model_flops_per_token * 1e6)
    assert arch.six_n_flops == pytest.approx(6 * step.params_active_per_token * 1e6)
    assert arch.flops_method.startswith("analytic:") and "causal" in arch.flops_method


def test_full_attention_counts_more_than_causal():
    cfg = get_paper_model("gpt3").config
    causal = architecture_flops(cfg, 1e9)
    full = architecture_flops(cfg, 1e9, causal=False)
    assert full.total_model_flops > causal.total_model_flops
    assert "full S x S" in full.flops_method


def test_encoder_decoder_tokens_are_input_tokens():
    t5 = get_paper_model("t5-11b").config
    arch = architecture_flops(t5, 512)
    assert arch.total_model_flops == pytest.approx(transformer_flops(t5, causal=True).model_flops)
    assert "per input token" in arch.flops_method


def test_moe_counts_activated_experts_only():
    switch = get_paper_model("switch-c").config
    dense = TransformerConfig(**{**switch.to_dict(), "num_experts": 0})  # the same shape with one FFN per layer
    moe, flat = architecture_flops(switch, 1e9), architecture_flops(dense, 1e9)
    router = 3 * 2 * 2080 * 2048 * (15 + 15 * 114 / 512)  # per input token, forward + backward
    assert moe.model_flops_per_token == pytest.approx(flat.model_flops_per_token + router)
    assert moe.params_active_per_token < moe.params_total / 100


def test_gpt3_from_its_shape_is_within_two_percent_of_the_paper():
    arch = architecture_flops(get_paper_model("gpt3").config, 300e9)
    assert arch.total_model_flops == pytest.approx(3.14e23, rel=0.02)
    assert arch.six_n_flops == pytest.approx(3.14e23, rel=0.005)


def test_with_lengths_replaces_sequence_lengths():
    t5 = get_paper_model("t5")
    assert with_lengths(t5.config, 1024, 256).seq_len == 1024
    with pytest.raises(InvalidInputError, match="decoder_seq_len applies to an encoder-decoder"):
        with_lengths(get_paper_model("gpt3").config, decoder_seq_len=10)


@pytest.mark.parametrize("tokens", [0, -1, float("nan")])
def test_bad_token_counts(tokens):
    with pytest.raises(InvalidInputError, match="tokens must"):
        architecture_flops(get_paper_model("gpt3").config, tokens)


# ----------------------------------------------------------------------------------------------- estimate()
def test_estimate_gpt3_from_architecture_within_two_percent():
    run = estimate(chips=10000, model="gpt3", tokens=300e9, chip="v100", tflops_achieved=24.6, watts=330, pue=1.1,
                   intensity=0.429)
    assert run.energy_kwh / 1000 == pytest.approx(1287, rel=0.02)
    assert run.gross_tco2e == pytest.approx(552.1, rel=0.02)
    assert run.total_flops == run.total_model_flops
    assert run.flops_method.startswith("analytic:")
    assert run.params_total == run.params_active_per_token
    assert run.flops_6n == pytest.approx(3.14e23, rel=0.005)


def test_estimate_with_mfu_uses_the_chips_dense_peak():
    run = estimate(chips=8, model=TransformerConfig.from_hf(GPT2), tokens=1e9, chip="a100-80gb", mfu=0.5,
                   intensity=0.4)
    assert run.hours == pytest.approx(run.total_flops / (8 * 0.5 * 312e12) / 3600)
    assert "mfu 0.5" in run.sources["hours"]
    assert run.params_total == 124439808


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "gpt3"}, "tokens is required with model"),
        ({"tokens": 1e9, "days": 1}, "tokens needs model"),
        ({"model": "gpt3", "tokens": 1e9, "days": 1}, "exactly one way"),
        ({"model": "gpt3", "tokens": 1e9, "mfu": 0.4}, "mfu needs chip"),
        ({"model": "gpt3", "tokens": 1e9, "mfu": 1.5, "chip": "h100-sxm"}, "mfu must be at most 1"),
        ({"model": "gpt3", "tokens": 1e9, "mfu": 0.4, "tflops_achieved": 100}, "one way: tflops_achieved or mfu"),
        ({"model": "gpt3", "tokens": 1e9}, "tflops_achieved is required"),
        ({"model": 42, "tokens": 1e9, "tflops_achieved": 1}, "model must be a bundled model name"),
        ({"model": "gpt3", "tokens": 1e9, "tflops_achieved": 1, "lifetime_years": -2}, "lifetime_years must be"),
    ],
)
def test_estimate_architecture_bad_input(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        estimate(chips=8, watts=300, intensity=0.4, **kwargs)


# ----------------------------------------------------------------------------------------------- the CLI
def test_cli_gpt3_done_command_states_method_and_lands_within_two_percent():
    text = cli("estimate", *GPT3_CLI)
    assert text.returncode == 0, text.stderr
    assert "total model FLOPs" in text.stdout and "analytic: tokens x exact per-layer matmul FLOPs" in text.stdout
    assert "6 x N x tokens" in text.stdout and "embodied:" in text.stdout
    out = json.loads(cli("estimate", *GPT3_CLI, "--json").stdout)
    assert out["energy_kwh"] / 1000 == pytest.approx(1287, rel=0.02)
    assert out["gross_tco2e"] == pytest.approx(552.1, rel=0.02)
    for key in ("total_model_flops", "flops_method", "params_total", "params_active_per_token"):
        assert out[key] is not None, key
    assert out["embodied_co2e_kg"] > 0  # v100 has a (die-only) footprint, reported beside ...
    assert out["gross_tco2e"] == pytest.approx(out["energy_kwh"] / 1000 * 0.429)  # ... never added in


def test_cli_hf_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GPT2))
    out = cli("estimate", "--hf-config", str(path), "--tokens", "9e9", "--chips", "8", "--chip", "a100-80gb",
              "--mfu", "0.4", "--intensity", "0.4", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["params_total"] == 124439808
    assert "1024-token sequences" in result["flops_method"]
    shorter = json.loads(cli("estimate", "--hf-config", str(path), "--seq-len", "512", "--tokens", "9e9", "--chips",
                             "8", "--chip", "a100-80gb", "--mfu", "0.4", "--intensity", "0.4", "--json").stdout)
    assert shorter["total_model_flops"] < result["total_model_flops"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "gtp3", "--tokens", "3e11"], "Unknown model 'gtp3'. Closest known: gpt3"),
        (["--model", "gpt3"], "tokens is required with model"),
        (["--model", "gpt3", "--tokens", "3e11", "--lifetime-years", "-1"], "lifetime_years must be greater than 0"),
        (["--model", "gpt3", "--tokens", "-5"], "tokens must be greater than 0"),
        (["--model", "gpt3", "--hf-config", "x.json", "--tokens", "1"], "--model and --hf-config"),
    ],
)
def test_cli_architecture_bad_input_exit_2_one_line(args, match):
    result = cli("estimate", *args, "--chips", "8", "--chip", "v100", "--tflops-achieved", "20", "--intensity", "0.4")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert match in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_hf_config_without_a_size_field_names_it(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in GPT2.items() if k != "n_embd"}))
    result = cli("estimate", "--hf-config", str(path), "--tokens", "1e9", "--chips", "8", "--watts", "300",
                 "--tflops-achieved", "20", "--intensity", "0.4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "n_embd: missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------- paper check
def test_table4_from_architectures_reports_all_five():
    rows = {r.model: r for r in reproduce_from_architectures()}
    assert set(rows) == TABLE4
    assert abs(rows["GPT-3"].rel_error("energy_mwh")) < 0.02
    for row in rows.values():
        # the FLOPs are the only input not from Table 4, so their error carries through (up to Table 4's rounding)
        assert row.rel_error("energy_mwh") == pytest.approx(row.rel_error("total_flops"), abs=0.01)
        assert row.rel_error("net_tco2e") == pytest.approx(row.rel_error("total_flops"), abs=0.02)
        assert row.implied_tokens == pytest.approx(row.tokens / (1 + row.rel_error("total_flops")))


def test_llmcarbon_column_is_its_published_inputs():
    rows = {r.model: r for r in reproduce_from_architectures()}
    assert rows["Meena"].llmcarbon_rel_error is None  # not in LLMCarbon's validation
    assert set(LLMCARBON_INPUTS) == TABLE4 - {"Meena"}
    assert max(abs(r.llmcarbon_rel_error) for r in rows.values() if r.llmcarbon_rel_error is not None) == (
        pytest.approx(0.082, abs=0.001)  # LLMCarbon's "at most 8.2%"
    )


def test_benchmark_script_prints_the_table():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "paper_architectures.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("| model | tokens |") and "GShard-600B" in out.stdout


def test_sequence_length_without_a_model_is_an_error():
    with pytest.raises(InvalidInputError, match="seq_len needs model"):
        estimate(chips=8, days=1, watts=300, intensity=0.4, seq_len=1024)
