"""Shared fixtures of the fast unit tests (no framework imports)."""

from __future__ import annotations

import pytest

from carbon_callbacks import _warnings, resolve_site

from fakes import CPUINFO, two_socket_powercap


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each test sees the process-wide 'warn once' registry empty, and leaves it as it found it."""
    saved = set(_warnings._SHOWN_IN_PROCESS)
    _warnings.reset_process_registry()
    yield
    _warnings.reset_process_registry()
    _warnings._SHOWN_IN_PROCESS.update(saved)


@pytest.fixture
def site():
    """A site with round numbers: PUE 1.5, 0.4 kg/kWh gross, 0.1 kg/kWh net."""
    return resolve_site(intensity=0.4, net_intensity=0.1, pue=1.5)


@pytest.fixture
def two_sockets(tmp_path):
    """A RAPL powercap tree of two sockets on disk (see `fakes.two_socket_powercap`)."""
    return two_socket_powercap(tmp_path)


@pytest.fixture
def cpuinfo_file(tmp_path):
    """A /proc/cpuinfo of two sockets with two logical CPUs each, on disk."""
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    return str(path)
