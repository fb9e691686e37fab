"""Every adapter refuses a number in the wrong unit at construction, and Lightning's run folder stays inside its
logger's folder whatever the logger is named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from carbon_callbacks import InvalidInputError, read_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lightning"))
pytestmark = pytest.mark.slow


def adapters():
    from carbon_callbacks.flax import track
    from carbon_callbacks.lightning import CarbonCallback as Lightning
    from carbon_callbacks.transformers import CarbonCallback as Trainer

    return {"lightning": Lightning, "trainer": Trainer, "flax": lambda **kw: track(lambda x: x, **kw)}


@pytest.mark.parametrize("name", ["lightning", "trainer", "flax"])
def test_an_intensity_in_g_per_kwh_is_refused_by_every_adapter(name):
    with pytest.raises(InvalidInputError, match="looks like g CO2e/kWh; pass 0.4"):
        adapters()[name](intensity=400)


@pytest.mark.parametrize(("logger_name", "version"), [("../../escape", "v1"), ("csv", "../../../escape"),
                                                      ("/tmp/absolute", 0)])
def test_a_logger_name_that_leads_out_of_its_folder_is_reduced_to_a_safe_name(tmp_path, logger_name, version):
    import pytorch_lightning as pl

    from carbon_callbacks.lightning import CarbonCallback

    from lightning_support import SITE, FixedMeter, LitGPT, loader

    callback = CarbonCallback(**SITE, meter=FixedMeter())
    logs = tmp_path / "logs"
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=2, log_every_n_steps=1, accelerator="cpu", devices=1,
                         logger=pl.loggers.CSVLogger(logs, name=logger_name, version=version),
                         callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.fit(LitGPT(), loader())
    run_dir = callback.session.run_dir
    assert logs.resolve() in run_dir.parents, run_dir
    assert read_run(run_dir)[0]["steps"] == 2
