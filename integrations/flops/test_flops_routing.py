"""Which tracer `flops.count` uses: `framework="tensorflow"` always the TensorFlow graph, `framework="keras"` (or a
`keras.Model`) the tracer of the backend Keras runs on. One subprocess per backend: Keras picks it at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json
import keras
import numpy as np
import tensorflow as tf
from carbon_callbacks.flops import count

x, w = np.ones((4, 8), "float32"), np.ones((8, 16), "float32")
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, use_bias=False)])
out = {
    "backend": keras.backend.backend(),
    "tensorflow": count(tf.function(lambda x, w: tf.matmul(x, w)), x, w, framework="tensorflow").to_dict(),
    "tensorflow_plain_function": count(lambda x, w: tf.matmul(x, w), x, w, framework="tensorflow").framework,
    "keras": count(model, x, framework="keras").to_dict(),
    "detected": count(model, x).framework,
}
print("RESULT " + json.dumps(out))
"""

#: Keras backend -> the framework of its tracer.
TRACERS = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_tensorflow_goes_to_the_graph_tracer_whatever_the_keras_backend(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["backend"] == backend
    assert out["tensorflow"]["framework"] == "tensorflow" and "tf-graph" in out["tensorflow"]["method"]
    assert out["tensorflow"]["executed"] == 2 * 4 * 8 * 16
    assert out["tensorflow_plain_function"] == "tensorflow"
    assert out["keras"]["framework"] == TRACERS[backend] == out["detected"]
    assert out["keras"]["total"] == 3 * 2 * 4 * 8 * 16 - 2 * 4 * 8 * 16  # the input takes no gradient
