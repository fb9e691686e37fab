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
