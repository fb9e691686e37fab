"""The accounting core: arithmetic, bad input, files in batches, save/restore."""

from __future__ import annotations

import math

import pytest

from carbon_callbacks import Accountant, InvalidInputError
from carbon_callbacks._run.accountant import REDUCED_FIELDS

KWH = 3.6e6


def test_energy_and_co2e_arithmetic(site):
    acct = Accountant(site)
    acct.update(seconds=2.0, energy_j={"gpu": 2 * KWH, "cpu": KWH}, energy_method="given")
    summary = acct.summary()
    assert summary["it_energy_kwh"] == pytest.approx(3.0)
    assert summary["energy_kwh"] == pytest.approx(4.5)  # x PUE 1.5
    assert summary["gross_co2e_kg"] == pytest.approx(4.5 * 0.4)
    assert summary["net_co2e_kg"] == pytest.approx(4.5 * 0.1)
    assert summary["energy_kwh_by_component"] == pytest.approx({"gpu": 2.0, "cpu": 1.0})
    assert summary["avg_power_w_per_chip"] == pytest.approx(3 * KWH / 2.0)


def test_metrics_names_and_values(site):
    acct = Accountant(site, peak_flops=1e12, num_chips=1)
    acct.update(seconds=1.0, energy_j={"cpu": KWH}, energy_method="given", model_flops=4e11, num_steps=2)
    metrics = acct.metrics()
    assert set(metrics) == {
        "carbon/energy_kwh", "carbon/co2e_kg", "carbon/co2e_net_kg", "carbon/flops", "carbon/step_time_s", "carbon/mfu"
    }
    assert metrics["carbon/energy_kwh"] == pytest.approx(1.5)
    assert metrics["carbon/co2e_kg"] == pytest.approx(0.6)
    assert metrics["carbon/flops"] == pytest.approx(2e11)  # per step
    assert metrics["carbon/step_time_s"] == pytest.approx(0.5)
    assert metrics["carbon/mfu"] == pytest.approx(0.4)


def test_mfu_and_tokens_in_summary(site):
    acct = Accountant(site, chip="v100", num_chips=2, dtype="fp16")
    for _ in range(4):
        acct.update(seconds=0.5, energy_j={"gpu": 100.0}, energy_method="measured:nvml", model_flops=25e12, tokens=1000)
    summary = acct.summary()
    assert summary["steps"] == 4
    assert summary["total_model_flops"] == pytest.approx(1e14)
    assert summary["tokens"] == 4000
    # 1e14 FLOPs in 2 s on 2 chips of 125 TFLOP/s (dense fp16 tensor) -> 20%.
    assert summary["mfu"] == pytest.approx(1e14 / 2.0 / (2 * 125e12))
    assert summary["energy_j_per_token"] == pytest.approx(400.0 * 1.5 / 4000)
    assert summary["energy_method"] == "measured:nvml"
    assert summary["sources"]["peak_flops_per_chip"].startswith("table:chips/v100 dense fp16")


def test_unknown_flops_stay_none_not_zero(site):
    acct = Accountant(site)
    acct.update(seconds=1.0, energy_j={"cpu": 1.0}, energy_method="modeled:tdp*util")
    summary = acct.summary()
    assert summary["total_model_flops"] is None
    assert summary["mfu"] is None
    assert "carbon/flops" not in acct.metrics()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seconds": -1.0}, "seconds must not be negative"),
        ({"seconds": math.nan}, "seconds must be a finite number"),
        ({"energy_j": {"gpu": math.inf}}, r"energy_j\['gpu'\] must be a finite number"),
        ({"energy_j": {"gpu": -5.0}}, r"energy_j\['gpu'\] must not be negative"),
        ({"energy_j": {"watts": 5.0}}, "unknown component 'watts'"),
        ({"energy_j": {}}, "at least one component"),
        ({"energy_method": "nvml"}, "energy_method must be 'measured:<sensor>'"),
        ({"model_flops": -1.0}, "model_flops must not be negative"),
        ({"tokens": "many"}, "tokens must be a number"),
        ({"num_steps": 0}, "num_steps must be at least 1"),
    ],
)
def test_bad_observation_names_the_field(site, kwargs, match):
    acct = Accountant(site)
    args = {"seconds": 1.0, "energy_j": {"gpu": 1.0}, "energy_method": "given", **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        acct.update(**args)
    assert acct.steps == 0  # nothing counted half-way


def test_bad_constructor_arguments(site):
    with pytest.raises(InvalidInputError, match="num_chips must be at least 1"):
        Accountant(site, num_chips=0)
    with pytest.raises(InvalidInputError, match="peak_flops must be greater than 0"):
        Accountant(site, peak_flops=0)
    with pytest.raises(InvalidInputError, match="site must be a Site"):
        Accountant({"pue": 1.1})


def test_state_dict_round_trip_continues_totals(site):
    whole = Accountant(site)
    first, resumed = Accountant(site), Accountant(site)
    for i in range(6):
        whole.update(seconds=1.0, energy_j={"gpu": 5.0}, energy_method="given", model_flops=1e9, tokens=10)
        (first if i < 3 else resumed).update(
            seconds=1.0, energy_j={"gpu": 5.0}, energy_method="given", model_flops=1e9, tokens=10
        )
        if i == 2:
            resumed.load_state_dict(first.state_dict())
    a, b = whole.summary(), resumed.summary()
    for key in ("steps", "energy_kwh", "gross_co2e_kg", "total_model_flops", "tokens", "wall_time_s"):
        assert a[key] == pytest.approx(b[key]), key


def test_load_state_dict_rejects_other_schema(site):
    with pytest.raises(InvalidInputError, match="schema_version"):
        Accountant(site).load_state_dict({"schema_version": 99})


def test_reset_allows_reuse(site):
    acct = Accountant(site)
    acct.update(seconds=1.0, energy_j={"gpu": 5.0}, energy_method="given")
    acct.reset()
    assert acct.summary()["steps"] == 0 and acct.summary()["energy_kwh"] == 0


def test_global_totals_from_ranks(site):
    acct = Accountant(site, num_chips=2, world_size=2)
    acct.update(seconds=1.0, energy_j={"gpu": KWH}, energy_method="given", model_flops=10.0, tokens=5)
    other_rank = acct.local_totals()  # the same work on the other rank
    summed = [a + b for a, b in zip(acct.local_totals(), other_rank)]
    acct.set_global_totals(dict(zip(REDUCED_FIELDS, summed)), world_size=2)
    summary = acct.summary()
    assert summary["it_energy_kwh"] == pytest.approx(2.0)
    assert summary["total_model_flops"] == 20.0 and summary["tokens"] == 10
    assert summary["steps"] == 1 and summary["world_size"] == 2
