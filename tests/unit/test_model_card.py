"""`carbon-callbacks report RUN_DIR --model-card README.md`: the co2_eq_emissions block in a Hugging Face card."""

from __future__ import annotations

import contextlib
import io

import pytest

from carbon_callbacks import RunSession, StepFlops
from carbon_callbacks._reports.model_card import write_model_card, yaml_float
from carbon_callbacks.cli import main
from carbon_callbacks.meters import ReplayMeter

CARD = """---
language: en
license: apache-2.0
co2_eq_emissions:
  emissions: 1.0
  source: an old tool

tags:
- carbon
# a comment the author wrote
---

# My model

Body text, kept as it was.
"""


def run_dir(tmp_path, joules=0.05, **kwargs):
    """A finished run of 2 steps on a V100 in France (0.05 J: a tiny run, so its emissions are far under 1e-4 g)."""
    path = tmp_path / "run"
    session = RunSession(region="fr", pue=1.1, chip="v100", meter=ReplayMeter(energy_j=joules, seconds=1.0),
                         output_dir=path, log_every_n_steps=2, **kwargs)
    session.start()
    for _ in range(2):
        session.step_end(flops=StepFlops(1e9, 1e9, "given", 10.0))
    with contextlib.redirect_stdout(io.StringIO()):
        return path, session.finish()


def cli(*args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(args)) == 0
    return out.getvalue()


@pytest.mark.parametrize(("value", "text"), [(2e-05, "2.0e-05"), (1e22, "1.0e+22"), (3.0, "3.0"), (0.125, "0.125")])
def test_every_number_is_a_yaml_float(value, text):
    assert yaml_float(value) == text


def test_the_block_replaces_the_old_one_when_asked_and_keeps_every_other_line(tmp_path):
    path, summary = run_dir(tmp_path, training_type="fine-tuning")
    card = tmp_path / "README.md"
    card.write_text(CARD)
    assert "replaced co2_eq_emissions" in cli("report", str(path), "--model-card", str(card), "--replace")
    text = card.read_text()
    head, body = text.split("---\n")[1], text.split("---\n", 2)[2]
    assert body == CARD.split("---\n", 2)[2]
    assert head.startswith("language: en\nlicense: apache-2.0\nco2_eq_emissions:\n  emissions: ")
    assert "an old tool" not in head and "\n\ntags:\n- carbon\n# a comment the author wrote\n" in head
    assert '  training_type: "fine-tuning"\n' in head and '  geographical_location: "France"\n' in head


def test_a_card_without_a_header_gets_one(tmp_path):
    path, _ = run_dir(tmp_path)
    card = tmp_path / "README.md"
    card.write_text("# Just a body\n")
    cli("report", str(path), "--model-card", str(card), "--training-type", "pre-training", "--location", "Paris")
    text = card.read_text()
    assert text.startswith("---\nco2_eq_emissions:\n") and text.endswith("---\n# Just a body\n")
    assert '  geographical_location: "Paris"' in text


def test_the_card_reads_back_with_huggingface_hub_in_grams(tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    path, summary = run_dir(tmp_path, training_type="fine-tuning")
    card = tmp_path / "README.md"
    card.write_text(CARD)
    cli("report", str(path), "--model-card", str(card), "--replace")
    data = hub.ModelCard.load(card).data
    emissions = data.co2_eq_emissions
    assert isinstance(emissions["emissions"], float) and emissions["emissions"] < 1e-4  # a float, not "2e-05"
    assert emissions["emissions"] == pytest.approx(summary["gross_co2e_kg"] * 1000, rel=1e-5)
    assert emissions["training_type"] == "fine-tuning" and emissions["geographical_location"] == "France"
    assert emissions["hardware_used"] == "1 x v100"
    assert data.language == "en" and data.tags == ["carbon"]
    new = tmp_path / "NEW.md"
    write_model_card(new, {"emissions": 2e-05, "source": "s"})
    assert hub.ModelCard.load(new).data.co2_eq_emissions == {"emissions": 2e-05, "source": "s"}


def failing(*args, capsys) -> str:
    """Runs the CLI, which must exit 2 with an error and no traceback; returns what it printed on stderr."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err
    return err


def test_a_header_that_is_not_yaml_is_refused_and_the_card_is_unchanged(tmp_path, capsys):
    path, _ = run_dir(tmp_path)
    card = tmp_path / "README.md"
    card.write_bytes(b"---\nlicense: mit\ntags: [a, b\n---\n# Body\n")
    before = card.read_bytes()
    err = failing("report", str(path), "--model-card", str(card), capsys=capsys)
    assert "the YAML header is not valid at line 4, column 1" in err and "the card is unchanged" in err
    assert card.read_bytes() == before


def test_an_existing_block_is_kept_unless_replaced_or_added_to(tmp_path, capsys):
    path, _ = run_dir(tmp_path)
    card = tmp_path / "README.md"
    card.write_text(CARD)
    err = failing("report", str(path), "--model-card", str(card), capsys=capsys)
    assert "already has a co2_eq_emissions block; pass --replace" in err
    assert "old:\nco2_eq_emissions:\n  emissions: 1.0\n  source: an old tool\nnew:\nco2_eq_emissions:\n" in err
    assert card.read_text() == CARD


def test_added_runs_keep_every_part_and_sum_in_a_card_the_hub_loads(tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    pretrain = "---\nlicense: mit\nco2_eq_emissions:\n  emissions: 500.0\n  training_type: \"pre-training\"\n" \
        "  hardware_used: \"64 x tpu-v3\"\n---\nbody\n"
    card = tmp_path / "README.md"
    card.write_text(pretrain)
    path, summary = run_dir(tmp_path, joules=3.6e6, training_type="fine-tuning")  # 1 kWh x PUE 1.1 in France
    assert "combined co2_eq_emissions" in cli("report", str(path), "--model-card", str(card), "--add")
    data = hub.ModelCard.load(card).data.to_dict()
    fine = summary["gross_co2e_kg"] * 1000
    assert data["co2_eq_emissions"]["emissions"] == pytest.approx(500.0 + fine, rel=1e-5)
    assert data["co2_eq_emissions"]["training_type"] == "pre-training + fine-tuning"
    parts = data["co2_eq_emissions_parts"]
    assert parts[0] == {"emissions": 500.0, "training_type": "pre-training", "hardware_used": "64 x tpu-v3"}
    assert parts[1]["emissions"] == pytest.approx(fine, rel=1e-5) and parts[1]["training_type"] == "fine-tuning"
    assert data["license"] == "mit" and card.read_text().endswith("---\nbody\n")


def test_crlf_line_endings_and_a_byte_order_mark_are_kept(tmp_path):
    path, _ = run_dir(tmp_path)
    card = tmp_path / "README.md"
    original = "\ufeff---\r\nlicense: mit\r\ntags:\r\n- a\r\n---\r\n# Title\r\n\r\nBody\r\n"
    card.write_bytes(original.encode("utf-8"))
    cli("report", str(path), "--model-card", str(card))
    written = card.read_bytes().decode("utf-8")
    assert written.startswith("\ufeff---\r\nlicense: mit\r\ntags:\r\n- a\r\nco2_eq_emissions:\r\n")
    assert written.endswith("---\r\n# Title\r\n\r\nBody\r\n")
    assert "\n" not in written.replace("\r\n", "")  # every line ends as the card's did
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "run"]  # written through a rename, no leftover


def test_a_card_that_is_a_link_is_written_where_it_points_and_said_so(tmp_path):
    path, _ = run_dir(tmp_path)
    (tmp_path / "cards").mkdir()
    target = tmp_path / "cards" / "real.md"
    target.write_text("# Body\n")
    link = tmp_path / "README.md"
    link.symlink_to(target)
    out = cli("report", str(path), "--model-card", str(link))
    assert f"{link} is a symbolic link: the card written is {target}" in out
    assert link.is_symlink() and target.read_text().startswith("---\nco2_eq_emissions:")


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing" / "README.md", "does not exist"),
    (lambda d: (d / "folder").mkdir() or d / "folder", "is a folder"),
    (lambda d: (d / "model.bin").write_bytes(bytes(range(256))) and d / "model.bin", "not a UTF-8 text file"),
])
def test_a_bad_path_is_one_line_and_exit_2(tmp_path, capsys, make, message):
    path, _ = run_dir(tmp_path)
    err = failing("report", str(path), "--model-card", str(make(tmp_path)), capsys=capsys)
    assert message in err and len(err.strip().splitlines()) == 1
