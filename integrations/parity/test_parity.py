"""The same model gives the same numbers in every adapter.

The reference Switch GPT is trained for the same steps in Lightning, Flax and Keras (TensorFlow and JAX backends),
each with the same `ReplayMeter`, site, chip and interval; each framework runs in a process of its own
(`_parity_run.py`). Every figure of `run.json` that does not depend on the framework's speed must be identical,
and an exception in the user's code must leave the same status everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from carbon_callbacks import read_run
from carbon_callbacks.flops import transformer_flops

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


@pytest.fixture(scope="module")
def summaries(tmp_path_factory) -> dict[str, dict[str, dict]]:
    """framework -> run name (`ok`, `failed`) -> run.json, from one process per framework run side by side."""
    root = tmp_path_factory.mktemp("parity")
    procs = {}
    for name, env in RUNS.items():
        framework = name.split("-")[0]
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
