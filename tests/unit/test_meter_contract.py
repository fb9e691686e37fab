"""The contract every meter keeps, each driven through the same window sequence; then `ReplayMeter` itself.

One fixture, parametrized with a named entry per meter (after optax's transform_test), builds each meter on a fake
clock with its hardware faked at the boundary: NVML's functions patched as in test_meters_nvml.py, a RAPL powercap
tree written to tmp_path as in test_meters_rapl.py, the CPU model read from the cpuinfo file of
test_meters_modeled.py.
"""

from __future__ import annotations

import contextlib
import doctest
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from carbon_callbacks import COMPONENTS, Accountant, InvalidInputError
from carbon_callbacks.meters import (
    DRAM_W_PER_GB,
    CompositeMeter,
    ConstantPowerMeter,
    HostShareMeter,
    Measurement,
    Meter,
    ModeledAcceleratorMeter,
    ModeledCpuMeter,
    NvmlMeter,
    RaplMeter,
    ReplayMeter,
    replay,
)
from carbon_callbacks.meters._base import check_method

from fakes import FakeClock, FakeGpu, FakeNvml, set_uj


@dataclass
class Rig:
    """A meter on a fake clock, and how to let `dt` seconds pass for it (clock and sensors alike)."""

    meter: Meter
    advance: Callable[[float], None]


def tick(clock: FakeClock, *then: Callable[[float], None]) -> Callable[[float], None]:
    def advance(dt: float) -> None:
        clock.now += dt
        for step in then:
            step(dt)

    return advance


def nvml_rig(clock, request, stack):
    pytest.importorskip("pynvml")
    request.getfixturevalue("monkeypatch").delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = stack.enter_context(FakeNvml([FakeGpu("GPU-aaaaaaaa-0000"), FakeGpu("GPU-bbbbbbbb-0000")]).patched())

    def draw(dt):  # 250 W on each board, read by NVML in mJ
        for gpu in fake.gpus:
            gpu.energy_mj += round(250.0 * dt * 1000)

    return Rig(NvmlMeter(clock=clock), tick(clock, draw))


def rapl_rig(clock, request, stack):
    root = request.getfixturevalue("two_sockets")

    def draw(dt):  # 40 W on every zone, in uJ
        for path in root.glob("*/energy_uj"):
            set_uj(root, path.parent.name, int(path.read_text()) + round(40.0 * dt * 1e6))

    return Rig(RaplMeter(root, poll_s=None, clock=clock), tick(clock, draw))


def modeled_cpu_rig(clock, request, stack):
    cpu = [0.0]

    def work(dt):  # one busy thread
        cpu[0] += dt

    meter = ModeledCpuMeter(
        tdp_w=100.0, cpuinfo_path=request.getfixturevalue("cpuinfo_file"), dram_w_per_gb=DRAM_W_PER_GB,
        clock=clock, cpu_seconds=lambda: cpu[0],
    )
    return Rig(meter, tick(clock, work))


def composite_rig(clock, request, stack):
    cpu = modeled_cpu_rig(clock, request, stack)
    return Rig(CompositeMeter([HostShareMeter(clock=clock), cpu.meter]), cpu.advance)


@pytest.fixture(
    params=[
        pytest.param(nvml_rig, id="nvml"),
        pytest.param(rapl_rig, id="rapl"),
        pytest.param(modeled_cpu_rig, id="modeled-cpu"),
        pytest.param(lambda clock, *_: Rig(ModeledAcceleratorMeter("tpu-v3", clock=clock), tick(clock)),
                     id="modeled-accelerator"),
        pytest.param(lambda clock, *_: Rig(HostShareMeter(clock=clock), tick(clock)), id="host-share"),
        pytest.param(lambda clock, *_: Rig(ConstantPowerMeter({"gpu": 300.0, "cpu": 50.0}, clock=clock),
                                           tick(clock)), id="constant"),
        pytest.param(composite_rig, id="composite"),
        pytest.param(lambda clock, *_: Rig(ReplayMeter([90.0, 0.0, 110.0], [2.0, 0.0, 1.0], "gpu", "measured:nvml"),
                                           tick(clock)), id="replay"),
        pytest.param(lambda clock, *_: Rig(ReplayMeter.from_power_trace([0.0, 1.0, 5.0], [100.0, 300.0, 0.0],
                                                                        clock=clock, interpolation="linear"),
                                           tick(clock)), id="replay-power-trace"),
    ]
)
def rig(request):
    with contextlib.ExitStack() as stack:
        built = request.param(FakeClock(), request, stack)
        yield built
        built.meter.close()  # while the fakes are still in place (NVML shuts down here)


def check(m: Measurement) -> None:
    """What every measurement holds, whichever meter took it."""
    assert isinstance(m, Measurement)
    assert math.isfinite(m.seconds) and m.seconds >= 0
    assert m.energy_j and set(m.energy_j) <= set(COMPONENTS)
    assert all(math.isfinite(j) and j >= 0 for j in m.energy_j.values())
    assert set(m.methods) == set(m.energy_j)
    for component, method in m.methods.items():
        check_method(f"methods[{component!r}]", method)
    assert {device.partition(":")[0] for device in m.devices} == set(m.energy_j)
    assert sum(m.devices.values()) == pytest.approx(m.total_energy_j)
    assert isinstance(m.warnings, tuple) and all(isinstance(w, str) for w in m.warnings)


# ------------------------------------------------------------------------------------------- every meter
def test_nested_and_restarted_windows_each_measure(rig):
    meter, advance = rig.meter, rig.advance
    meter.begin_window("run")
    advance(1.5)
    meter.begin_window("step")
    advance(2.0)
    first = meter.end_window("step")
    meter.begin_window("step")  # the same key again, with "run" still open
    advance(1.25)
    second = meter.end_window("step")
    advance(0.5)
    run = meter.end_window("run")
    for m in (first, second, run):
        check(m)
    assert run.total_energy_j > 0  # every rig draws power: the fakes reach the meter


def test_ending_a_window_leaves_the_others_open(rig):
    rig.meter.begin_window("run")
    rig.meter.begin_window("step")
    rig.advance(1.0)
    rig.meter.end_window("step")
    with pytest.raises(InvalidInputError, match=r"end_window\('step'\) has no matching begin_window"):
        rig.meter.end_window("step")
    check(rig.meter.end_window("run"))


def test_ending_an_unknown_key_raises(rig):
    with pytest.raises(InvalidInputError, match=r"end_window\('nope'\) has no matching begin_window"):
        rig.meter.end_window("nope")


def test_close_twice_is_safe(rig):
    rig.meter.begin_window("run")
    rig.meter.close()
    rig.meter.close()


def test_devices_name_their_component(rig):
    devices = rig.meter.devices
    assert devices and all(isinstance(d, str) and d.partition(":")[0] in COMPONENTS for d in devices)


def test_a_measurement_feeds_the_accountant(rig, site):
    rig.meter.begin_window("w")
    rig.advance(2.0)
    m = rig.meter.end_window("w")
    Accountant(site).update(seconds=m.seconds, energy_j=m.energy_j, energy_method=m.methods)


# ------------------------------------------------------------------------------------------- ReplayMeter
def windows(meter, n, key="w"):
    out = []
    for _ in range(n):
        meter.begin_window(key)
        out.append(meter.end_window(key))
    return out


def test_replay_gives_entry_i_to_window_i_then_repeats_the_last():
    meter = ReplayMeter(energy_j=[90.0, 110.0], seconds=[1.0, 2.0, 3.0], component="gpu", method="measured:nvml")
    got = windows(meter, 4)
    assert [m.energy_j for m in got] == [{"gpu": 90.0}, {"gpu": 110.0}, {"gpu": 110.0}, {"gpu": 110.0}]
    assert [m.seconds for m in got] == [1.0, 2.0, 3.0, 3.0]  # replayed, not the clock's
    assert got[0].methods == {"gpu": "measured:nvml"}
    assert got[0].devices == {"gpu:replay": 90.0}
    assert meter.windows_ended == 4


def test_replay_numbers_repeat_for_every_window_with_default_labels():
    got = windows(ReplayMeter(energy_j=5, seconds=0.5), 3)
    assert {(m.seconds, m.energy_j["cpu"], m.methods["cpu"]) for m in got} == {(0.5, 5.0, "given")}


def test_replay_numbers_windows_in_the_order_they_end():
    meter = ReplayMeter(energy_j=[1.0, 2.0], seconds=1.0)
    meter.begin_window("run")
    meter.begin_window("step")
    assert meter.end_window("step").energy_j == {"cpu": 1.0}
    assert meter.end_window("run").energy_j == {"cpu": 2.0}


def test_replay_closed_says_whether_close_followed_the_last_begin():
    meter = ReplayMeter(energy_j=1.0, seconds=1.0)
    assert not meter.closed
    meter.close()
    assert meter.closed
    meter.begin_window("w")  # reused after close, as a callback across two fits
    assert not meter.closed


@pytest.mark.parametrize(
    ("interpolation", "expected_j"),
    [
        ("previous", [1000.0, 2500.0, 3000.0]),  # 200 W to 10 s, then 300 W
        ("linear", [1125.0, 2875.0, 3000.0]),  # 200 -> 300 W over 0..10 s, then 300 W
    ],
)
def test_power_trace_integrates_over_each_windows_span_on_the_clock(interpolation, expected_j):
    clock = FakeClock()
    meter = ReplayMeter.from_power_trace([0.0, 10.0], [200.0, 300.0], clock=clock, component="gpu",
                                         method="measured:nvml", interpolation=interpolation)
    got = []
    for begin, end in ((0.0, 5.0), (5.0, 15.0), (20.0, 30.0)):
        clock.now = begin
        meter.begin_window("w")
        clock.now = end
        got.append(meter.end_window("w"))
    assert [m.energy_j["gpu"] for m in got] == pytest.approx(expected_j)
    assert [m.seconds for m in got] == [5.0, 10.0, 10.0]
    assert got[0].methods == {"gpu": "measured:nvml"}


def test_power_trace_holds_the_first_sample_before_it():
    clock = FakeClock(-4.0)
    meter = ReplayMeter.from_power_trace([0.0, 1.0], [50.0, 0.0], clock=clock)
    meter.begin_window("w")
    clock.now = 2.0
    assert meter.end_window("w").energy_j == {"cpu": 250.0}  # 50 W over -4..1 s, then 0 W


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"energy_j": -1.0, "seconds": 1.0}, "energy_j must not be negative"),
        ({"energy_j": [1.0, -1.0], "seconds": 1.0}, r"energy_j\[1\] must not be negative"),
        ({"energy_j": 1.0, "seconds": float("nan")}, "seconds must be a finite number"),
        ({"energy_j": [], "seconds": 1.0}, "energy_j must hold at least one value"),
        ({"energy_j": 1.0, "seconds": ()}, "seconds must hold at least one value"),
        ({"energy_j": {"gpu": 1.0}, "seconds": 1.0}, "energy_j must be a number or a sequence"),
        ({"energy_j": "lots", "seconds": 1.0}, "energy_j must be a number"),
        ({"energy_j": 1.0, "seconds": 1.0, "component": "fan"}, "component must be one of gpu, tpu"),
        ({"energy_j": 1.0, "seconds": 1.0, "method": "guess"}, r"method must be 'measured:<sensor>'"),
    ],
)
def test_replay_rejects_bad_arguments(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        ReplayMeter(**kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([0.0, 1.0], [1.0]), {}, "same length, got 2 and 1"),
        (([0.0, 0.0], [1.0, 1.0]), {}, r"strictly increasing, got times_s\[0\] = 0.0 and times_s\[1\] = 0.0"),
        (([0.0], [-1.0]), {}, r"watts\[0\] must not be negative"),
        (([], []), {}, "times_s must hold at least one value"),
        ((5.0, [1.0]), {}, "times_s must be a sequence of numbers"),
        (([0.0], [1.0]), {"interpolation": "cubic"}, "interpolation must be one of 'previous', 'linear'"),
        (([0.0], [1.0]), {"clock": 3.0}, "clock must be a callable"),
        (([0.0], [1.0]), {"component": "fan"}, "component must be one of"),
    ],
)
def test_power_trace_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        ReplayMeter.from_power_trace(*args, **{"clock": FakeClock(), **kwargs})


def test_replay_examples_run():
    assert doctest.testmod(replay, raise_on_error=False).failed == 0
