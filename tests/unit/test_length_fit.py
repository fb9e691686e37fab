"""Many sequence lengths, few counts: the exact quadratic in length, checked before it is trusted."""

from __future__ import annotations

import dataclasses

import pytest

from carbon_callbacks import FlopCount, RunSession, TransformerConfig
from carbon_callbacks._run.length_fit import CHECK_LENGTHS, FIT_LENGTHS, LengthFit, length_family
from carbon_callbacks.flops import transformer_flops
from carbon_callbacks.meters import ReplayMeter

DENSE = TransformerConfig(num_layers=2, d_model=128, num_heads=4, seq_len=16, batch_size=8, vocab_size=512)
SWITCH = dataclasses.replace(DENSE, num_experts=4, top_k=1, capacity_factor=1.25)
LENGTHS = [16, 37, 192, 64, 100, 17, 150, 33, 191, 88]


def hardware(config, batch, length) -> int:
    return transformer_flops(dataclasses.replace(config, batch_size=batch, seq_len=length)).hardware_flops


def traced_session(tmp_path, config):
    """A session whose model has no known config, so every figure comes from the (fake, analytic) trace."""
    session = RunSession(intensity=0.5, pue=1.1, output_dir=tmp_path, meter=ReplayMeter(energy_j=1.0, seconds=1.0))
    session.start()
    calls = []

    def step(batch, length):
        def trace():
            calls.append((batch, length))
            flops = hardware(config, batch, length)
            return FlopCount(total=flops, executed=flops, method="traced:fake", framework="x", includes_backward=True)

        key = (((batch, length), "int64"), ((batch, length), "int64"))
        return session.count(key, trace, lambda: (batch, length))

    return step, calls


def test_the_family_abstracts_the_length_only():
    key = (((8, 64), "int64"), ((8, 64, 64), "float32"), ((8,), "int64"))
    assert length_family(key, 64) == (((8, "L"), "int64"), ((8, "L", "L"), "float32"), ((8,), "int64"))


def test_a_dense_transformer_is_counted_at_five_lengths_and_exact_at_all(tmp_path):
    step, calls = traced_session(tmp_path, DENSE)
    for length in LENGTHS:
        assert step(8, length).hardware_flops == hardware(DENSE, 8, length)
    assert len(calls) == FIT_LENGTHS + CHECK_LENGTHS
    assert "a + b L + c L^2" in step(8, 120).method


def test_each_batch_size_gets_its_own_fit(tmp_path):
    step, calls = traced_session(tmp_path, DENSE)
    for length in LENGTHS:
        step(8, length)
        step(3, length)  # a ragged final batch
    assert sum(1 for b, _ in calls if b == 3) == FIT_LENGTHS + CHECK_LENGTHS
    assert step(3, 77).hardware_flops == hardware(DENSE, 3, 77)


def test_capacity_rounding_fails_the_check_and_every_length_is_counted(tmp_path):
    step, calls = traced_session(tmp_path, SWITCH)
    for length in LENGTHS:
        assert step(8, length).hardware_flops == hardware(SWITCH, 8, length)
    assert len(calls) == len(LENGTHS)


def test_a_disagreeing_check_ends_the_fit():
    fit = LengthFit()
    for length in (1, 2, 3):
        fit.add(length, length * length)
    fit.add(4, 17)  # not 16
    assert fit.failed and fit.predict(5) is None


@pytest.mark.parametrize("points", [{1: 5, 2: 9, 3: 15}, {10: 0, 20: 400, 30: 1600}])
def test_the_quadratic_through_three_points_is_exact(points):
    fit = LengthFit()
    for length, flops in points.items():
        fit.add(length, flops)
    a, b, c = fit.coefficients
    assert all(a + b * x + c * x * x == y for x, y in points.items())
