"""Modeled and constant meters, the composite, the base window contract and `create_meter` on a VM."""

from __future__ import annotations

import subprocess
import sys
import time
from unittest import mock

import pytest

from carbon_callbacks import Accountant, get_chip, resolve_site
from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks.meters import (
    DRAM_W_PER_GB,
    CompositeMeter,
    ConstantPowerMeter,
    HostShareMeter,
    ModeledAcceleratorMeter,
    ModeledCpuMeter,
    cpu_info,
    create_meter,
    modeled,
)

from fakes import CPUINFO, FakeClock


@pytest.fixture
def no_nvml():
    """The NVML library is missing (the hardware boundary), whatever machine runs the tests."""
    pynvml = pytest.importorskip("pynvml")
    with mock.patch.object(
        pynvml, "nvmlInit", autospec=True, side_effect=pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    ):
        yield


# ------------------------------------------------------------------------------------------- constant meter
def test_constant_meter_energy_is_watts_times_elapsed_time():
    clock = FakeClock(100.0)
    meter = ConstantPowerMeter({"gpu": 300.0, "cpu": 50.0}, clock=clock)
    meter.begin_window("step")
    clock.now = 102.5
    m = meter.end_window("step")
    assert m.seconds == 2.5
    assert m.energy_j == {"gpu": 750.0, "cpu": 125.0}
    assert m.methods == {"gpu": "given", "cpu": "given"}
    assert m.devices == {"gpu": 750.0, "cpu": 125.0}
    assert m.total_energy_j == 875.0
    assert m.warnings == ()


def test_overlapping_windows_are_independent():
    clock = FakeClock()
    meter = ConstantPowerMeter({"cpu": 10.0}, "modeled:fixed", clock=clock)
    meter.begin_window("run")
    clock.now = 1.0
    meter.begin_window("step")
    clock.now = 3.0
    assert meter.end_window("step").energy_j == {"cpu": 20.0}
    clock.now = 4.0
    run = meter.end_window("run")
    assert run.energy_j == {"cpu": 40.0}
    assert run.methods == {"cpu": "modeled:fixed"}


def test_one_meter_reused_across_runs():
    clock = FakeClock()
    meter = ConstantPowerMeter({"cpu": 10.0}, clock=clock)
    for _ in range(2):
        meter.begin_window("run")
        clock.now += 1.0
        assert meter.end_window("run").energy_j == {"cpu": 10.0}


def test_end_window_without_begin_names_the_key():
    meter = ConstantPowerMeter()
    with pytest.raises(InvalidInputError, match="end_window\\('nope'\\) has no matching begin_window"):
        meter.end_window("nope")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"watts": {"fan": 1.0}}, "unknown component 'fan'"),
        ({"watts": {"cpu": -1.0}}, "must not be negative"),
        ({"watts": {}}, "at least one component"),
        ({"watts": {"cpu": 1.0}, "method": "guess"}, "measured:<sensor>"),
        ({"watts": {"cpu": 1.0, "gpu": 2.0}, "method": {"cpu": "given"}}, "no entry for component"),
    ],
)
def test_constant_meter_rejects_bad_arguments(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        ConstantPowerMeter(**kwargs)


# ------------------------------------------------------------------------------------------- modeled CPU
def test_cpu_info_reads_model_sockets_and_logical_cores(cpuinfo_file):
    info = cpu_info(cpuinfo_file)
    assert (info.model, info.sockets, info.logical_cores) == ("Test CPU 9000 64-Core Processor", 2, 4)


def test_modeled_cpu_energy_is_tdp_times_sockets_times_utilisation(cpuinfo_file):
    clock = FakeClock()
    cpu_seconds = iter([10.0, 14.0])  # 4 CPU seconds in the window
    meter = ModeledCpuMeter(tdp_w=100.0, cpuinfo_path=cpuinfo_file, clock=clock, cpu_seconds=lambda: next(cpu_seconds))
    meter.begin_window("w")
    clock.now = 2.0  # utilisation = 4 / (2 s x 4 cores) = 0.5 -> 100 W x 2 sockets x 0.5 x 2 s = 200 J
    m = meter.end_window("w")
    assert m.energy_j == {"cpu": 200.0}
    assert m.methods == {"cpu": "modeled:tdp*util"}
    assert "dram" not in m.energy_j
    assert "Test CPU 9000 64-Core Processor" in meter.notes[0]
    assert "2 socket(s), 4 logical cores, TDP 100 W per socket (given)" in meter.notes[0]


def test_modeled_cpu_takes_tdp_from_the_generic_table_row(cpuinfo_file):
    meter = ModeledCpuMeter(cpuinfo_path=cpuinfo_file)
    assert meter.tdp_w == get_chip("cpu").tdp_w
    assert "table:chips/cpu" in meter.notes[0]


def test_modeled_cpu_on_a_vm_takes_a_threads_share_of_the_socket(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.replace("physical id\t: 1", "physical id\t: 0").replace(
        "physical id\t: 0\n", "physical id\t: 0\nflags\t\t: fpu sse2 hypervisor\n"))
    ticks = iter([0.0, 2.0])
    meter = ModeledCpuMeter(cpuinfo_path=str(path), cpu_seconds=lambda: next(ticks))
    assert meter.threads_per_socket == modeled.REFERENCE_CPU_THREADS_PER_SOCKET
    meter.begin_window("w")
    # Two CPU seconds at 270 W / 80 threads, not at 270 W / the VM's 4 vCPUs.
    assert meter.end_window("w").energy_j["cpu"] == pytest.approx(2.0 * get_chip("cpu").tdp_w / 80)
    assert "virtual machine" in meter.notes[0]


def test_modeled_cpu_on_bare_metal_shares_tdp_over_its_threads(cpuinfo_file):
    ticks = iter([0.0, 2.0])
    meter = ModeledCpuMeter(cpuinfo_path=cpuinfo_file, cpu_seconds=lambda: next(ticks))
    assert meter.threads_per_socket == 2  # 4 logical cores over 2 sockets
    meter.begin_window("w")
    assert meter.end_window("w").energy_j["cpu"] == pytest.approx(2.0 * get_chip("cpu").tdp_w / 2)


def test_modeled_cpu_counts_this_process_cpu_time():
    meter = ModeledCpuMeter(tdp_w=64.0, logical_cores=4, sockets=1, include_children=False)
    meter.begin_window("w")
    before = time.process_time()
    total = 0
    while time.process_time() - before < 0.1:
        total += sum(range(1000))
    after = time.process_time()
    m = meter.end_window("w")
    # 64 W / 4 cores = 16 J per CPU second; the meter's reads bracket ours.
    assert 16.0 * (after - before) - 1e-6 <= m.energy_j["cpu"] <= 16.0 * (after - before) + 16.0 * 0.01


def test_modeled_cpu_includes_waited_for_children():
    meter = ModeledCpuMeter(tdp_w=10.0, logical_cores=1, sockets=1, include_children=True)
    meter.begin_window("w")
    code = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass"
    subprocess.run([sys.executable, "-c", code], check=True)
    m = meter.end_window("w")
    assert m.energy_j["cpu"] >= 10.0 * 0.3


def test_modeled_dram_is_a_separate_component_with_its_own_label(cpuinfo_file):
    clock = FakeClock()
    with mock.patch.object(modeled, "_resident_gb", autospec=True, side_effect=[1.0, 3.0]):
        meter = ModeledCpuMeter(
            tdp_w=100.0, cpuinfo_path=cpuinfo_file, dram_w_per_gb=DRAM_W_PER_GB, clock=clock, cpu_seconds=lambda: 0.0
        )
        meter.begin_window("w")
        clock.now = 10.0
        m = meter.end_window("w")
    assert m.energy_j == {"cpu": 0.0, "dram": 0.375 * 2.0 * 10.0}  # mean of 1 GB and 3 GB resident
    assert m.methods == {"cpu": "modeled:tdp*util", "dram": "modeled:rss*w-per-gb"}


def test_modeled_cpu_rejects_a_bad_tdp(cpuinfo_file):
    with pytest.raises(InvalidInputError, match="tdp_w must be greater than 0"):
        ModeledCpuMeter(tdp_w=0, cpuinfo_path=cpuinfo_file)


# ------------------------------------------------------------------------------------------- accelerators, host
def test_tpu_is_modeled_from_the_tables_system_power():
    chip = get_chip("tpu-v3")
    clock = FakeClock()
    meter = ModeledAcceleratorMeter("tpu-v3", num_chips=4, clock=clock)
    meter.begin_window("w")
    clock.now = 10.0
    m = meter.end_window("w")
    assert m.energy_j == {"tpu": chip.system_power_w * 4 * 10.0}
    assert m.methods == {"tpu": "modeled:system-power"}


def test_accelerator_with_a_stated_utilisation_uses_tdp():
    chip = get_chip("a100-40gb")
    clock = FakeClock()
    meter = ModeledAcceleratorMeter(chip, num_chips=2, utilization=0.5, clock=clock)
    meter.begin_window("w")
    clock.now = 10.0
    m = meter.end_window("w")
    assert m.energy_j == {"gpu": chip.tdp_w * 0.5 * 2 * 10.0}
    assert m.methods == {"gpu": "modeled:tdp*0.5"}


def test_host_share_is_labelled_and_explicit():
    clock = FakeClock()
    meter = HostShareMeter(num_chips=2, clock=clock)
    meter.begin_window("w")
    clock.now = 10.0
    m = meter.end_window("w")
    assert m.energy_j == {"host": 412.5 * 2 * 10.0}
    assert m.methods == {"host": "modeled:host-share"}


# ------------------------------------------------------------------------------------------- composite
def test_composite_keeps_a_method_per_component_and_joins_mixed_ones():
    clock = FakeClock()
    gpu = ConstantPowerMeter({"gpu": 100.0}, "measured:nvml", clock=clock)
    cpu = ConstantPowerMeter({"cpu": 10.0, "gpu": 1.0}, {"cpu": "modeled:tdp*util", "gpu": "given"}, clock=clock)
    meter = CompositeMeter([gpu, cpu])
    meter.begin_window("w")
    clock.now = 2.0
    m = meter.end_window("w")
    assert m.energy_j == {"gpu": 202.0, "cpu": 20.0}
    assert m.methods == {"gpu": "measured:nvml+given", "cpu": "modeled:tdp*util"}
    acct = Accountant(resolve_site(intensity=0.5, pue=1.0))
    acct.update(seconds=m.seconds, energy_j=m.energy_j, energy_method=m.methods)
    assert acct.summary()["energy_methods"] == {"cpu": "modeled:tdp*util", "gpu": "measured:nvml+given"}


def test_composite_needs_a_meter():
    with pytest.raises(InvalidInputError, match="at least one meter"):
        CompositeMeter([])


# ------------------------------------------------------------------------------------------- factory on a VM
def test_create_meter_on_a_vm_returns_the_modeled_cpu_meter_and_warns_once(tmp_path, no_nvml):
    with pytest.warns(UserWarning, match="rapl=False") as record:
        meter = create_meter(rapl_root=str(tmp_path / "missing"))
    assert len(record) == 1
    assert "No RAPL powercap directory" in str(record[0].message)
    assert isinstance(meter, ModeledCpuMeter)
    assert cpu_info().model in meter.notes[0]
    meter.begin_window("w")
    m = meter.end_window("w")
    assert m.methods == {"cpu": "modeled:tdp*util"}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_meter(rapl_root=str(tmp_path / "missing"))  # the second time: no warning


def test_create_meter_rapl_false_is_silent(no_nvml, recwarn):
    meter = create_meter(rapl=False, tdp_w=80.0)
    assert isinstance(meter, ModeledCpuMeter) and meter.tdp_w == 80.0
    assert len(recwarn) == 0


def test_create_meter_models_a_tpu_and_meters_the_cpu(no_nvml):
    meter = create_meter("tpu-v3", num_chips=4, rapl=False)
    assert isinstance(meter, CompositeMeter)
    meter.begin_window("w")
    m = meter.end_window("w")
    assert m.methods == {"tpu": "modeled:system-power", "cpu": "modeled:tdp*util"}


def test_create_meter_gpu_without_nvml_warns_and_models_it(no_nvml):
    with pytest.warns(UserWarning, match="nvml=False"):
        meter = create_meter("a100-40gb", num_chips=2, host_share=True, rapl=False)
    meter.begin_window("w")
    m = meter.end_window("w")
    assert m.methods == {"gpu": "modeled:tdp*1", "host": "modeled:host-share"}  # host share replaces cpu/dram


def test_host_share_is_not_added_twice_to_a_system_power_figure(no_nvml):
    with pytest.warns(UserWarning, match="already part of tpu-v3's table system power"):
        meter = create_meter("tpu-v3", host_share=True)
    meter.begin_window("w")
    assert set(meter.end_window("w").energy_j) == {"tpu"}


def test_host_share_needs_an_accelerator(no_nvml):
    with pytest.raises(InvalidInputError, match="host_share needs an accelerator"):
        create_meter(host_share=True, rapl=False)


# ------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize(
    "make",
    [
        lambda: ConstantPowerMeter(),
        lambda: ModeledCpuMeter(tdp_w=100.0),
        lambda: ModeledAcceleratorMeter("tpu-v3"),
        lambda: HostShareMeter(),
        lambda: CompositeMeter([ModeledCpuMeter(tdp_w=1.0), HostShareMeter()]),
    ],
    ids=["constant", "modeled-cpu", "modeled-tpu", "host-share", "composite"],
)
def test_every_meter_feeds_the_accountant(make):
    meter = make()
    meter.begin_window("w")
    m = meter.end_window("w")
    assert m.seconds >= 0 and all(j >= 0 for j in m.energy_j.values())
    assert set(m.energy_j) == set(m.methods)
    Accountant(resolve_site(intensity=0.4)).update(seconds=m.seconds, energy_j=m.energy_j, energy_method=m.methods)
    meter.close()
    meter.close()
