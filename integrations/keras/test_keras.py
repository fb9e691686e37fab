"""`CarbonCallback` in real `model.fit` runs on the TensorFlow, JAX and torch backends.

A backend is chosen when Keras is imported, so each backend's fits run in a process of their own
(`_fit_script.py`, all three started at once); the tests assert on what those runs logged and wrote.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carbon_callbacks.flops import transformer_flops
from carbon_callbacks.models import DENSE, SWITCH

from readers import tensorboard_scalars

BACKENDS = ("tensorflow", "jax", "torch")
SCRIPT = Path(__file__).with_name("_fit_script.py")
METRICS = ("carbon/energy_kwh", "carbon/co2e_kg", "carbon/co2e_net_kg", "carbon/flops", "carbon/step_time_s")
# The script's site and meter: 36 W of CPU, PUE 1.25, 0.5 / 0.2 kg CO2e per kWh gross / net.
WATTS, PUE, GROSS, NET = 36.0, 1.25, 0.5, 0.2
DENSE_FLOPS = transformer_flops(DENSE)  # batch 4 x 32 tokens, as the script trains
SWITCH_FLOPS = transformer_flops(SWITCH)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Runs `_fit_script.py` once per backend, in parallel; returns each backend's results."""
    root = tmp_path_factory.mktemp("keras")
    procs = {}
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        procs[backend] = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(root / backend)],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    results = {}
    for backend, proc in procs.items():
        output, _ = proc.communicate(timeout=600)
        path = root / backend / "results.json"
        assert proc.returncode == 0 and path.exists(), f"{backend} run failed:\n{output[-4000:]}"
        results[backend] = json.loads(path.read_text())
    return results


def scenario(runs, backend: str, name: str) -> dict:
    result = runs[backend][name]
    assert "error" not in result, result.get("error")
    return result


def assert_consistent(result: dict) -> None:
    """run.json's totals are the sums of the step log's records."""
    summary, records = result["summary"], result["records"]
    assert summary["steps"] == sum(r["num_steps"] for r in records)
    assert summary["wall_time_s"] == pytest.approx(sum(r["seconds"] for r in records), rel=1e-9)
    assert summary["it_energy_kwh"] * 3.6e6 == pytest.approx(sum(r["it_energy_j"] for r in records), rel=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_history_and_csv_columns_hold_the_carbon_metrics(runs, backend):
    result = scenario(runs, backend, "dense")
    history, rows = result["history"], result["csv"]
    assert set(METRICS) <= set(history) and "carbon/mfu" not in history  # no chip: no peak, no MFU
    assert all(len(history[m]) == 2 for m in METRICS)
    assert len(rows) == 2 and set(METRICS) <= set(rows[0])
    for m in METRICS:
        assert [float(row[m]) for row in rows] == pytest.approx(history[m], rel=1e-12)
    assert history["carbon/energy_kwh"][0] < history["carbon/energy_kwh"][1]  # cumulative
    assert "val_loss" in history and result["reports_printed"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_co2e_is_energy_times_intensity(runs, backend):
    result = scenario(runs, backend, "dense")
    summary, history = result["summary"], result["history"]
    assert summary["status"] == "finished" and summary["steps"] == 8
    assert_consistent(result)
    energy = summary["wall_time_s"] * WATTS * PUE / 3.6e6
    assert summary["energy_kwh"] == pytest.approx(energy, rel=1e-9)
    assert summary["gross_co2e_kg"] == pytest.approx(energy * GROSS, rel=1e-9)
    assert summary["net_co2e_kg"] == pytest.approx(energy * NET, rel=1e-9)
    # Each epoch end closes an interval, so the last History row is the run's total.
    assert history["carbon/energy_kwh"][-1] == pytest.approx(summary["energy_kwh"], rel=1e-12)
    for kwh, gross, net in zip(history["carbon/energy_kwh"], history["carbon/co2e_kg"], history["carbon/co2e_net_kg"]):
        assert gross == pytest.approx(kwh * GROSS, rel=1e-12) and net == pytest.approx(kwh * NET, rel=1e-12)
    # log_every_n_steps=3 over 2 epochs of 4 steps: an interval closes after 3 steps and at each epoch end.
    assert [r["num_steps"] for r in result["records"]] == [3, 1, 3, 1]
    assert [r["step"] for r in result["records"]] == [3, 4, 7, 8]


@pytest.mark.parametrize("backend", BACKENDS)
def test_counted_flops_match_the_analytic_count(runs, backend):
    dense = scenario(runs, backend, "dense")
    assert dense["history"]["carbon/flops"] == pytest.approx([DENSE_FLOPS.model_flops] * 2, rel=0.01)
    assert dense["summary"]["total_model_flops"] == pytest.approx(8 * DENSE_FLOPS.model_flops, rel=0.01)
    moe = scenario(runs, backend, "moe")["summary"]
    assert moe["total_model_flops"] == pytest.approx(2 * SWITCH_FLOPS.model_flops, rel=0.01)
    assert moe["total_hardware_flops"] == pytest.approx(2 * SWITCH_FLOPS.hardware_flops, rel=0.01)
    assert moe["info"]["percent_active"] == pytest.approx(SWITCH_FLOPS.percent_active)
    assert moe["info"]["flops_method"].startswith("model: analytic")


def test_flop_counts_agree_across_backends(runs):
    counts = {b: scenario(runs, b, "dense")["history"]["carbon/flops"][0] for b in BACKENDS}
    hardware = {b: scenario(runs, b, "moe")["summary"]["total_hardware_flops"] for b in BACKENDS}
    for values in (counts, hardware):
        assert max(values.values()) <= 1.01 * min(values.values()), values


@pytest.mark.parametrize("backend", ("tensorflow", "jax"))  # the torch backend runs one step per execution
def test_steps_per_execution_counts_every_step(runs, backend):
    result = scenario(runs, backend, "spe")
    summary = result["summary"]
    assert summary["steps"] == 20  # 2 epochs of 10 batches, run 3 + 3 + 3 + 1
    assert_consistent(result)
    # log_every_n_steps=4 sees executions of 3 steps: an interval closes once 4 are reached, i.e. after 6 and 10.
    assert [r["num_steps"] for r in result["records"]] == [6, 4, 6, 4]
    assert summary["total_model_flops"] == pytest.approx(20 * DENSE_FLOPS.model_flops, rel=0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_early_stopping_leaves_consistent_totals(runs, backend):
    result = scenario(runs, backend, "early")
    assert len(result["history"]["loss"]) == 2  # stopped after the second of 5 epochs
    assert result["summary"]["status"] == "finished" and result["summary"]["steps"] == 4
    assert_consistent(result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_fit_leaves_a_consistent_run_json(runs, backend):
    result = scenario(runs, backend, "interrupted")
    plain = result["plain"]  # raised at the 6th step; no hook ran after it: files as of the first epoch end
    assert plain["summary"]["status"] == "running" and plain["summary"]["steps"] == 4
    assert_consistent(plain)
    reused = result["reused"]  # the next fit closed the stale run (6 steps) and, continue_runs=True, continued it
    assert reused["summary"]["status"] == "finished" and reused["summary"]["steps"] == 6 + 4
    assert_consistent(reused)
    assert reused["reports_printed"] == 2
    context = result["context"]  # KeyboardInterrupt inside `with CarbonCallback(...)`: every step counted
    assert context["summary"]["status"] == "interrupted" and context["summary"]["steps"] == 6
    assert_consistent(context)
    assert context["reports_printed"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_given_flops_and_a_broken_model_attribute(runs, backend):
    result = scenario(runs, backend, "given")
    assert result["argument"]["history"]["carbon/flops"] == [5e6]
    assert result["argument"]["summary"]["info"]["flops_method"] == "given"
    assert result["attribute"]["history"]["carbon/flops"] == [123.0]
    broken = result["broken"]  # not a number: warned once and counted instead; fit and accounting go on
    assert len(broken["history"]["loss"]) == 1 and broken["summary"]["status"] == "finished"
    assert broken["summary"]["steps"] == 2
    assert sum("flops_per_batch must be a number" in w for w in broken["warnings"]) == 1
    assert broken["summary"]["total_model_flops"] == pytest.approx(2 * DENSE_FLOPS.model_flops, rel=0.01)


def test_mirrored_strategy_meters_once_and_reports_once(runs):
    result = scenario(runs, "tensorflow", "mirrored")
    summary = result["summary"]
    assert result["replicas_in_sync"] == 2 and summary["info"]["replicas"] == 2
    assert summary["world_size"] == 1 and summary["num_chips"] == 1  # two logical devices on one CPU
    assert result["reports_printed"] == 1
    assert summary["steps"] == 2
    assert_consistent(result)
    assert summary["energy_kwh"] == pytest.approx(summary["wall_time_s"] * WATTS * PUE / 3.6e6, rel=1e-9)
    # Global batch 8 = 2 replicas x 4: the FLOPs of the whole step.
    global_step = transformer_flops(DENSE.with_(batch_size=8)).model_flops
    assert result["history"]["carbon/flops"] == pytest.approx([global_step], rel=0.01)


def per_interval(records, per_step):
    """`per_step` figures summed over the steps each record (one logging interval) covers."""
    return [sum(per_step[r["step"] - r["num_steps"]:r["step"]]) for r in records]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_ragged_final_batch_is_counted_at_its_own_size(runs, backend):
    records = scenario(runs, backend, "ragged")["records"]
    sizes = [4, 4, 2]
    expected = [transformer_flops(dataclasses.replace(DENSE, batch_size=b)) for b in sizes]
    assert [r["num_steps"] for r in records] == [1, 1, 1]
    assert [r["model_flops"] for r in records] == per_interval(records, [e.model_flops for e in expected])
    assert [r["tokens"] for r in records] == per_interval(records, [b * DENSE.seq_len for b in sizes])
    hardware = per_interval(records, [e.hardware_flops for e in expected])
    assert [r["hardware_flops"] for r in records] == pytest.approx(hardware, rel=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_lengths_cost_a_few_counts_and_stay_exact(runs, backend):
    result = scenario(runs, backend, "lengths")
    records, direct = result["records"], result["direct"]
    lengths = [8, 32, 16, 24, 12, 20, 28, 9]
    model = [transformer_flops(dataclasses.replace(DENSE, seq_len=n)).model_flops for n in lengths]
    assert [r["num_steps"] for r in records] == [1] * len(lengths)
    assert [r["model_flops"] for r in records] == per_interval(records, model)
    # The traced count, predicted past the fit: within 0.1% of a direct count, interval by interval.
    assert [r["hardware_flops"] for r in records] == pytest.approx(per_interval(records, direct), rel=1e-3)
    assert result["summary"]["info"]["flops_counts"] == 5 < len(lengths)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_sequences_count_their_real_tokens_and_each_batch_shape(runs, backend):
    result = scenario(runs, backend, "masked")
    records, lengths = result["records"], result["lengths"]
    per_batch = [lengths[i:i + 4] for i in range(0, len(lengths), 4)]
    assert [r["tokens"] for r in records] == [sum(batch) for batch in per_batch]  # Keras's mask: id 0 is padding
    assert [r["padding_tokens"] for r in records] == [p - sum(b) for p, b in zip(result["positions"], per_batch)]
    assert [r["hardware_flops"] for r in records] == result["hardware"]  # every shape, TensorFlow's too
    alone = result["alone"]  # each sequence's count on its real ids, alone
    assert [r["model_flops"] for r in records] == pytest.approx(
        [sum(alone[i:i + 4]) for i in range(0, len(alone), 4)], rel=1e-12)
    assert result["summary"]["info"]["model_flops_padding"].startswith("excluded")


def test_remat_is_told_apart_on_jax(runs):
    jax_remat = runs["jax"]["remat"]
    assert jax_remat["total"] > jax_remat["plain"]  # the recomputed forward ran
    assert jax_remat["total"] - jax_remat["recomputed"] == jax_remat["plain"]
    for backend in ("tensorflow", "torch"):  # counted as run; not told apart there (docs/flops.md)
        assert runs[backend]["remat"]["total"] >= runs[backend]["remat"]["plain"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("order", ["first", "last"])
def test_csv_logger_and_tensorboard_get_the_carbon_keys_in_either_order(runs, backend, order):
    result = scenario(runs, backend, "order")[order]
    summary, rows = result["summary"], result["csv"]
    last_of_epoch = {r["epoch"]: r for r in result["records"]}  # an epoch's row is its last record
    epoch_records = [last_of_epoch[e] for e in sorted(last_of_epoch)]
    assert len(rows) == 2 and sorted(last_of_epoch) == [0, 1]  # the CSV's epoch column joins them
    for row, record in zip(rows, epoch_records):
        assert int(row["epoch"]) == record["epoch"]
        for m in METRICS:
            assert row[m] != ""
        assert float(row["carbon/energy_kwh"]) == pytest.approx(record["energy_kwh"], rel=1e-12)
    assert float(rows[-1]["carbon/energy_kwh"]) == pytest.approx(summary["energy_kwh"], rel=1e-12)
    assert float(rows[-1]["carbon/co2e_kg"]) == pytest.approx(summary["gross_co2e_kg"], rel=1e-12)
    scalars = tensorboard_scalars(result["tensorboard"])
    epochs = scalars["epoch_carbon/energy_kwh"]
    assert [step for step, _ in epochs] == [0, 1]
    assert epochs[-1][1] == pytest.approx(summary["energy_kwh"], rel=1e-6)  # float32 events
    assert scalars["epoch_carbon/co2e_kg"][-1][1] == pytest.approx(summary["gross_co2e_kg"], rel=1e-6)
    batches = scalars["batch_carbon/energy_kwh"]  # update_freq=1: every batch, at Keras's batch step
    assert len(batches) == 4
