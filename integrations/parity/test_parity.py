"""The same model gives the same numbers in every adapter.

The reference Switch GPT is trained for the same steps in Lightning, Flax and Keras (TensorFlow and JAX backends),
each with the same `ReplayMeter`, site, chip and interval; each framework runs in a process of its own
(`_parity_run.py`). Every figure of `run.json` that does not depend on the framework's speed must be identical,
and an exception in the user's code must leave the same status everywhere. The Hugging Face `Trainer` is held to
Lightning the same way, on a GPT-2 built from its config.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from carbon_callbacks import read_run
from carbon_callbacks.flops import TransformerConfig, transformer_flops

sys.path.insert(0, str(Path(__file__).parent))
from _parity_run import CONFIG, FAIL_AT, STEPS  # noqa: E402

SCRIPT = Path(__file__).with_name("_parity_run.py")
RUNS = {"lightning": {}, "flax": {}, "keras-tensorflow": {"KERAS_BACKEND": "tensorflow"},
        "keras-jax": {"KERAS_BACKEND": "jax"}}
#: run.json keys that must agree exactly across frameworks.
SAME = ("steps", "status", "wall_time_s", "energy_kwh", "it_energy_kwh", "gross_co2e_kg", "net_co2e_kg",
        "total_model_flops", "total_hardware_flops", "tokens", "mfu", "achieved_flops_per_chip", "energy_j_per_token",
        "energy_method", "num_chips", "world_size", "peak_flops_per_chip")
SAME_INFO = ("params_total", "params_active_per_token", "percent_active", "flops_by_layer_kind")


def run_side_by_side(root: Path, runs: dict[str, tuple[str, dict]]) -> dict[str, dict[str, dict]]:
    """name -> run name (`ok`, `failed`) -> run.json, from one process per (framework, environment) of `runs`."""
    procs = {}
    for name, (framework, env) in runs.items():
        procs[name] = subprocess.Popen(
            [sys.executable, str(SCRIPT), framework, str(root / name)],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}, cwd=root,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
    out = {}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name} failed:\n{output[-4000:]}"
        out[name] = {run: read_run(root / name / run)[0] for run in ("ok", "failed")}
    return out


@pytest.fixture(scope="module")
def summaries(tmp_path_factory) -> dict[str, dict[str, dict]]:
    """framework -> run name (`ok`, `failed`) -> run.json, from one process per framework run side by side."""
    runs = {name: (name.split("-")[0], env) for name, env in RUNS.items()}
    return run_side_by_side(tmp_path_factory.mktemp("parity"), runs)


@pytest.fixture(scope="module")
def gpt2_summaries(tmp_path_factory) -> dict[str, dict[str, dict]]:
    """The Hugging Face pair: a GPT-2 config through Lightning and through the `Trainer`."""
    pytest.importorskip("transformers")
    runs = {"lightning": ("lightning-gpt2", {}), "trainer": ("hf", {})}
    return run_side_by_side(tmp_path_factory.mktemp("parity-gpt2"), runs)


@pytest.mark.slow
@pytest.mark.parametrize("key", SAME)
def test_run_json_figures_are_identical(summaries, key):
    values = {name: runs["ok"][key] for name, runs in summaries.items()}
    assert len(set(map(repr, values.values()))) == 1, values


@pytest.mark.slow
@pytest.mark.parametrize("key", SAME_INFO)
def test_model_facts_are_identical(summaries, key):
    values = {name: runs["ok"]["info"].get(key) for name, runs in summaries.items()}
    assert len(set(map(repr, values.values()))) == 1, values


@pytest.mark.slow
def test_the_figures_are_the_analytic_ones(summaries):
    analytic = transformer_flops(CONFIG)
    summary = summaries["lightning"]["ok"]
    assert not [key for key in (*SAME, "info") if summary[key] is None]  # nothing compared is simply missing
    assert not [key for key in SAME_INFO if summary["info"].get(key) is None]
    assert summary["steps"] == STEPS and summary["status"] == "finished"
    assert summary["total_model_flops"] == STEPS * analytic.model_flops
    assert summary["total_hardware_flops"] == STEPS * analytic.hardware_flops
    assert summary["tokens"] == STEPS * CONFIG.batch_size * CONFIG.seq_len
    assert summary["info"]["percent_active"] == pytest.approx(analytic.percent_active)
    assert summary["info"]["flops_by_layer_kind"]["model"] == analytic.breakdown


@pytest.mark.slow
def test_an_exception_leaves_the_same_failed_run(summaries):
    failed = {name: (runs["failed"]["status"], runs["failed"]["steps"]) for name, runs in summaries.items()}
    assert set(failed.values()) == {("failed", FAIL_AT - 1)}, failed


@pytest.mark.slow
@pytest.mark.parametrize("key", SAME)
def test_the_trainer_gives_lightnings_figures(gpt2_summaries, key):
    lightning, trainer = (gpt2_summaries[name]["ok"][key] for name in ("lightning", "trainer"))
    assert lightning is not None and repr(trainer) == repr(lightning)


@pytest.mark.slow
@pytest.mark.parametrize("key", SAME_INFO)
def test_the_trainer_gives_lightnings_model_facts(gpt2_summaries, key):
    lightning, trainer = (gpt2_summaries[name]["ok"]["info"].get(key) for name in ("lightning", "trainer"))
    assert lightning is not None and repr(trainer) == repr(lightning)


@pytest.mark.slow
def test_the_trainer_counts_the_gpt2_config_exactly(gpt2_summaries):
    import transformers

    from _parity_run import gpt2_config

    summary = gpt2_summaries["trainer"]["ok"]
    analytic = transformer_flops(TransformerConfig.from_hf(gpt2_config(), batch_size=CONFIG.batch_size,
                                                           seq_len=CONFIG.seq_len))
    assert summary["steps"] == STEPS and summary["status"] == "finished"
    assert summary["total_model_flops"] == STEPS * analytic.model_flops
    assert summary["info"]["framework"] == f"transformers {transformers.__version__}"


@pytest.mark.slow
def test_an_exception_in_the_trainer_leaves_lightnings_failed_run(gpt2_summaries):
    failed = {name: (runs["failed"]["status"], runs["failed"]["steps"]) for name, runs in gpt2_summaries.items()}
    assert set(failed.values()) == {("failed", FAIL_AT - 1)}, failed
