"""`import carbon_callbacks` stays light: no framework, no pandas, no NVML."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "tensorflow", "jax", "keras", "pandas", "pynvml", "matplotlib")


def test_import_pulls_no_heavy_module():
    code = (
        "import sys, carbon_callbacks, carbon_callbacks.cli, carbon_callbacks.meters, carbon_callbacks.flops; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_public_names_are_sorted_and_importable():
    import carbon_callbacks

    assert carbon_callbacks.__all__ == sorted(carbon_callbacks.__all__)
    for name in carbon_callbacks.__all__:
        assert hasattr(carbon_callbacks, name), name


def test_import_loads_the_errors_and_the_version_alone():
    code = "import sys, carbon_callbacks; print(' '.join(sorted(m for m in sys.modules if 'carbon_callbacks' in m)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["carbon_callbacks", "carbon_callbacks._errors", "carbon_callbacks._version"]


def test_a_public_name_is_imported_on_first_use():
    code = "import carbon_callbacks as c; print(c.estimate.__module__, c.count_flops.__name__, 'estimate' in dir(c))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["carbon_callbacks._paper.estimate", "count", "True"]
