"""A step sharded over a mesh of 4 CPU devices is counted once, globally: `jit` with shardings, sharded arguments,
`shard_map` (its body, per device, times the devices), `pmap`; and a Keras model under `DataParallel`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from processes import free_port

SCRIPT = Path(__file__).with_name("sharded_count.py")


def _env(devices: int) -> dict:
    flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices}")
                     if f)
    return {**os.environ, "XLA_FLAGS": flags, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
            "JAX_PLATFORMS": "cpu"}


def _result(stdout: str, stderr: str, returncode: int, what: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode != 0 or not lines:
        raise AssertionError(f"sharded_count.py {what} failed:\n{stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _run(kind: str) -> dict:
    env = _env(4)
    proc = subprocess.run([sys.executable, str(SCRIPT), kind], env=env, capture_output=True, text=True, timeout=300)
    return _result(proc.stdout, proc.stderr, proc.returncode, kind)


@pytest.fixture(scope="module")
def jax_counts() -> dict:
    return _run("jax")


@pytest.mark.parametrize("step", ["jit_with_shardings", "sharded_arguments", "shard_map", "pmap"])
def test_data_parallel_step_counts_the_global_step_once(jax_counts, step):
    assert jax_counts["device_count"] == 4
    assert jax_counts[step] == {"total": jax_counts["unsharded"], "devices": 4, "processes": 1}


def test_model_parallel_shard_map_counts_every_block(jax_counts):
    assert jax_counts["shard_map_2d"] == jax_counts["matmul"]
    assert jax_counts["shard_map_partial"] == jax_counts["matmul"]  # 2 copies (the `data` axis) of half the batch


def test_keras_data_parallel_counts_the_global_batch():
    """Keras's JAX trainer hands the train function the global batch, sharded over the mesh: the adapter's count
    is the global step's, once (not 4 x, not a device's share)."""
    out = _run("keras")
    assert out["mesh_devices"] == 4
    assert out["global_batch"] == 4 * out["device_batch"]
    assert out["adapter_flops"] and set(out["adapter_flops"]) == {out["global_batch"]}


def test_two_processes_on_one_mesh_each_count_the_global_step():
    """Every process traces the same global step (its arrays span both processes' devices): each count is the
    global step's, and `Placement.processes` says so, so an adapter can take this process's share."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), "processes", str(port), str(rank)], env=_env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    results = []
    try:
        for rank, proc in enumerate(procs):
            out, err = proc.communicate(timeout=240)
            results.append(_result(out, err, proc.returncode, f"processes (rank {rank})"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for result in results:
        assert result["global_batch"] == 32
        assert result["total"] == result["matmuls"]  # the global step: the input x takes no gradient
        assert (result["devices"], result["processes"]) == (4, 2)


def test_a_tracked_mesh_step_reports_the_global_flops_once_over_all_its_chips():
    result = _run("flax")
    # The gradient step (forward, weight gradient; no input gradient) plus the metrics' forward, once per step.
    assert result["total_model_flops"] == 3 * result["matmuls"]
    assert result["num_chips"] == 4  # MFU over every device of the mesh
