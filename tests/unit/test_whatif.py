"""What-if across the paper's levers (chip, region, PUE, MoE twin), and the plots."""

from __future__ import annotations

import contextlib
import io
import json
import struct

import pytest

from carbon_callbacks import InvalidInputError, RunSession, StepFlops, UnknownNameError
from carbon_callbacks._reports.plot import plot_runs
from carbon_callbacks._reports.whatif import format_whatif, whatif
from carbon_callbacks.cli import main
from carbon_callbacks.meters import ReplayMeter


def window_meter():
    """Every interval: 100 J of GPU energy over 2 s, measured."""
    return ReplayMeter(energy_j=100.0, seconds=2.0, component="gpu", method="measured:nvml")


def make_run(path, info=None, chip="v100"):
    """20 steps x 1e9 FLOPs in 4 intervals of 100 J / 2 s: 400 J IT, PUE 1.2, 0.5 / 0.2 kg per kWh."""
    session = RunSession(intensity=0.5, net_intensity=0.2, pue=1.2, chip=chip, dtype="fp16", meter=window_meter(),
                      output_dir=path, log_every_n_steps=5)
    session.start(info=info)
    for i in range(20):
        session.step_end(flops=StepFlops(1e9, 1e9, "given"), loss=4.0 / (i + 1), step=i + 1)
    with contextlib.redirect_stdout(io.StringIO()):  # the report card a finished run prints
        return session.finish()


IT_KWH = 400.0 / 3.6e6
MFU = 20e9 / 8.0 / 125e12  # V100 fp16 dense peak 125 TFLOP/s


def by_key(scenarios):
    return {(s.model, s.chip, s.region, s.pue): s for s in scenarios}


def test_region_and_pue(tmp_path):
    scenarios = by_key(whatif(make_run(tmp_path), regions=["fr"], pues=["google", 1.05]))
    assert len(scenarios) == 2 * 3
    fr = scenarios[("actual", "v100", "fr", 1.2)]
    assert fr.energy_kwh == pytest.approx(IT_KWH * 1.2)
    assert fr.gross_co2e_kg == pytest.approx(IT_KWH * 1.2 * 0.04418)
    assert fr.net_co2e_kg == pytest.approx(IT_KWH * 1.2 * 0.04418)  # no net figure for fr: the gross one
    assert fr.factor == pytest.approx(0.04418 / 0.2)
    google = scenarios[("actual", "v100", "given intensity", 1.1)]
    assert google.net_co2e_kg == pytest.approx(IT_KWH * 1.1 * 0.2)
    assert google.how == "PUE table:pue/google"
    actual = scenarios[("actual", "v100", "given intensity", 1.2)]
    assert actual.is_actual and actual.factor == 1.0


def test_sorted_by_net_co2e(tmp_path):
    scenarios = whatif(make_run(tmp_path), regions=["fr", "pl"], pues=[1.5])
    nets = [s.net_co2e_kg for s in scenarios]
    assert nets == sorted(nets)
    assert scenarios[0].region == "fr" and scenarios[0].pue == 1.2


def test_other_chip_scales_by_flops_per_watt(tmp_path):
    summary = make_run(tmp_path)
    a100 = by_key(whatif(summary, chips=["a100-40gb"]))[("actual", "a100-40gb", "given intensity", 1.2)]
    # 20e9 FLOPs / (312 TFLOP/s fp16 x the run's MFU) x 400 W TDP
    assert a100.it_energy_kwh == pytest.approx(20e9 / (312e12 * MFU) * 400.0 / 3.6e6)
    assert a100.how.startswith("estimate: FLOPs / (312 TFLOP/s fp16 x MFU")
    tpu = by_key(whatif(summary, chips=["tpu-v3"], mfu=0.5))[("actual", "tpu-v3", "given intensity", 1.2)]
    # bf16 is the V100 run's twin dtype of fp16; measured system power 283 W (paper Table 3)
    assert tpu.it_energy_kwh == pytest.approx(20e9 / (123e12 * 0.5) * 283.0 / 3.6e6)
    assert "MFU 0.5 assumed" in tpu.how and "283 W measured system power" in tpu.how


def test_chip_without_mfu_asks_for_one(tmp_path):
    summary = make_run(tmp_path, chip=None)
    with pytest.raises(InvalidInputError, match="pass mfu="):
        whatif(summary, chips=["h100-sxm"])
    with pytest.raises(UnknownNameError, match="Unknown chip"):
        whatif(make_run(tmp_path / "b"), chips=["h1000-ultra"])


def test_moe_twin(tmp_path):
    summary = make_run(tmp_path, info={"moe_twin": {"name": "switch-4e", "model_flops_per_step": 0.6e9}})
    twin = by_key(whatif(summary))[("moe-twin", "v100", "given intensity", 1.2)]
    assert twin.energy_kwh == pytest.approx(IT_KWH * 1.2 * 0.6)
    assert twin.factor == pytest.approx(0.6)
    assert twin.how.startswith("estimate: MoE twin, energy x 0.6")
    assert len(whatif(summary, moe_twin=False)) == 1


def test_cli_whatif(tmp_path, capsys):
    make_run(tmp_path)
    assert main(["whatif", str(tmp_path), "--region", "fr", "se", "--pue", "1.1"]) == 0
    out = capsys.readouterr().out
    assert "* actual  v100" in out and "x1 " in out
    assert main(["whatif", str(tmp_path), "--region", "fr", "--json"]) == 0
    assert [s["region"] for s in json.loads(capsys.readouterr().out)] == ["fr", "given intensity"]
    assert main(["whatif", str(tmp_path), "--pue", "0.9"]) == 2
    assert "pue must be at least 1.0" in capsys.readouterr().err
    assert "vs run" in format_whatif(whatif(make_run(tmp_path / "b")))


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_real_png(tmp_path):
    pytest.importorskip("matplotlib")
    make_run(tmp_path / "dense")
    make_run(tmp_path / "switch", info={"moe_twin": {"model_flops_per_step": 0.5e9}})
    scenarios = whatif(make_run(tmp_path / "w"), regions=["fr"], pues=[1.1])
    out = plot_runs([tmp_path / "dense", tmp_path / "switch"], tmp_path / "fig.png", scenarios=scenarios)
    width, height = png_size(out)
    assert width >= 1000 and height >= 400
    assert out.stat().st_size > 20_000


def test_cli_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    make_run(tmp_path / "run")
    assert main(["plot", str(tmp_path / "run"), "-o", str(tmp_path / "p.png"), "--region", "fr"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'p.png'}"
    assert png_size(tmp_path / "p.png")[0] > 1000
    assert main(["plot", str(tmp_path / "missing"), "-o", str(tmp_path / "q.png")]) == 2
