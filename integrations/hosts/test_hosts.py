"""Jobs spread over simulated hosts: 2 hosts x 2 processes, each host a RAPL powercap tree on disk whose counters
advance at a known power, so the right answer is exact: the host energy is power x time x hosts, once per host
however many processes share it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbon_callbacks import read_run

from fakes import LivePowercap
from processes import free_port

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow
#: Two simulated hosts: (name, package W, DRAM W).
HOSTS = (("host-a", 40.0, 10.0), ("host-b", 24.0, 6.0))


def host_env(tmp_path, name: str) -> dict:
    return {**os.environ, "CARBON_CALLBACKS_HOST": name, "CARBON_CALLBACKS_POWERCAP": str(tmp_path / name),
            "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu", "PYTHONFAULTHANDLER": "1"}


def start(argv, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait(procs, timeout: float = 480.0) -> list[str]:
    """Each process's output once all have ended; past `timeout` (for all together) those still running are
    stopped with SIGABRT, which makes Python's faulthandler print every thread's stack, and the test fails with
    what each printed (a hung job says where it hung)."""
    deadline = time.monotonic() + timeout
    outputs, expired = [], False
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=30.0 if expired else max(deadline - time.monotonic(), 0.1))[0])
            continue
        except subprocess.TimeoutExpired:
            if not expired:
                expired = True
                for other in procs:
                    if other.poll() is None:
                        other.send_signal(signal.SIGABRT)
        try:
            outputs.append(proc.communicate(timeout=30.0)[0])
        except subprocess.TimeoutExpired:
            proc.kill()
            outputs.append(proc.communicate()[0])
    tails = "\n".join(f"--- process {i} (exit {p.returncode}):\n{out[-3000:]}" for i, (p, out) in
                      enumerate(zip(procs, outputs)))
    assert not expired, f"the job ran past {timeout:.0f} s:\n{tails}"
    assert all(proc.returncode == 0 for proc in procs), tails
    return outputs


def host_joules(summary: dict) -> float:
    by_component = summary["energy_kwh_by_component"]
    return (by_component.get("cpu", 0.0) + by_component.get("dram", 0.0)) * 3.6e6


@contextlib.contextmanager
def simulated_hosts(tmp_path):
    """The two hosts' powercap trees, their counters advancing while the job runs; yields their total power."""
    trees = [LivePowercap(tmp_path / name, package, dram) for name, package, dram in HOSTS]
    with trees[0], trees[1]:
        yield sum(tree.total_w for tree in trees)


def jax_job(tmp_path, worker: str) -> tuple[list[str], float]:
    """A JAX job of 2 processes on each of the 2 hosts: their outputs, and the hosts' total power."""
    port, world = free_port(), 4
    with simulated_hosts(tmp_path) as watts:
        procs = [start([str(HERE / worker), str(port), str(rank), str(world), str(tmp_path)],
                       host_env(tmp_path, HOSTS[rank // 2][0])) for rank in range(world)]
        return wait(procs), watts


def test_jax_counts_each_simulated_host_once(tmp_path):
    _, watts = jax_job(tmp_path, "jax_worker.py")
    summary, _ = read_run(tmp_path / "run")
    assert summary["world_size"] == 4 and summary["status"] == "finished"
    assert host_joules(summary) == pytest.approx(watts * summary["wall_time_s"], rel=0.05)  # each host once
    places = [json.loads((tmp_path / f"rank{r}.json").read_text())["summary"]["info"]["process"] for r in range(4)]
    assert [(p["host"], p["local_rank"]) for p in places] == [("host-a", 0), ("host-a", 1), ("host-b", 0),
                                                               ("host-b", 1)]
    assert places[0]["local_rank_source"] == "jax: the host names of every process, gathered"


def test_keras_on_jax_counts_each_host_once_and_the_global_step_once(tmp_path):
    outputs, watts = jax_job(tmp_path, "keras_worker.py")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    summary, _ = read_run(tmp_path / "run")  # one folder: process 0's
    assert summary == ranks[0]["summary"] and summary["world_size"] == 4 and summary["steps"] == 40
    assert summary["total_model_flops"] == pytest.approx(40 * ranks[0]["global_step_flops"], rel=1e-9)
    assert host_joules(summary) == pytest.approx(watts * summary["wall_time_s"], rel=0.05)
    assert sum("carbon-callbacks: 40 steps, status finished" in out for out in outputs) == 1  # printed once


def test_lightning_ddp_over_two_nodes_counts_each_host_once(tmp_path):
    port = free_port()
    paths = os.pathsep.join([str(HERE), str(HERE.parent / "lightning"), str(HERE.parents[1] / "tests"), *sys.path])
    with simulated_hosts(tmp_path) as watts:
        procs = []
        for node, (name, _, _) in enumerate(HOSTS):
            env = {**host_env(tmp_path, name), "PYTHONPATH": paths, "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port), "NODE_RANK": str(node)}
            env.pop("LOCAL_RANK", None)
            procs.append(start([str(HERE / "lightning_worker.py"), str(tmp_path)], env))
        wait(procs)
    summary, _ = read_run(tmp_path / "run")
    assert summary["world_size"] == 4 and summary["steps"] == 40
    assert host_joules(summary) == pytest.approx(watts * summary["wall_time_s"], rel=0.05)


def torchrun_env(rank: int, port: int) -> dict:
    """What `torchrun --nnodes 2 --nproc_per_node 2` sets in the environment of worker `rank` (its elastic agents,
    whose two-node rendezvous is torch's to test, are left out)."""
    return {"RANK": str(rank), "WORLD_SIZE": "4", "LOCAL_RANK": str(rank % 2), "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": str(rank // 2), "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": "hosts-test"}


def test_the_trainer_under_torchrun_on_two_nodes_counts_each_host_once(tmp_path):
    pytest.importorskip("transformers")
    port = free_port()
    with simulated_hosts(tmp_path) as watts:
        procs = [start([str(HERE / "trainer_worker.py"), str(tmp_path)],
                       {**host_env(tmp_path, HOSTS[rank // 2][0]), **torchrun_env(rank, port)}) for rank in range(4)]
        wait(procs)
    summary, _ = read_run(tmp_path / "run")
    assert summary["world_size"] == 4 and summary["steps"] == 40
    assert host_joules(summary) == pytest.approx(watts * summary["wall_time_s"], rel=0.05)


def test_run_under_srun_meters_each_host_once_into_one_folder(tmp_path):
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_NNODES": "2"}
    with simulated_hosts(tmp_path) as watts:
        procs = [start(["-m", "carbon_callbacks.cli", "run", "--intensity", "0.5", "--no-nvml", "--output-dir",
                        str(tmp_path / "job"), "--", sys.executable, "-c", f"import time, sys; time.sleep(2); "
                        f"sys.exit({3 if rank == 3 else 0})"],
                       {**host_env(tmp_path, HOSTS[rank // 2][0]), **slurm, "SLURM_PROCID": str(rank),
                        "SLURM_LOCALID": str(rank % 2)})
                 for rank in range(4)]
        outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 3]  # each task exits with its command's code
    assert [out.count("carbon-callbacks:") for out in outputs] == [1, 0, 0, 0]  # rank 0 alone reports
    summary, logged = read_run(tmp_path / "job")
    assert summary["info"]["job"] == {"hosts": ["host-a", "host-b"], "expected": 2}
    assert sorted(p.name for p in (tmp_path / "job" / "hosts").iterdir()) == ["host-a.json", "host-b.json"]
    assert host_joules(summary) == pytest.approx(watts * summary["wall_time_s"], rel=0.1)  # each host once
    assert summary["energy_methods"] == {"cpu": "measured:rapl", "dram": "measured:rapl"}
