"""Runs `keras_count.py` in a subprocess with `KERAS_BACKEND` set; returns its JSON."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("keras_count.py")


@functools.cache
def keras_counts(backend: str, names: tuple[str, ...]) -> dict:
    """Cached per (backend, names), so the Keras and cross-framework tests share one subprocess."""
    # Nothing is run but weight initializers (JAX compiles one per kernel shape): XLA need not optimize them.
    flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0") if f)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "XLA_FLAGS": flags}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *names], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"keras_count.py on {backend} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])
