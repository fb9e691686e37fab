"""RAPL meter over powercap trees on disk: several sockets, wrap-around, unreadable files, failures mid-run."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest

from carbon_callbacks.meters import ModeledCpuMeter, RaplMeter, SensorUnavailableError, create_meter

from fakes import FakeClock, set_uj, zone


@pytest.fixture
def unreadable_as_for_a_user(monkeypatch):
    """Mode-000 files raise PermissionError even when the tests run as root (as they do for a normal user)."""
    original = pathlib.Path.read_text

    def read_text(self, *args, **kwargs):
        if os.path.isfile(self) and not os.stat(self).st_mode & (stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH):
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)


def test_reads_package_and_dram_of_every_socket(two_sockets):
    clock = FakeClock()
    meter = RaplMeter(two_sockets, poll_s=None, clock=clock)
    assert meter.devices == ("cpu:package-0", "dram:package-0", "cpu:package-1", "dram:package-1")
    meter.begin_window("w")
    set_uj(two_sockets, "intel-rapl:0", 11_000_000)  # +10 J
    set_uj(two_sockets, "intel-rapl:0:1", 3_500_000)  # +1.5 J
    set_uj(two_sockets, "intel-rapl:1", 23_000_000)  # +20 J
    set_uj(two_sockets, "intel-rapl:1:0", 4_500_000)  # +0.5 J
    set_uj(two_sockets, "intel-rapl:0:0", 99_000_000)  # core: inside the package, not added
    set_uj(two_sockets, "intel-rapl:2", 99_000_000)  # psys: the whole platform, not added
    clock.now = 2.0
    m = meter.end_window("w")
    assert m.energy_j == {"cpu": 30.0, "dram": 2.0}
    assert m.methods == {"cpu": "measured:rapl", "dram": "measured:rapl"}
    assert m.devices == {"cpu:package-0": 10.0, "dram:package-0": 1.5, "cpu:package-1": 20.0, "dram:package-1": 0.5}
    assert m.seconds == 2.0
    assert m.warnings == ()


def test_counter_wrap_around_uses_max_energy_range(tmp_path):
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 900_000, max_uj=1_000_000)
    meter = RaplMeter(root, poll_s=None)
    meter.begin_window("w")
    set_uj(root, "intel-rapl:0", 100_000)  # wrapped: 100 000 to the top, 100 000 after
    assert meter.end_window("w").energy_j == {"cpu": 0.2}
    meter.close()


def test_wraps_between_window_edges_are_each_counted_when_read(tmp_path):
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 0, max_uj=1_000_000)
    meter = RaplMeter(root, poll_s=None)
    meter.begin_window("run")
    for value in (600_000, 200_000, 800_000, 400_000):  # three reads in between (what the poll thread does)
        set_uj(root, "intel-rapl:0", value)
        meter._read()
    assert meter.end_window("run").energy_j == {"cpu": 2.4}  # +0.6 each step, two of them across a wrap


def test_poll_thread_runs_and_stops_on_close(tmp_path):
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 0)
    meter = RaplMeter(root, poll_s=0.01)
    thread = meter._thread
    assert thread is not None and thread.is_alive()
    meter.close()
    meter.close()
    assert not thread.is_alive()


def test_no_powercap_directory_is_unavailable(tmp_path):
    with pytest.raises(SensorUnavailableError, match="No RAPL powercap directory"):
        RaplMeter(tmp_path / "absent", poll_s=None)


def test_no_package_zone_is_unavailable(tmp_path):
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "psys", 0)
    with pytest.raises(SensorUnavailableError, match="No RAPL package zone"):
        RaplMeter(root, poll_s=None)


def test_permission_denied_names_the_fix(two_sockets, unreadable_as_for_a_user):
    for path in two_sockets.glob("intel-rapl:*/energy_uj"):
        path.chmod(0)
    with pytest.raises(SensorUnavailableError, match="readable by root only") as info:
        RaplMeter(two_sockets, poll_s=None)
    assert "chmod a+r" in str(info.value) and "rapl=False" in str(info.value)


def test_permission_denied_warns_once_then_falls_back_to_the_model(two_sockets, unreadable_as_for_a_user):
    for path in two_sockets.glob("intel-rapl:*/energy_uj"):
        path.chmod(0)
    with pytest.warns(UserWarning, match="chmod a\\+r") as record:
        meter = create_meter(nvml=False, rapl_root=str(two_sockets), tdp_w=100.0)
        create_meter(nvml=False, rapl_root=str(two_sockets), tdp_w=100.0)
    assert len(record) == 1
    assert isinstance(meter, ModeledCpuMeter)


def test_some_unreadable_domains_warn_and_the_rest_are_measured(two_sockets, unreadable_as_for_a_user):
    (two_sockets / "intel-rapl:1:0" / "energy_uj").chmod(0)
    with pytest.warns(UserWarning, match="Some RAPL counters are unreadable"):
        meter = RaplMeter(two_sockets, poll_s=None)
    assert meter.devices == ("cpu:package-0", "dram:package-0", "cpu:package-1")


def test_create_meter_uses_rapl_when_readable(two_sockets, recwarn):
    meter = create_meter(nvml=False, rapl_root=str(two_sockets))
    try:
        assert isinstance(meter, RaplMeter)
        assert len(recwarn) == 0
    finally:
        meter.close()


def test_only_local_rank_0_reads_the_node_counters(two_sockets):
    meter = create_meter(nvml=False, rapl_root=str(two_sockets), local_rank=1)
    meter.begin_window("w")
    set_uj(two_sockets, "intel-rapl:0", 5_000_000)
    measurement = meter.end_window("w")
    assert measurement.energy_j == {"cpu": 0.0}  # local rank 0 counts the whole package
    assert measurement.methods == {"cpu": "measured:rapl-by-local-rank-0"}


def test_other_local_ranks_model_their_own_process_without_rapl(tmp_path, recwarn):
    meter = create_meter(nvml=False, rapl_root=str(tmp_path / "missing"), local_rank=1)
    assert isinstance(meter, ModeledCpuMeter)


def test_a_read_failing_mid_run_falls_back_to_the_average_power_so_far(tmp_path):
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 0)
    zone(root, "intel-rapl:1", "package-1", 0)
    clock = FakeClock()
    meter = RaplMeter(root, poll_s=None, clock=clock)  # reads at t=0
    meter.begin_window("run")
    clock.now = 10.0
    set_uj(root, "intel-rapl:0", 500_000_000)  # 500 J in 10 s: 50 W
    set_uj(root, "intel-rapl:1", 100_000_000)
    meter.begin_window("step")
    (root / "intel-rapl:0" / "energy_uj").write_text("")  # the read returns nothing usable
    clock.now = 12.0
    set_uj(root, "intel-rapl:1", 120_000_000)
    with pytest.warns(UserWarning, match="reading cpu:package-0 failed \\(ValueError.* 50.0 W"):
        step = meter.end_window("step")
    assert step.devices == {"cpu:package-0": 100.0, "cpu:package-1": 20.0}
    assert step.methods == {"cpu": "measured:rapl+modeled:last-avg-power"}
    assert len(step.warnings) == 1 and "cpu:package-0" in step.warnings[0]
    meter.begin_window("later")
    clock.now = 13.0
    later = meter.end_window("later")  # no second warning, still estimated
    assert later.devices["cpu:package-0"] == 50.0
    assert later.warnings == ()
    assert meter.end_window("run").devices == {"cpu:package-0": 650.0, "cpu:package-1": 120.0}
    meter.close()
