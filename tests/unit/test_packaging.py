"""What a user installs: the version without installed metadata, the license, the extras' floors, a quiet pipe."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import carbon_callbacks

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a constraints file, by normalized name."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def _requirements(pyproject: dict) -> list[tuple[str, str, str | None]]:
    """(extra, distribution, floor) of every requirement of every extra that names a distribution."""
    out = []
    for extra, requirements in pyproject["project"]["optional-dependencies"].items():
        for requirement in requirements:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(?:>=\s*([^,;\s]+))?", requirement)
            if match and match.group(1) != "carbon-callbacks":
                out.append((extra, re.sub(r"[-_.]+", "-", match.group(1)).lower(), match.group(2)))
    return out


def test_import_reads_no_installed_metadata():
    code = "import sys, carbon_callbacks; print('importlib.metadata' in sys.modules, carbon_callbacks.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", carbon_callbacks.__version__]


def test_the_version_is_built_from_the_one_literal(pyproject):
    assert "version" in pyproject["project"]["dynamic"]
    attr = pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "carbon_callbacks._version.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+", carbon_callbacks.__version__)


def test_license_is_an_spdx_expression_with_its_file(pyproject):
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert pyproject["project"]["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]


def test_every_extra_has_a_floor_and_the_floor_is_what_the_floor_job_installs(pyproject):
    floor = _pins(ROOT / "constraints-floor.txt")
    for extra, name, lower in _requirements(pyproject):
        if extra in ("test", "bench"):
            continue
        assert lower is not None, f"[{extra}] {name} has no lower bound"
        assert floor.get(name) == lower, f"[{extra}] {name}>={lower}, but constraints-floor.txt pins {floor.get(name)}"


def test_every_extra_admits_the_tested_versions(pyproject):
    tested = _pins(ROOT / "constraints.txt")
    for extra, name, lower in _requirements(pyproject):
        if lower is None or name not in tested:
            continue
        have = tuple(int(p) for p in re.findall(r"\d+", tested[name])[:3])
        assert have >= tuple(int(p) for p in re.findall(r"\d+", lower)[:3]), (extra, name)


def test_no_extra_asks_for_torch_or_a_tensorflow_it_does_not_name(pyproject):
    names = {(extra, name) for extra, name, _ in _requirements(pyproject)}
    assert not any(name == "torch" for _, name in names)  # Lightning brings the torch the user has
    assert {name for extra, name in names if extra == "keras"} == {"keras"}  # the backend is the user's choice
    assert not any(name.startswith("tensorflow") for extra, name in names if extra != "tensorflow")


def test_a_closed_pipe_ends_quietly():
    proc = subprocess.Popen(
        [sys.executable, "-m", "carbon_callbacks.cli", "tables", "regions"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the first line, as `| head -0` leaves it
    _, stderr = proc.communicate(timeout=60)
    assert stderr.decode() == ""
    assert proc.returncode == 1
