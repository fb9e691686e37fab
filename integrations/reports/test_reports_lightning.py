"""Report, projection, what-if, plot and load_run on runs produced by real training (Lightning, reference GPTs).

Two small fits share the module: the dense reference GPT and its Switch twin (same activated parameters per
token), each with the Lightning callback and this machine's real (modeled CPU) meter.
"""

from __future__ import annotations

import json
import struct

import pytest

pl = pytest.importorskip("pytorch_lightning")
torch = pytest.importorskip("torch")

from carbon_callbacks._reports.frames import load_run  # noqa: E402
from carbon_callbacks._reports.plot import plot_runs  # noqa: E402
from carbon_callbacks._reports.projection import project_run  # noqa: E402
from carbon_callbacks._reports.report import energy_split, read_report  # noqa: E402
from carbon_callbacks._reports.whatif import whatif  # noqa: E402
from carbon_callbacks.cli import main  # noqa: E402
from carbon_callbacks.flops import transformer_flops  # noqa: E402
from carbon_callbacks.lightning import CarbonCallback  # noqa: E402
from carbon_callbacks.meters import ReplayMeter, create_meter  # noqa: E402
from carbon_callbacks.models import GPTConfig  # noqa: E402
from carbon_callbacks.models.torch_gpt import GPT, loss_fn  # noqa: E402

STEPS = 100
EVERY = 4
DENSE = GPTConfig(num_layers=2, d_model=32, num_heads=4, seq_len=16, batch_size=4, vocab_size=64, d_ff=64)
SWITCH = DENSE.with_(num_experts=4, top_k=1)


def steady_meter():
    """A steady machine: 3 J per 0.1 s window, the first (FLOP counting, allocation) 5x, later ones alternating +-5%.

    The series covers 41 windows, more than the 25 of a run (then 3.15 J would repeat).
    """
    return ReplayMeter(energy_j=[15.0] + [2.85, 3.15] * 20, seconds=0.1, component="cpu", method="given")


class LitGPT(pl.LightningModule):
    def __init__(self, config):
        super().__init__()
        self.model = GPT(config)
        self.config = config

    def training_step(self, batch, batch_idx):
        tokens, targets = batch
        return loss_fn(self.model(tokens), targets)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def fit(config, directory, twin=None, meter=None):
    torch.manual_seed(0)
    flops = transformer_flops(config)
    # By default the machine's own meter without RAPL probing: CPU seconds x the CPU's TDP share.
    meter = meter or create_meter(rapl=False, nvml=False)
    callback = CarbonCallback(intensity=0.5, net_intensity=0.2, pue=1.2, output_dir=directory,
                              log_every_n_steps=EVERY, dtype="fp32", meter=meter)
    info = {"flops_by_layer_kind": {"model": flops.breakdown, "hardware": flops.hardware_breakdown}}
    if twin is not None:
        twin_flops = transformer_flops(twin)
        info["moe_twin"] = {"model_flops_per_step": twin_flops.model_flops,
                            "hardware_flops_per_step": twin_flops.hardware_flops}
    callback.session.annotate(**info)
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, config.vocab_size, (STEPS * config.batch_size, config.seq_len + 1), generator=generator)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:]), batch_size=config.batch_size
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared 2-core machine: no spin-waiting helper threads
    try:
        pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   log_every_n_steps=EVERY).fit(LitGPT(config), loader)
    finally:
        torch.set_num_threads(threads)
    return callback.summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    fit(DENSE, root / "dense", twin=SWITCH)
    fit(SWITCH, root / "switch")
    return root


def test_report_cards_of_real_runs(runs, capsys):
    dense, switch = read_report(runs / "dense"), read_report(runs / "switch")
    for report in (dense, switch):
        assert report.summary["status"] == "finished" and report.summary["steps"] == STEPS
        assert report.notes == []
        rows = {name: value for name, value, _ in report.rows()}
        assert rows["energy (kWh, facility)"] > 0
        assert rows["gross kg CO2e"] == pytest.approx(rows["energy (kWh, facility)"] * 0.5)
        assert rows["net kg CO2e"] == pytest.approx(rows["energy (kWh, facility)"] * 0.2)
    assert energy_split(dense.summary) is None  # no MoE layer
    parts = energy_split(switch.summary)
    hw = transformer_flops(SWITCH).hardware_breakdown
    sparse_share = (hw["moe_experts"] + hw["router"] + hw["moe_dispatch"]) / sum(hw.values())
    assert parts[1]["flops_share"] == pytest.approx(sparse_share)
    assert parts[0]["energy_kwh"] + parts[1]["energy_kwh"] == pytest.approx(switch.summary["energy_kwh"])
    percent = {n: v for n, v, _ in switch.rows()}["% parameters activated per token"]
    assert percent == pytest.approx(transformer_flops(SWITCH).percent_active)
    assert main(["report", str(runs / "switch"), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["energy_split"][1]["part"] == "sparse (MoE)"
    assert card["co2_eq_emissions"]["emissions"] == pytest.approx(switch.summary["gross_co2e_kg"] * 1000, rel=1e-5)


def test_projection_is_logged_once_after_20_percent(runs):
    for name in ("dense", "switch"):
        summary = read_report(runs / name).summary
        proj = summary["info"]["projection"]
        assert proj["total_steps"] == STEPS and proj["steps_observed"] == 20
        # the same projection recomputed from the step log; how close it lands depends on this machine's load
        assert project_run(runs / name, after_steps=20).energy_kwh == pytest.approx(proj["energy_kwh"])


def test_projection_after_20_percent_of_a_steady_run_is_within_10_percent(tmp_path):
    summary = fit(DENSE, tmp_path, meter=steady_meter())
    proj = summary["info"]["projection"]
    assert proj["steps_observed"] == 20
    assert proj["energy_kwh"] / summary["energy_kwh"] == pytest.approx(1.0, abs=0.10)
    assert proj["energy_kwh_low"] <= summary["energy_kwh"] <= proj["energy_kwh_high"]
    assert "first interval left out as warm-up" in proj["method"]


def test_whatif_on_real_runs(runs):
    summary = read_report(runs / "dense").summary
    rows = {(s.model, s.region, s.pue): s for s in whatif(summary, regions=["fr"], pues=[1.1])}
    twin = rows[("moe-twin", "given intensity", 1.2)]
    dense_hw, switch_hw = transformer_flops(DENSE).hardware_flops, transformer_flops(SWITCH).hardware_flops
    # the run's hardware FLOPs are counted by tracing; the twin's come from the analytic counter
    assert twin.factor == pytest.approx(switch_hw / (summary["total_hardware_flops"] / STEPS))
    assert summary["total_hardware_flops"] / STEPS == pytest.approx(dense_hw, rel=0.01)
    assert rows[("actual", "fr", 1.1)].net_co2e_kg == pytest.approx(summary["it_energy_kwh"] * 1.1 * 0.04418)
    h100 = whatif(summary, chips=["h100-sxm"], mfu=0.4)
    h100_row = next(s for s in h100 if s.chip == "h100-sxm" and s.model == "actual" and s.pue == 1.2)
    assert h100_row.it_energy_kwh == pytest.approx(summary["total_model_flops"] / (67e12 * 0.4) * 700 / 3.6e6)


def test_plot_and_load_run_on_real_runs(runs):
    path = plot_runs([runs / "dense", runs / "switch"], runs / "plot.png",
                     scenarios=whatif(read_report(runs / "dense").summary, regions=["fr"]))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    width, height = struct.unpack(">II", data[16:24])
    assert width > 1000 and height > 400
    frame = load_run(runs / "dense", runs / "switch")
    assert sorted(frame["run"].unique()) == ["dense", "switch"]
    assert frame.groupby("run")["cum_steps"].max().to_dict() == {"dense": STEPS, "switch": STEPS}
    assert frame["loss"].notna().all()
