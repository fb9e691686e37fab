"""Nothing bad gets in: typed and hostile run files, units given in the wrong scale, ambiguous and aliased names,
and the report card's figures that must agree with each other."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re

import pytest

from carbon_callbacks import InvalidInputError, RunSession, StepFlops, get_chip, get_region, read_run, resolve_site
from carbon_callbacks._record.names import RUN_FILE, STEPS_FILE
from carbon_callbacks._site import tables
from carbon_callbacks.cli import main
from carbon_callbacks.meters import ReplayMeter

from fakes import FixedMeter

COMMANDS = (["report"], ["report", "--markdown"], ["report", "--json"], ["whatif"], ["plot", "-o", "{out}/p.png"])


def finished_run(path) -> dict:
    session = RunSession(intensity=0.5, net_intensity=0.2, pue=1.2, chip="v100", dtype="fp16",
                         meter=ReplayMeter(energy_j=100.0, seconds=2.0, component="gpu", method="measured:nvml"),
                         output_dir=path, log_every_n_steps=5)
    session.start()
    for i in range(20):
        session.step_end(flops=StepFlops(1e9, 1e9, "given", 100), loss=3.0 - 0.1 * i, step=i + 1)
    with contextlib.redirect_stdout(io.StringIO()):
        return session.finish()


def exit_2(args, capsys) -> str:
    """The CLI's one-line error for `args` (exit 2, no traceback)."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def edit(path, **fields) -> None:
    """Writes `fields` into `run.json` as raw JSON text (strings, NaN, Infinity as given)."""
    summary = json.loads((path / RUN_FILE).read_text())
    text = json.dumps(summary)
    for key, raw in fields.items():
        text = text.replace(f'"{key}": {json.dumps(summary[key])}', f'"{key}": {raw}', 1)
    (path / RUN_FILE).write_text(text)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize(("field", "raw", "says"), [
    ("energy_kwh", '"0.1"', "field 'energy_kwh': expected a number, got '0.1'"),
    ("pue", "NaN", "field 'pue': expected a finite number, got nan"),
    ("gross_co2e_kg", "Infinity", "field 'gross_co2e_kg': expected a finite number, got inf"),
    ("steps", "-3", "field 'steps': expected a whole number >= 0, got -3"),
])
def test_a_bad_field_of_run_json_is_one_line_naming_it(tmp_path, capsys, command, field, raw, says):
    run = tmp_path / "run"
    finished_run(run)
    edit(run, **{field: raw})
    args = [a.format(out=tmp_path) for a in command]
    err = exit_2([*args[:1], str(run), *args[1:]], capsys)
    assert f"{run / RUN_FILE}: {says}" in err


def test_a_deeply_nested_run_json_is_one_line(tmp_path, capsys):
    (tmp_path / RUN_FILE).write_text('{"info": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "nested too deeply" in exit_2(["report", str(tmp_path)], capsys)
    (tmp_path / RUN_FILE).write_text('{"info": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}")
    assert "nested more than 16 levels deep" in exit_2(["whatif", str(tmp_path)], capsys)


def test_a_step_record_with_a_string_is_skipped_and_named(tmp_path, capsys):
    run = tmp_path / "run"
    finished_run(run)
    lines = (run / STEPS_FILE).read_text().splitlines(keepends=True)
    cells = lines[2].split(",")
    cells[5] = "two"  # seconds
    lines[2] = ",".join(cells)
    (run / STEPS_FILE).write_text("".join(lines))
    (run / RUN_FILE).unlink()  # the report then reads the log
    assert main(["report", str(run)]) == 0
    assert f"note: {run / STEPS_FILE}: line 3: field 'seconds': expected a number, got 'two' (skipped)" in \
        capsys.readouterr().out
    pytest.importorskip("pandas")
    from carbon_callbacks import load_run

    with pytest.warns(match="line 3: field 'seconds'"):
        frame = load_run(run)
    assert len(frame) == 3


def test_report_json_is_strict_json(tmp_path, capsys):
    run = tmp_path / "run"
    finished_run(run)
    assert main(["report", "--json", str(run)]) == 0

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    card = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert card["status"] == "finished"


def test_whatif_reads_run_json_alone(tmp_path, capsys):
    run = tmp_path / "run"
    finished_run(run)
    (run / STEPS_FILE).write_bytes(b"\x00" * 1000)  # the step log is never read
    assert main(["whatif", str(run), "--pue", "1.1", "--json"]) == 0
    factors = [s["factor"] for s in json.loads(capsys.readouterr().out)]
    assert factors == pytest.approx([1.1 / 1.2, 1.0])


# ------------------------------------------------------------------------------------------- units
@pytest.mark.parametrize(("kwargs", "says"), [
    ({"intensity": 400}, "intensity must be in kg CO2e/kWh, at most 2 (the dirtiest grids average about 1.1), got "
                         "400: that looks like g CO2e/kWh; pass 0.4."),
    ({"intensity": 0.4, "net_intensity": 120}, "net_intensity must be in kg CO2e/kWh"),
    ({"intensity": 0.4, "pue": 110}, "pue must be between 1 and 3 (surveyed datacentres average about 1.5), got 110; "
                                     "a percentage? pass 1.1."),
    ({"intensity": 0.4, "pue": 0.9}, "pue must be at least 1.0"),
])
def test_a_number_in_the_wrong_unit_is_refused_naming_the_likely_mistake(kwargs, says):
    with pytest.raises(InvalidInputError, match="^" + re.escape(says)):
        resolve_site(**kwargs)
    with pytest.raises(InvalidInputError, match="^" + re.escape(says)):  # every adapter builds a RunSession
        RunSession(**kwargs, meter=FixedMeter())


@pytest.mark.parametrize(("args", "says"), [
    (["--intensity", "400"], "looks like g CO2e/kWh; pass 0.4"),
    (["--intensity", "0.4", "--watts", "350000"], "watts must be watts per chip, at most 3000"),
    (["--intensity", "0.4", "--pue", "150"], "a percentage? pass 1.5"),
])
def test_the_cli_refuses_the_same_units(capsys, args, says):
    err = exit_2(["estimate", "--chips", "8", "--hours", "10", "--watts", "300", *args], capsys)
    assert says in err


# ------------------------------------------------------------------------------------------- names
def test_an_ambiguous_chip_lists_its_candidates():
    for name in ("A100", "h100", "nvidia-h100"):
        with pytest.raises(InvalidInputError, match=r"is ambiguous: .* or .*; pass one of them"):
            get_chip(name)
    with pytest.raises(InvalidInputError, match="'A100' is ambiguous: a100-40gb or a100-80gb"):
        RunSession(intensity=0.4, chip="A100", meter=FixedMeter())
    assert get_chip("A100-80GB").name == "a100-80gb"


def test_an_alias_is_said_once_with_what_it_became(capsys, monkeypatch):
    monkeypatch.setattr(tables, "_ANNOUNCED", set())
    for _ in range(2):
        assert get_region("france").name == "fr"
        assert get_chip("tesla-v100").name == "v100"
        assert get_region("fr").name == "fr"  # a canonical name: nothing to say
    err = capsys.readouterr().err
    assert err == ("carbon-callbacks: region 'france' is 'fr' (France) in the regions table\n"
                   "carbon-callbacks: chip 'tesla-v100' is 'v100' in the chips table\n")


def test_sources_print_no_empty_year():
    site = resolve_site(region="us-average")
    assert site.gross_source.startswith("table:regions/us-average https://") and "()" not in site.gross_source


# ------------------------------------------------------------------------------------------- the card agrees
def test_parameters_and_the_share_trained_come_from_one_count(tmp_path):
    session = RunSession(intensity=0.4, meter=FixedMeter(), output_dir=tmp_path)
    session.start(info={"params_total": 88_512}, trainable=(2_048, 86_464))
    with contextlib.redirect_stdout(io.StringIO()):
        summary = session.finish()
    info = summary["info"]
    assert info["params_total"] == 86_464 and info["params_trainable"] == 2_048
    assert math.isclose(info["percent_trainable"], 100 * 2_048 / 86_464)
    assert read_run(tmp_path)[0]["info"]["params_total"] == 86_464
