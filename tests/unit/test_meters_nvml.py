"""NVML meter with the pynvml functions patched (autospec): no device, pre-Volta, Volta+, MIG, failures."""

from __future__ import annotations

import sys
import time
import warnings
from unittest import mock

import pytest

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks.meters import NvmlMeter, SensorUnavailableError, create_meter, nvml

from fakes import FakeClock, FakeGpu, FakeNvml

pynvml = pytest.importorskip("pynvml")


@pytest.fixture(autouse=True)
def _no_visible_devices_variable(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def four_gpus():
    return [FakeGpu(f"GPU-{c * 8}-0000") for c in "abcd"]


# ------------------------------------------------------------------------------------------- availability
def test_no_device_is_unavailable():
    with FakeNvml([]).patched(), pytest.raises(SensorUnavailableError, match="no visible NVIDIA GPU"):
        NvmlMeter()


def test_driver_failing_at_init_is_unavailable():
    with FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED).patched():
        with pytest.raises(SensorUnavailableError, match="NVML failed to initialise"):
            NvmlMeter()


def test_missing_binding_says_how_to_install():
    with mock.patch.dict(sys.modules, {"pynvml": None}):
        with pytest.raises(SensorUnavailableError, match=r"pip install 'carbon-callbacks\[nvidia\]'"):
            nvml.import_pynvml()


def test_factory_warns_once_for_a_gpu_chip_without_nvml():
    with FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED).patched():
        with pytest.warns(UserWarning, match="nvml=False") as record:
            meter = create_meter("h100-sxm", rapl=False, tdp_w=100.0)
            create_meter("h100-sxm", rapl=False, tdp_w=100.0)
    assert len([r for r in record if "GPU energy cannot be measured" in str(r.message)]) == 1
    meter.begin_window("w")
    assert meter.end_window("w").methods["gpu"].startswith("modeled:")


def test_factory_without_a_gpu_chip_does_not_warn_about_nvml():
    with FakeNvml([]).patched(), warnings.catch_warnings():
        warnings.simplefilter("error")
        meter = create_meter(rapl=False, tdp_w=100.0)
    assert meter.devices == ("cpu:process",)


# ------------------------------------------------------------------------------------------- Volta and newer
def test_volta_counter_is_read_at_window_edges():
    fake = FakeNvml(four_gpus())
    clock = FakeClock()
    with fake.patched():
        meter = NvmlMeter(clock=clock)
        assert meter.devices == ("gpu:0", "gpu:1", "gpu:2", "gpu:3")
        meter.begin_window("w")
        fake.gpus[0].energy_mj += 600_000
        fake.gpus[3].energy_mj += 300_000
        clock.now = 2.0
        m = meter.end_window("w")
        meter.close()
        meter.close()
    assert m.devices == {"gpu:0": 600.0, "gpu:1": 0.0, "gpu:2": 0.0, "gpu:3": 300.0}
    assert m.energy_j == {"gpu": 900.0}
    assert m.methods == {"gpu": "measured:nvml"}
    assert fake.shutdowns == 1


def test_factory_uses_nvml_and_the_cpu_meter():
    fake = FakeNvml(four_gpus()[:1])
    with fake.patched():
        meter = create_meter(rapl=False, tdp_w=100.0)
        meter.begin_window("w")
        m = meter.end_window("w")
        meter.close()
    assert m.methods == {"gpu": "measured:nvml", "cpu": "modeled:tdp*util"}


@pytest.mark.parametrize(
    ("visible", "expected_uuids"),
    [
        ("2,0", ["GPU-cccccccc-0000", "GPU-aaaaaaaa-0000"]),
        ("GPU-bbbb,3", ["GPU-bbbbbbbb-0000", "GPU-dddddddd-0000"]),  # a unique UUID prefix is enough
        ("1,7,2", ["GPU-bbbbbbbb-0000"]),  # CUDA stops at the first invalid entry
        ("", []),
    ],
)
def test_cuda_visible_devices_indices_and_uuids(monkeypatch, visible, expected_uuids):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with FakeNvml(four_gpus()).patched():
        if not expected_uuids:
            with pytest.raises(SensorUnavailableError, match="CUDA_VISIBLE_DEVICES"):
                NvmlMeter()
            return
        meter = NvmlMeter()
        assert [meter._gpus[d].uuid for d in meter.devices] == expected_uuids
        meter.close()


def test_devices_selects_cuda_ordinals_and_rejects_invisible_ones(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    with FakeNvml(four_gpus()).patched():
        meter = NvmlMeter(devices=[1])
        assert meter.devices == ("gpu:1",)
        assert meter._gpus["gpu:1"].uuid == "GPU-bbbbbbbb-0000"
        meter.close()
        with pytest.raises(InvalidInputError, match=r"devices \[2\] are not visible: this process sees 2 GPU"):
            NvmlMeter(devices=[2])


def test_mig_device_gets_its_slice_share_of_the_parent(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-1234")
    fake = FakeNvml(four_gpus()[:1], migs={"MIG-1234": ("handle-0", 3)})
    clock = FakeClock()
    with fake.patched():
        with pytest.warns(UserWarning, match="MIG device"):
            meter = NvmlMeter(clock=clock)
        meter.begin_window("w")
        fake.gpus[0].energy_mj += 700_000
        clock.now = 5.0
        m = meter.end_window("w")
        meter.close()
    assert m.energy_j == pytest.approx({"gpu": 300.0})  # 3 of 7 slices
    assert m.methods == {"gpu": "measured:nvml*mig-share"}
    assert "MIG device" in m.warnings[0]


def test_short_window_is_attributed_from_a_longer_one():
    fake = FakeNvml(four_gpus()[:1])
    clock = FakeClock()
    with fake.patched():
        meter = NvmlMeter(clock=clock)  # reads at t=0
        meter.begin_window("warm-up")
        clock.now = 2.0
        fake.gpus[0].energy_mj += 400_000  # 200 W
        meter.end_window("warm-up")
        meter.begin_window("step")
        clock.now = 2.05  # the counter has not moved in 50 ms
        m = meter.end_window("step")
        meter.begin_window("step")
        clock.now = 2.1
        again = meter.end_window("step")
        meter.close()
    # The counter's average from t=0 to the end reading at 2.05 s (whose value is still that of 2.0 s).
    assert m.energy_j == pytest.approx({"gpu": 400.0 / 2.05 * 0.05})
    assert m.methods == {"gpu": "measured:nvml"}
    assert "shorter than 1 s" in m.warnings[0]
    assert again.warnings == ()  # said once


def test_short_first_window_uses_the_power_reading():
    fake = FakeNvml([FakeGpu("GPU-a", power_mw=250_000)])
    clock = FakeClock()
    with fake.patched():
        meter = NvmlMeter(clock=clock)
        meter.begin_window("step")
        clock.now = 0.02
        m = meter.end_window("step")
        meter.close()
    assert m.energy_j == pytest.approx({"gpu": 250.0 * 0.02})


# ------------------------------------------------------------------------------------------- pre-Volta
def test_pre_volta_integrates_sampled_power():
    fake = FakeNvml([FakeGpu("GPU-p100", counter=False, power_mw=150_000, name="Tesla P100")])
    with fake.patched():
        meter = NvmlMeter(sample_s=0.01)
        meter.begin_window("w")
        time.sleep(0.2)
        m = meter.end_window("w")
        meter.close()
        assert not meter._thread
    assert m.methods == {"gpu": "measured:nvml-power-sampled"}
    assert m.energy_j["gpu"] == pytest.approx(150.0 * m.seconds, rel=0.02)
    assert "power sampled every 0.01 s" in meter.notes[0]


# ------------------------------------------------------------------------------------------- failures mid-run
def test_a_call_failing_mid_run_falls_back_without_raising():
    fake = FakeNvml(four_gpus()[:2])
    clock = FakeClock()
    with fake.patched():
        meter = NvmlMeter(clock=clock)  # t=0
        meter.begin_window("run")
        clock.now = 10.0
        fake.gpus[0].energy_mj += 3_000_000  # 300 W
        fake.gpus[1].energy_mj += 1_000_000
        meter.begin_window("step")
        fake.gpus[0].error = pynvml.NVML_ERROR_GPU_IS_LOST
        clock.now = 12.0
        fake.gpus[1].energy_mj += 200_000
        with pytest.warns(UserWarning, match="reading gpu:0 failed .*300.0 W") as record:
            step = meter.end_window("step")
        assert len(record) == 1
        assert step.devices == pytest.approx({"gpu:0": 600.0, "gpu:1": 200.0})
        assert step.methods == {"gpu": "measured:nvml+modeled:last-avg-power"}
        assert "gpu:0 failed" in step.warnings[0]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once only
            meter.begin_window("next")
            clock.now = 13.0
            assert meter.end_window("next").devices["gpu:0"] == pytest.approx(300.0)
        meter.close()


def test_a_failure_before_any_measurement_uses_the_power_limit():
    fake = FakeNvml([FakeGpu("GPU-a", limit_mw=350_000)])
    clock = FakeClock()
    with fake.patched():
        meter = NvmlMeter(clock=clock)
        fake.gpus[0].energy_mj = 0
        meter._history.clear()  # as if the first read had been the failing one
        fake.gpus[0].error = pynvml.NVML_ERROR_UNKNOWN
        with pytest.warns(UserWarning, match="modeled:power-limit"):
            meter.begin_window("w")
        clock.now = 2.0
        m = meter.end_window("w")
        meter.close()
    assert m.energy_j == {"gpu": 700.0}
    assert m.methods == {"gpu": "modeled:power-limit"}
