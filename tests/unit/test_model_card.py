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


def test_the_block_replaces_the_old_one_and_keeps_every_other_line(tmp_path):
    path, summary = run_dir(tmp_path, training_type="fine-tuning")
    card = tmp_path / "README.md"
    card.write_text(CARD)
    cli("report", str(path), "--model-card", str(card))
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
    cli("report", str(path), "--model-card", str(card))
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
