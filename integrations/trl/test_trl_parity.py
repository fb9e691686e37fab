"""One model and one dataset through three recipes: TRL's `SFTTrainer` (its defaults: gradient checkpointing, the
fused LM head), the `Trainer` and a Lightning module. Model FLOPs (the model's math on each sequence's real tokens,
docs/flops.md) and tokens are properties of the data, not of the recipe: all three give the same figures, the model
config's count of every sequence, however the epoch was shuffled into padded batches.
"""

from __future__ import annotations

import pytest

trl = pytest.importorskip("trl")
pl = pytest.importorskip("pytorch_lightning")
datasets = pytest.importorskip("datasets")
import torch  # noqa: E402
import transformers  # noqa: E402
from _tiny import COMMON, llama, model, tokenizer, words  # noqa: E402

from carbon_callbacks import read_run  # noqa: E402
from carbon_callbacks.flops import TransformerConfig, transformer_flops  # noqa: E402
from carbon_callbacks.lightning import CarbonCallback as LightningCallback  # noqa: E402
from carbon_callbacks.meters import ReplayMeter  # noqa: E402
from carbon_callbacks.transformers import CarbonCallback  # noqa: E402

pytestmark = pytest.mark.slow
SEQUENCES, BATCH = 16, 4  # one epoch: every sequence once, in 4 steps


def meter() -> ReplayMeter:
    return ReplayMeter(energy_j=10.0, seconds=1.0)


class LitLlama(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = model()

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    generator = torch.Generator().manual_seed(3)
    texts = datasets.Dataset.from_dict({"text": [words(generator, 5, 30) for _ in range(SEQUENCES)]})
    carbon = CarbonCallback(intensity=0.5, pue=1.1, meter=meter())
    sft = trl.SFTTrainer(model=model(), train_dataset=texts, processing_class=tokenizer(), callbacks=[carbon],
                         args=trl.SFTConfig(output_dir=str(tmp_path_factory.mktemp("sft")), max_steps=4,
                                            max_length=64, **COMMON))
    sft.train()
    assert sft.model.is_gradient_checkpointing  # TRL's default
    ids = [list(row) for row in sft.train_dataset["input_ids"]]  # the same tokens (eos added) for the others
    collate = transformers.DataCollatorForLanguageModeling(tokenizer(), mlm=False)

    hf = CarbonCallback(intensity=0.5, pue=1.1, meter=meter())
    trainer = transformers.Trainer(
        model=model(), args=transformers.TrainingArguments(str(tmp_path_factory.mktemp("hf")), max_steps=4, **COMMON),
        train_dataset=datasets.Dataset.from_dict({"input_ids": ids}), data_collator=collate, callbacks=[hf])
    trainer.train()

    lit_dir = tmp_path_factory.mktemp("lightning")
    lit = LightningCallback(intensity=0.5, pue=1.1, output_dir=lit_dir, meter=meter())
    pl.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
               enable_model_summary=False, enable_checkpointing=False, default_root_dir=lit_dir, callbacks=[lit],
               ).fit(LitLlama(), torch.utils.data.DataLoader([{"input_ids": i} for i in ids], batch_size=BATCH,
                                                             collate_fn=collate))
    summaries = {name: read_run(callback.session.run_dir)[0]
                 for name, callback in (("sft", carbon), ("trainer", hf), ("lightning", lit))}
    return summaries, ids


def test_sft_the_trainer_and_lightning_give_the_same_model_flops_and_tokens(runs):
    summaries, ids = runs
    lengths = [len(i) for i in ids]
    analytic = sum(transformer_flops(TransformerConfig.from_hf(llama(), batch_size=1, seq_len=n)).model_flops
                   for n in lengths)
    assert {name: s["total_model_flops"] for name, s in summaries.items()} == dict.fromkeys(summaries, analytic)
    assert {name: s["tokens"] for name, s in summaries.items()} == dict.fromkeys(summaries, sum(lengths))
    # What ran differs: SFT recomputes its checkpointed forwards; each recipe pads its own batches.
    assert summaries["sft"]["total_hardware_flops"] > summaries["trainer"]["total_hardware_flops"] > analytic
