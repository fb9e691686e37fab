"""Shared fixtures of the fast unit tests (no framework imports)."""

from __future__ import annotations

import pytest

from carbon_callbacks import resolve_site


@pytest.fixture
def site():
    """A site with round numbers: PUE 1.5, 0.4 kg/kWh gross, 0.1 kg/kWh net."""
    return resolve_site(intensity=0.4, net_intensity=0.1, pue=1.5)
