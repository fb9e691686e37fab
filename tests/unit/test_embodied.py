"""Embodied carbon: sourced footprints in the chips table, the amortization, and its place beside operational CO2e."""

from __future__ import annotations

import csv
from importlib import resources

import pytest

from carbon_callbacks import Accountant, InvalidInputError, estimate, get_chip
from carbon_callbacks._paper.embodied import (
    DEFAULT_LIFETIME_YEARS,
    HOURS_PER_YEAR,
    LIFETIME_SOURCE,
    embodied_co2e,
)
from carbon_callbacks._site.tables import chips

KWH = 3.6e6


def test_every_footprint_has_a_source_and_says_what_it_covers():
    with_footprint = [c for c in chips().values() if c.embodied_kgco2e is not None]
    assert {c.name for c in with_footprint} >= {"a100-80gb", "v100"}
    for chip in with_footprint:
        assert chip.embodied_source.startswith("https://"), chip.name
        assert chip.embodied_note, chip.name
    for chip in chips().values():
        if chip.embodied_kgco2e is None:  # blank where no source exists: no host share either, no source
            assert chip.host_embodied_kgco2e is None and chip.embodied_source == "", chip.name


def test_bloom_a100_figures():
    a100 = get_chip("a100-80gb")
    assert a100.embodied_kgco2e == 150.0  # Luccioni et al. 2022: per A100
    assert a100.host_embodied_kgco2e == 2500.0 / 8  # 2500 kg per 8-GPU server
    assert a100.embodied_kgco2e_per_chip == 462.5
    assert "whole GPU" in a100.embodied_note


def test_unsourced_chip_has_no_footprint():
    assert get_chip("h200").embodied_kgco2e is None
    assert get_chip("h200").embodied_kgco2e_per_chip is None


def test_csv_columns_exist():
    text = resources.files("carbon_callbacks").joinpath("data", "chips.csv").read_text("utf-8")
    header = next(csv.reader(text.splitlines()))
    assert header[-4:] == ["embodied_kgco2e", "host_embodied_kgco2e", "embodied_source", "embodied_note"]


def test_default_lifetime_is_six_years_and_sourced():
    assert DEFAULT_LIFETIME_YEARS == 6.0
    assert "2211.02001" in LIFETIME_SOURCE and "2502.01671" in LIFETIME_SOURCE


def test_amortization_arithmetic():
    result = embodied_co2e(get_chip("a100-80gb"), 384, 118 * 24)
    expected = 462.5 * 384 * 118 * 24 / (6 * HOURS_PER_YEAR)
    assert result.co2e_kg == pytest.approx(expected)
    assert result.chip_kg == pytest.approx(150 * 384 * 118 * 24 / (6 * HOURS_PER_YEAR))
    assert result.host_kg == pytest.approx(result.co2e_kg - result.chip_kg)
    assert "footprint x chips x hours / lifetime" in result.source and "lifetime default 6 years" in result.source


def test_lifetime_override_and_bad_lifetime():
    assert embodied_co2e(get_chip("v100"), 10, 100, lifetime_years=3).co2e_kg == pytest.approx(
        2 * embodied_co2e(get_chip("v100"), 10, 100).co2e_kg
    )
    for bad in (-1, 0, float("nan")):
        with pytest.raises(InvalidInputError, match="lifetime_years must"):
            embodied_co2e(get_chip("v100"), 10, 100, lifetime_years=bad)


def test_no_chip_or_no_footprint_is_none_with_the_reason():
    assert embodied_co2e(None, 8, 1).co2e_kg is None
    missing = embodied_co2e(get_chip("h200"), 8, 1)
    assert missing.co2e_kg is None and missing.source.startswith("unknown: no published manufacturing footprint")


def test_estimate_reports_embodied_beside_operational():
    base = dict(chips=384, hours=118 * 24, watts=400, pue=1.2, intensity=0.057)
    with_chip = estimate(chip="a100-80gb", **base)
    without = estimate(**base)
    assert with_chip.embodied_co2e_kg == pytest.approx(462.5 * 384 * 118 * 24 / (6 * HOURS_PER_YEAR))
    assert with_chip.gross_tco2e == without.gross_tco2e  # never added into the operational figure
    assert without.embodied_co2e_kg is None and without.sources["embodied_co2e_kg"].startswith("unknown")
    assert estimate(chip="a100-80gb", lifetime_years=3, **base).embodied_co2e_kg == pytest.approx(
        2 * with_chip.embodied_co2e_kg
    )


def test_accountant_summary_adds_embodied_and_keeps_its_keys(site):
    plain = Accountant(site).summary()
    acct = Accountant(site, chip="a100-80gb", num_chips=8)
    acct.update(seconds=7200.0, energy_j={"gpu": KWH}, energy_method="given")
    summary = acct.summary()
    assert set(plain) <= set(summary)
    assert summary["embodied_co2e_kg"] == pytest.approx(462.5 * 8 * 2.0 / (6 * HOURS_PER_YEAR))
    assert summary["embodied_kgco2e_per_chip"] == 462.5 and summary["lifetime_years"] == 6.0
    assert summary["gross_co2e_kg"] == pytest.approx(1.5 * 0.4)  # operational only
    assert "table:chips/a100-80gb" in summary["sources"]["embodied_co2e_kg"]


def test_accountant_lifetime_and_unknown_footprint(site):
    acct = Accountant(site, chip="h200", lifetime_years=4)
    acct.update(seconds=10.0, energy_j={"gpu": 1.0}, energy_method="given")
    summary = acct.summary()
    assert summary["embodied_co2e_kg"] is None and summary["lifetime_years"] == 4
    assert summary["sources"]["embodied_co2e_kg"].startswith("unknown: no published manufacturing footprint")
    with pytest.raises(InvalidInputError, match="lifetime_years must be greater than 0"):
        Accountant(site, lifetime_years=-1)
