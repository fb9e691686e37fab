"""Bundled tables and site resolution: sources on every row, lookups, no silent location default."""

from __future__ import annotations

import pytest

from carbon_callbacks import InvalidInputError, UnknownNameError, get_chip, get_pue, get_region, resolve_site
from carbon_callbacks._site.tables import chips, pue_entries, regions

REQUIRED_CHIPS = (
    "p100", "v100", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "l4", "t4",
    "tpu-v2", "tpu-v3", "tpu-v4", "tpu-v5e", "tpu-v5p", "cpu",
)


@pytest.mark.parametrize("table", [chips, regions, pue_entries])
def test_every_row_has_a_source_url(table):
    rows = table()
    assert rows
    for entry in rows.values():
        assert entry.source.startswith("http"), entry.name


def test_required_chips_present_with_dense_peaks():
    for name in REQUIRED_CHIPS:
        assert get_chip(name).name == name
    # Dense (non-sparsity) tensor-core figures.
    assert get_chip("a100-40gb").peak_tflops["bf16"] == 312
    assert get_chip("h100-sxm").peak_tflops["bf16"] == pytest.approx(989.5, rel=0.01)
    assert get_chip("v100").peak_tflops["fp16"] == 125
    assert get_chip("tpu-v3").peak_tflops["bf16"] == 123


def test_paper_table3_system_power():
    expected = {"tpu-v2": 221, "tpu-v3": 283, "p100": 271, "v100": 325}
    assert {name: get_chip(name).system_power_w for name in expected} == expected


def test_chip_aliases_and_case():
    assert get_chip("H100 SXM").name == "h100-sxm"
    assert get_chip("Tesla_V100").name == "v100"


def test_unknown_chip_lists_closest_names():
    with pytest.raises(UnknownNameError, match=r"Unknown chip 'h1000'. Closest known: .*h100"):
        get_chip("h1000")


def test_unknown_region_lists_closest_names():
    with pytest.raises(UnknownNameError, match=r"Unknown region 'gcp:us-centrall'.*gcp:us-central1"):
        get_region("gcp:us-centrall")


def test_us_average_and_industry_pue():
    assert get_region("us-average").gross_kg_per_kwh == 0.429
    assert 1.5 <= get_pue("industry-average").pue <= 1.6


def test_no_location_is_an_error():
    with pytest.raises(InvalidInputError, match="never guesses a location"):
        resolve_site()


def test_region_gives_gross_net_and_provider_pue():
    site = resolve_site(region="google-north-carolina")
    assert (site.gross_kg_per_kwh, site.net_kg_per_kwh) == (0.201, 0.177)
    assert site.pue == get_pue("google").pue
    assert site.pue_source.startswith("table:pue/google")


def test_cloud_region_uses_its_provider_pue():
    assert resolve_site(region="aws:us-east-1").pue == get_pue("aws").pue


def test_country_without_provider_uses_labelled_industry_average():
    site = resolve_site(region="fr")
    assert site.pue == get_pue("industry-average").pue
    assert site.pue_source.startswith("assumed: industry average")
    assert site.net_kg_per_kwh == site.gross_kg_per_kwh
    assert site.net_source.startswith("= gross")


def test_given_values_win_and_are_labelled():
    site = resolve_site(region="fr", intensity=0.3, pue=1.2)
    assert (site.gross_kg_per_kwh, site.pue, site.gross_source, site.pue_source) == (0.3, 1.2, "given", "given")
    assert site.region == "fr"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"intensity": -0.1}, "intensity must not be negative"),
        ({"intensity": float("nan")}, "intensity must be a finite number"),
        ({"intensity": 0.4, "pue": 0.9}, "pue must be at least 1.0"),
        ({"intensity": 0.4, "net_intensity": "x"}, "net_intensity must be a number"),
    ],
)
def test_bad_site_inputs(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        resolve_site(**kwargs)


def test_unknown_provider():
    with pytest.raises(UnknownNameError, match="Unknown provider 'acme'"):
        resolve_site(intensity=0.4, provider="acme")
