"""Which host, which process on it, which devices: from the framework, the launcher's environment, or the names of
every process's host; and the meter each process builds from it."""

from __future__ import annotations

import re

import pytest

from carbon_callbacks._host import LAUNCHERS, from_framework, from_host_names, from_launcher, hosts_in_job
from carbon_callbacks._warnings import CarbonCallbacksWarning
from carbon_callbacks.meters import create_meter

from fakes import FakeGpu, FakeNvml, zone

ALL_VARIABLES = [v for launcher in LAUNCHERS for v in launcher[1:]] + [
    "CARBON_CALLBACKS_HOST", "CARBON_CALLBACKS_LOCAL_RANK", "SLURM_NNODES", "SLURM_JOB_NUM_NODES", "GROUP_WORLD_SIZE",
    "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("variables", "place"), [
    ({"LOCAL_RANK": "1", "RANK": "3", "WORLD_SIZE": "4"}, (1, 3, 4, "torchrun / accelerate: LOCAL_RANK")),
    ({"SLURM_LOCALID": "0", "SLURM_PROCID": "2", "SLURM_NTASKS": "8"}, (0, 2, 8, "SLURM srun: SLURM_LOCALID")),
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "3", "OMPI_COMM_WORLD_RANK": "7", "OMPI_COMM_WORLD_SIZE": "8"},
     (3, 7, 8, "Open MPI: OMPI_COMM_WORLD_LOCAL_RANK")),
    ({"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2", "CARBON_CALLBACKS_LOCAL_RANK": "0"},
     (0, 1, 2, "CARBON_CALLBACKS_LOCAL_RANK")),
    ({}, (0, 0, 1, "one process")),
])
def test_a_launchers_environment_places_the_process(monkeypatch, variables, place):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CARBON_CALLBACKS_HOST", "node-7")
    host = from_launcher()
    assert (host.local_rank, host.rank, host.world, host.source) == place and host.name == "node-7"
    assert host.leader == (place[0] == 0) and host.known


def test_several_processes_with_nothing_to_place_them_warn_once(tmp_path):
    host = from_launcher(rank=1, world=4)
    assert host.local_rank is None and host.leader and not host.known
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 0)
    with pytest.warns(CarbonCallbacksWarning, match="Set LOCAL_RANK") as caught:
        for _ in range(2):
            create_meter(host=host, rapl_root=str(root), nvml=False).close()
    assert len(caught) == 1


def test_the_local_rank_is_the_processes_before_it_on_its_host():
    names = ["a", "b", "a", "b", "a"]
    assert [from_host_names(names, rank, None, "test").local_rank for rank in range(5)] == [0, 0, 1, 1, 2]


@pytest.mark.parametrize(("variables", "hosts"), [
    ({"SLURM_NNODES": "3"}, 3), ({"GROUP_WORLD_SIZE": "2"}, 2),
    ({"WORLD_SIZE": "8", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"}, 2), ({}, None),
])
def test_the_jobs_hosts_from_the_environment(monkeypatch, variables, hosts):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert hosts_in_job() == hosts


def test_only_the_hosts_leader_reads_its_cpu_counters(tmp_path):
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 0)
    leader = create_meter(host=from_framework(0, 0, 2, None, "test"), rapl_root=str(root), nvml=False)
    other = create_meter(host=from_framework(1, 1, 2, None, "test"), rapl_root=str(root), nvml=False)
    for meter in (leader, other):
        meter.begin_window("w")
    assert leader.end_window("w").methods == {"cpu": "measured:rapl"}
    assert other.end_window("w").methods == {"cpu": "measured:rapl-by-local-rank-0"}


def test_four_gpus_and_two_processes_driving_two_each_meter_each_gpu_once(monkeypatch):
    pytest.importorskip("pynvml")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = [FakeGpu(f"GPU-{c * 8}-0000") for c in "abcd"]
    with FakeNvml(gpus).patched():
        meters = [create_meter(host=from_framework(rank, rank, 2, devices, "test"), rapl=False)
                  for rank, devices in ((0, (0, 1)), (1, (2, 3)))]
        uuids = [sorted(re.search(r"GPU-\S+", note).group() for note in meter.notes if note.startswith("gpu:"))
                 for meter in meters]
        for meter in meters:
            meter.close()
    assert uuids == [["GPU-aaaaaaaa-0000", "GPU-bbbbbbbb-0000"], ["GPU-cccccccc-0000", "GPU-dddddddd-0000"]]


def test_the_host_leader_of_a_launched_command_meters_every_gpu_of_the_host(monkeypatch):
    pytest.importorskip("pynvml")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # what the launcher showed this task
    with FakeNvml([FakeGpu(f"GPU-{c * 8}-0000") for c in "abcd"]).patched():
        meter = create_meter(devices="host", rapl=False)
        assert [d for d in meter.devices if d.startswith("gpu")] == ["gpu:0", "gpu:1", "gpu:2", "gpu:3"]
        meter.close()
