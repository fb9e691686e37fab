"""The report card of a run directory: Table 4 rows, dense/sparse split, model-card block, bad directories, load_run."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from carbon_callbacks import InvalidInputError, RunSession, StepFlops
from carbon_callbacks._record.names import RUN_FILE, STEPS_FILE
from carbon_callbacks._record.store import write_json_atomic
from carbon_callbacks._reports.frames import load_run
from carbon_callbacks._reports.report import (
    energy_split,
    format_report,
    hf_co2_block,
    read_report,
    render_latex,
    render_markdown,
    render_text,
    table4_rows,
)
from carbon_callbacks.cli import main
from carbon_callbacks.meters import ReplayMeter


def window_meter():
    """Every logging interval draws 100 J of GPU energy over 2 s (measured): a deterministic run."""
    return ReplayMeter(energy_j=100.0, seconds=2.0, component="gpu", method="measured:nvml")


def make_run(path, *, steps=20, every=5, info=None, crash_after=None):
    """20 steps of 1e9 model FLOPs and 100 tokens on a V100 (fp16 peak 125 TFLOP/s), 4 intervals of 100 J / 2 s."""
    session = RunSession(
        intensity=0.5, net_intensity=0.2, pue=1.2, chip="v100", dtype="fp16", meter=window_meter(),
        output_dir=path, log_every_n_steps=every,
    )
    session.start(info=info)
    for i in range(steps):
        session.step_end(flops=StepFlops(1e9, 1e9, "given", 100), loss=3.0 - 0.1 * i, step=i + 1)
        session.flush()
        if crash_after is not None and i + 1 == crash_after:
            return None  # dies here: run.json says "running"
    with contextlib.redirect_stdout(io.StringIO()):  # the report card a finished run prints
        return session.finish()


IT_KWH = 400.0 / 3.6e6
ENERGY_KWH = IT_KWH * 1.2


def test_rows_of_a_finished_run(tmp_path):
    make_run(tmp_path, info={"params_total": 1234, "percent_active": 100.0, "params_source": "counted"})
    rows = {name: (value, how) for name, value, how in read_report(tmp_path).rows()}
    assert rows["parameters"] == (1234, "counted")
    assert rows["processor"] == ("v100", "given")
    assert rows["number of processors"][0] == 1
    assert rows["PUE"] == (1.2, "given")
    assert rows["gross kg CO2e/kWh"] == (0.5, "given")
    assert rows["net kg CO2e/kWh"] == (0.2, "given")
    assert rows["average system power per processor (W)"] == (pytest.approx(50.0), "measured:nvml")
    assert rows["achieved TFLOP/s per processor"][0] == pytest.approx(20e9 / 8.0 / 1e12)
    assert rows["MFU"][0] == pytest.approx(20e9 / 8.0 / 125e12)
    assert rows["training time (h)"][0] == pytest.approx(8.0 / 3600)
    assert rows["total model FLOPs"][0] == 20e9
    assert rows["energy (kWh, facility)"][0] == pytest.approx(ENERGY_KWH)
    assert rows["gross kg CO2e"][0] == pytest.approx(ENERGY_KWH * 0.5)
    assert rows["net kg CO2e"][0] == pytest.approx(ENERGY_KWH * 0.2)
    assert rows["gross tCO2e"][0] == pytest.approx(ENERGY_KWH * 0.5 / 1000)
    assert rows["net tCO2e"][0] == pytest.approx(ENERGY_KWH * 0.2 / 1000)


def test_missing_rows_are_listed_not_invented(tmp_path):
    make_run(tmp_path)  # no params annotated
    report = read_report(tmp_path)
    rows = dict((name, value) for name, value, _ in report.rows())
    assert rows["parameters"] is None and rows["% parameters activated per token"] is None
    assert any(m.startswith("parameters: run.json info has no params_total") for m in report.missing)
    assert "parameters" not in format_report(report.summary)


def test_energy_split_by_flops_for_a_moe_model(tmp_path):
    breakdown = {"attention": 1e9, "dense_mlp": 1e9, "moe_experts": 1.5e9, "router": 0.5e9}
    summary = make_run(tmp_path, info={"flops_by_layer_kind": breakdown})
    dense, sparse = energy_split(summary)
    assert (dense["part"], sparse["part"]) == ("dense", "sparse (MoE)")
    assert dense["flops_share"] == 0.5 and sparse["flops_share"] == 0.5
    assert dense["energy_kwh"] == pytest.approx(ENERGY_KWH / 2)
    assert sparse["net_co2e_kg"] == pytest.approx(ENERGY_KWH * 0.2 / 2)
    assert dense["method"] == "estimate: apportioned by FLOPs"
    assert "energy by layer kind (estimate: apportioned by FLOPs)" in format_report(summary)


def test_energy_split_prefers_hardware_flops_and_skips_dense_models(tmp_path):
    nested = {"model": {"mlp": 1.0, "experts": 1.0}, "hardware": {"mlp": 1.0, "experts": 3.0}}
    assert energy_split({"energy_kwh": 4.0, "info": {"flops_breakdown": nested}})[1]["energy_kwh"] == 3.0
    assert energy_split({"energy_kwh": 4.0, "info": {"flops_breakdown": {"attention": 1.0, "mlp": 3.0}}}) is None


def test_hugging_face_block(tmp_path):
    summary = make_run(tmp_path)
    block = hf_co2_block({**summary, "region": "fr"}, training_type="pre-training")
    assert block["emissions"] == pytest.approx(ENERGY_KWH * 0.5 * 1000, rel=1e-6)
    assert block["training_type"] == "pre-training"
    assert block["geographical_location"] == "France"  # the place, from the regions table
    assert block["hardware_used"] == "1 x v100"
    text = render_text(read_report(tmp_path))
    assert "co2_eq_emissions:\n  emissions: " in text
    assert "  # geographical_location: not recorded by this run" in text  # intensity given, no region


def test_markdown_and_latex(tmp_path):
    make_run(tmp_path, info={"percent_active": 12.5})
    report = read_report(tmp_path)
    markdown = render_markdown(report)
    assert "| row (paper Table 4) | value | how obtained |" in markdown
    assert "| PUE | 1.2 | given |" in markdown
    assert "```yaml\nco2_eq_emissions:" in markdown
    latex = render_latex(report)
    assert "\\begin{tabular}" in latex and "\\bottomrule" in latex
    assert "\\% parameters activated per token & 12.5 &" in latex


def test_cli_report_formats(tmp_path, capsys):
    make_run(tmp_path)
    assert main(["report", str(tmp_path), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["status"] == "finished" and card["steps"] == 20
    assert {r["row"]: r["value"] for r in card["rows"]}["total model FLOPs"] == 20e9
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"found: {RUN_FILE}: schema 1, status finished, 20 steps" in out
    assert f"found: {STEPS_FILE}: 4 records covering 20 steps" in out


def test_missing_and_empty_directories_are_one_line_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="holds neither run.json nor a step"):
        read_report(tmp_path)


def test_crashed_run_is_reported_as_partial(tmp_path):
    make_run(tmp_path, crash_after=12)  # 2 intervals flushed, run.json still "running"
    report = read_report(tmp_path)
    assert report.summary["steps"] == 10
    assert any("status 'running': the run crashed or is still going" in n for n in report.notes)
    assert report.summary["energy_kwh"] == pytest.approx(ENERGY_KWH / 2)


def test_step_log_without_run_json(tmp_path):
    make_run(tmp_path)
    (tmp_path / RUN_FILE).unlink()
    report = read_report(tmp_path)
    s = report.summary
    assert s["status"] == "unknown (run.json missing)"
    assert s["steps"] == 20 and s["wall_time_s"] == 8.0
    assert s["energy_kwh"] == pytest.approx(ENERGY_KWH)
    assert s["pue"] == pytest.approx(1.2) and s["gross_kg_per_kwh"] == pytest.approx(0.5)
    assert s["net_kg_per_kwh"] == pytest.approx(0.2)
    assert s["total_model_flops"] == 20e9
    assert s["sources"]["pue"] == "derived from steps.csv (run.json missing)"
    assert report.missing[0].startswith("run.json: missing")
    assert "processor: needs run.json" in report.missing
    assert dict((n, v) for n, v, _ in report.rows())["MFU"] is None


def test_older_version_is_named_and_its_gaps_listed(tmp_path):
    old = {"schema_version": 0, "status": "finished", "steps": 3, "energy_kwh": 0.5, "pue": 1.1}
    write_json_atomic(tmp_path / RUN_FILE, old)
    report = read_report(tmp_path)
    assert any("schema_version 0" in n for n in report.notes)
    assert "gross kg CO2e: no energy recorded" in report.missing  # not computed from a guessed intensity
    assert f"{STEPS_FILE}: no step records (no plot, projection or per-step figures)" in report.missing
    rows = dict((n, v) for n, v, _ in report.rows())
    assert rows["energy (kWh, facility)"] == 0.5 and rows["gross kg CO2e"] is None


def test_table4_rows_keeps_its_contract(tmp_path):
    summary = make_run(tmp_path)
    names = [name for name, _, _ in table4_rows(summary)]
    assert names[:4] == ["parameters", "% parameters activated per token", "% parameters trained", "processor"]
    assert format_report(summary).startswith("carbon-callbacks: 20 steps, status finished")


def test_load_run_one_and_several(tmp_path):
    pytest.importorskip("pandas")
    make_run(tmp_path / "dense")
    make_run(tmp_path / "switch", steps=10)
    frame = load_run(tmp_path / "dense")
    assert list(frame["cum_steps"]) == [5, 10, 15, 20]
    assert list(frame["elapsed_s"]) == [2.0, 4.0, 6.0, 8.0]
    assert frame["loss"].iloc[-1] == pytest.approx(3.0 - 0.1 * 19)
    assert frame.attrs["runs"]["dense"]["steps"] == 20
    both = load_run(tmp_path / "dense", tmp_path / "switch")
    assert both.groupby("run")["co2e_kg"].last().to_dict() == pytest.approx(
        {"dense": ENERGY_KWH * 0.5, "switch": ENERGY_KWH * 0.25}
    )
    with pytest.raises(InvalidInputError, match="one entry per run directory"):
        load_run(tmp_path / "dense", labels=["a", "b"])


@pytest.mark.parametrize("content", ["[]", "3", "null", '"run"'])
def test_run_json_that_is_not_an_object_is_a_one_line_error(tmp_path, capsys, content):
    (tmp_path / RUN_FILE).write_text(content)
    with pytest.raises(InvalidInputError, match=r"run\.json: expected a JSON object"):
        read_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1 and str(tmp_path / RUN_FILE) in err_lines[0], captured.err
    assert "Traceback" not in captured.err
    (tmp_path / RUN_FILE).write_text("{}")
    (tmp_path / "steps.jsonl").write_text('{"step": 0}\n[1, 2]\n{"step": 2}\n')  # an older version's log
    report = read_report(tmp_path)  # the bad line is skipped and named, the run is read
    assert [r["step"] for r in report.records] == [0, 2]
    assert any("steps.jsonl: line 2: not a JSON object (a step record), got an array (skipped)" in note
               for note in report.notes), report.notes


# ------------------------------------------------------------------------------------------- embodied carbon
EMBODIED_ROW = "embodied kg CO2e (chips' manufacturing share; not in the rows above)"


def make_chip_run(path, chip):
    """4 intervals of 100 J / 2 s on 8 chips of `chip`: 8 s of wall clock."""
    session = RunSession(intensity=0.5, net_intensity=0.2, pue=1.2, chip=chip, num_chips=8, dtype="bf16",
                         meter=window_meter(), output_dir=path, log_every_n_steps=5)
    session.start()
    for i in range(20):
        session.step_end(flops=StepFlops(1e9, 1e9, "given", 100), loss=1.0, step=i + 1)
    with contextlib.redirect_stdout(io.StringIO()):
        return session.finish()


def test_report_card_shows_embodied_for_a_sourced_chip(tmp_path):
    summary = make_chip_run(tmp_path, "a100-80gb")
    expected = 462.5 * 8 * (8.0 / 3600) / (6 * 365 * 24)  # (150 + 2500 / 8) kg x 8 chips x h / 6 years
    assert summary["embodied_co2e_kg"] == pytest.approx(expected)
    rows = {name: (value, how) for name, value, how in read_report(tmp_path).rows()}
    assert rows[EMBODIED_ROW][0] == pytest.approx(expected)
    assert "footprint x chips x hours / lifetime" in rows[EMBODIED_ROW][1] and "6-year life" in rows[EMBODIED_ROW][1]
    assert rows["gross kg CO2e"][0] == pytest.approx(ENERGY_KWH * 0.5)  # operational only
    text = render_text(read_report(tmp_path))
    assert EMBODIED_ROW in text
    assert EMBODIED_ROW in render_markdown(read_report(tmp_path))


def test_hf_block_keeps_operational_in_emissions_and_names_embodied(tmp_path):
    summary = make_chip_run(tmp_path, "a100-80gb")
    block = hf_co2_block(summary)
    assert block["emissions"] == pytest.approx(ENERGY_KWH * 0.5 * 1000, rel=1e-5)  # gross operational, grams
    assert block["embodied_emissions"] == pytest.approx(summary["embodied_co2e_kg"] * 1000, rel=1e-5)
    assert "not included in emissions" in block["source"]
    assert "  embodied_emissions: " in render_text(read_report(tmp_path))


def test_chip_without_footprint_lists_embodied_as_missing(tmp_path):
    make_chip_run(tmp_path, "h200")
    report = read_report(tmp_path)
    assert f"{EMBODIED_ROW}: no published manufacturing footprint for chip 'h200' in the chips table" in report.missing
    assert "embodied_emissions" not in hf_co2_block(report.summary)
    assert "embodied_emissions" not in render_text(report)
