"""Hugging Face models nobody here wrote, built from configs (no download), trained through the Lightning callback.

The module carries the model's `PretrainedConfig` (`module.model.config`), so model FLOPs, percent activated and
the split by layer kind come from `TransformerConfig.from_hf`; hardware FLOPs come from the trace. Batches come
with a new sequence length most steps (dynamic padding), as Hugging Face collators produce them.
"""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")
pl = pytest.importorskip("pytorch_lightning")
import torch  # noqa: E402

from carbon_callbacks import TransformerConfig, read_run  # noqa: E402
from carbon_callbacks.flops import transformer_flops  # noqa: E402
from carbon_callbacks.lightning import CarbonCallback  # noqa: E402
from carbon_callbacks.meters import ReplayMeter  # noqa: E402

BATCH = 4
LENGTHS = [12, 40, 17, 33, 64, 25, 50, 9]


def gpt2():
    return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64)


def mixtral(experts_per_token: int = 2):
    return transformers.MixtralConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=96,
                                      num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                      num_experts_per_tok=experts_per_token, vocab_size=128,
                                      max_position_embeddings=64)


class LitHF(pl.LightningModule):
    def __init__(self, config) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = transformers.AutoModelForCausalLM.from_config(config)

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(tmp_path, config):
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 128, (BATCH, n), generator=generator) for n in LENGTHS]
    callback = CarbonCallback(intensity=0.5, pue=1.2, output_dir=tmp_path, log_every_n_steps=1,
                              meter=ReplayMeter(energy_j=10.0, seconds=1.0, component="cpu"))
    trainer = pl.Trainer(max_steps=len(LENGTHS), accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(LitHF(config), torch.utils.data.DataLoader(batches, batch_size=None))
    summary, records = read_run(tmp_path)
    return summary, records


def analytic(config, length, batch=BATCH):
    shape = TransformerConfig.from_hf(config, seq_len=length, batch_size=batch)
    return transformer_flops(shape)


def analytic_real_tokens(config, batch) -> int:
    """The config's model FLOPs of each sequence of the batch on its real tokens, summed."""
    return sum(analytic(config, n, batch=1).model_flops for n in batch["attention_mask"].sum(1).tolist())


@pytest.mark.slow
@pytest.mark.parametrize("make", [gpt2, mixtral], ids=["gpt2", "mixtral"])
def test_model_flops_of_every_length_are_the_analytic_count(tmp_path, make, capsys):
    config = make()
    summary, records = fit(tmp_path, config)
    assert [r["model_flops"] for r in records] == [analytic(config, n).model_flops for n in LENGTHS]
    assert summary["tokens"] == BATCH * sum(LENGTHS)
    given = TransformerConfig.from_hf(config, seq_len=1)
    assert summary["info"]["params_total"] == transformer_flops(given).params_total
    assert summary["info"]["params_total"] == sum(p.numel() for p in LitHF(config).parameters())
    assert summary["info"]["flops_method"].startswith("model: analytic")
    report = capsys.readouterr().out  # the dense/sparse split of the energy, for the sparse model
    assert ("energy by layer kind" in report and "sparse (MoE)" in report) == (make is mixtral)


@pytest.mark.slow
def test_gpt2_traced_hardware_flops_equal_the_analytic_count_at_every_length(tmp_path):
    config = gpt2()
    _, records = fit(tmp_path, config)
    for record, n in zip(records, LENGTHS):
        assert record["hardware_flops"] == pytest.approx(analytic(config, n).hardware_flops, rel=1e-3)


@pytest.mark.slow
def test_mixtral_counts_routed_experts_only(tmp_path):
    config = mixtral()
    summary, records = fit(tmp_path, config)
    expected = analytic(config, LENGTHS[0])
    assert summary["info"]["percent_active"] == pytest.approx(expected.percent_active)
    assert summary["info"]["percent_active"] < 100
    # 2 of 4 experts per token: the experts' model FLOPs are half of what computing every expert would take.
    every_expert = analytic(mixtral(experts_per_token=4), LENGTHS[0])
    assert expected.breakdown["moe_experts"] * 2 == every_expert.breakdown["moe_experts"]
    assert records[0]["model_flops"] == expected.model_flops


def llama():
    return transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)


class LitMasked(LitHF):
    """Batches as a Hugging Face collator makes them: a dict with a padded `attention_mask`."""

    def training_step(self, batch, batch_idx):
        return self.model(**batch, labels=batch["input_ids"]).loss


def frozen(kind: str):
    """A Llama fine-tuned with LoRA (peft), or with its backbone frozen but for the last layer."""
    module = LitMasked(llama())
    if kind == "lora":
        peft = pytest.importorskip("peft")
        module.model = peft.get_peft_model(module.model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    else:
        for name, parameter in module.model.named_parameters():
            parameter.requires_grad = name.startswith(("model.layers.1.", "lm_head"))
    return module


def masked_batches(lengths=(16, 16, 24)):
    generator = torch.Generator().manual_seed(1)
    batches = []
    for n in lengths:
        ids = torch.randint(0, 128, (BATCH, n), generator=generator)
        mask = torch.ones(BATCH, n, dtype=torch.long)
        mask[1:, n - 5:] = 0  # three rows padded at the end
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def real_step_flops(module, batch):
    """FlopCounterMode (with the library's formulas) over the step that really runs: forward, loss, backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from carbon_callbacks.flops._torch import formulas

    with FlopCounterMode(display=False, custom_mapping=formulas()) as counter:
        module.training_step(batch, 0).backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def real_tokens_flops(module, batch):
    """The model FLOPs of a batch by their definition: the real step of each sequence alone, on its real tokens."""
    total = 0
    for row, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        alone = {key: value[row:row + 1, :n] for key, value in batch.items()}
        total += real_step_flops(module, alone)
    return total


def fit_module(tmp_path, module, batches, **trainer_kwargs):
    callback = CarbonCallback(intensity=0.5, pue=1.2, output_dir=tmp_path, log_every_n_steps=1,
                              meter=ReplayMeter(energy_j=10.0, seconds=1.0, component="cpu"))
    trainer = pl.Trainer(max_steps=len(batches), accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path, callbacks=[callback], **trainer_kwargs)
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    return read_run(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "backbone"])
def test_frozen_weights_give_the_flops_of_the_step_that_runs(tmp_path, kind):
    module = frozen(kind)
    batches = masked_batches()
    ran = [real_step_flops(module, b) for b in batches]
    model = [real_tokens_flops(module, b) for b in batches]  # padding is not the model's math
    full = analytic(llama(), 16).model_flops
    summary, records = fit_module(tmp_path, module, batches)
    assert [r["hardware_flops"] for r in records] == ran
    assert [r["model_flops"] for r in records] == model
    assert records[0]["model_flops"] < 0.8 * full  # the model config's count would overstate it
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert summary["info"]["params_trainable"] == trainable
    total = sum(p.numel() for p in module.parameters())  # the adapters' included
    assert summary["info"]["percent_trainable"] == pytest.approx(100 * trainable / total)
    assert "of parameters train" in summary["info"]["flops_method"]


@pytest.mark.slow
def test_a_masked_batch_counts_its_real_tokens_and_reports_the_padding(tmp_path):
    batches = masked_batches()
    summary, records = fit_module(tmp_path, LitMasked(llama()), batches)
    real = [int(b["attention_mask"].sum()) for b in batches]
    assert [r["tokens"] for r in records] == real
    assert [r["padding_tokens"] for r in records] == [b["input_ids"].numel() - n for b, n in zip(batches, real)]
    assert summary["tokens"] == sum(real) and summary["padding_tokens"] == 3 * 5 * 3
    assert summary["energy_j_per_token"] == pytest.approx(summary["energy_kwh"] * 3.6e6 / sum(real))


@pytest.mark.slow
@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                    reason="torch's Dynamo warns about transformers 4.x's lru_cache'd loss function in the compiled "
                    "model itself, with or without the callback, and this test makes every warning an error")
def test_a_compiled_model_keeps_its_graphs_and_nothing_warns(tmp_path):
    import warnings

    import torch._dynamo

    compiled = []

    def backend(graph, example_inputs):
        compiled.append(graph)
        return graph.forward

    module = LitMasked(llama())
    module.model = torch.compile(module.model, backend=backend)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "global hooks on modules" in a compiled model
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        batches = masked_batches((16, 16, 16, 16))
        summary, records = fit_module(tmp_path, module, batches)
    assert len(compiled) == 1  # one graph for the one shape: counting never recompiled it
    assert summary["steps"] == 4 and records[0]["model_flops"] == analytic_real_tokens(llama(), batches[0])
    assert records[0]["hardware_flops"] == analytic(llama(), 16).hardware_flops
