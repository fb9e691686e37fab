"""Shared fixtures of the fast unit tests (no framework imports)."""

from __future__ import annotations

import pytest

from carbon_callbacks import resolve_site
from carbon_callbacks.meters import _base


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each test sees the meters' process-wide 'warn once' state empty, and leaves it as it found it."""
    saved = set(_base._WARNED)
    _base._WARNED.clear()
    yield
    _base._WARNED.clear()
    _base._WARNED.update(saved)


@pytest.fixture
def site():
    """A site with round numbers: PUE 1.5, 0.4 kg/kWh gross, 0.1 kg/kWh net."""
    return resolve_site(intensity=0.4, net_intensity=0.1, pue=1.5)
