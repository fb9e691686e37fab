"""Sharded strategies: the callback never steps outside the engine and adds no collective of its own.

Lightning's FSDP and DeepSpeed strategies refuse a CPU, so their hook paths are driven directly with the strategy
faked at its boundary: a real `FSDPStrategy` whose device and `reduce` are the CPU's, and a DeepSpeed strategy
(DeepSpeed is not installed here) known by its class name, as the callback knows it. The module is a real Hugging
Face Llama built from its config, trained by nothing: only the hooks run.
"""

from __future__ import annotations

import types

import pytest

transformers = pytest.importorskip("transformers")
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from carbon_callbacks import TransformerConfig, transformer_flops  # noqa: E402
from carbon_callbacks._warnings import CarbonCallbacksWarning  # noqa: E402
from carbon_callbacks.flops import _torch_step  # noqa: E402
from carbon_callbacks.lightning import CarbonCallback  # noqa: E402

from fakes import FixedMeter  # noqa: E402

CONFIG = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)


class CpuFSDP(pl.strategies.FSDPStrategy):
    """FSDP at its boundary: the CPU as its device, and a `reduce` that records the call and sums two ranks."""

    def __init__(self):
        super().__init__()
        self.reduced = []

    @property
    def root_device(self):
        return torch.device("cpu")

    def reduce(self, tensor, group=None, reduce_op="mean"):
        self.reduced.append(reduce_op)
        return tensor * 2


class DeepSpeedStrategy(CpuFSDP):
    """Stands in for Lightning's DeepSpeedStrategy (not installable here): the callback knows it by class name."""


class Lit(pl.LightningModule):
    def __init__(self, config=None):
        super().__init__()
        self.model = transformers.LlamaForCausalLM(CONFIG)
        if config is None:
            del self.model.config  # the step's FLOPs cannot come from a config

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss


def trainer(strategy, tmp_path):
    return types.SimpleNamespace(
        strategy=strategy, global_step=0, estimated_stepping_batches=4, log_every_n_steps=2, world_size=2,
        global_rank=0, local_rank=0, default_root_dir=str(tmp_path), logger=None, loggers=[],
    )


def drive(callback, trainer, module, steps=4):
    callback.on_train_start(trainer, module)
    batch = torch.zeros(2, 16, dtype=torch.long)
    for i in range(steps):
        trainer.global_step = i + 1
        callback.on_train_batch_end(trainer, module, torch.tensor(1.0), batch, i)
    callback.on_train_end(trainer, module)
    return callback.summary


@pytest.fixture
def no_trace(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a sharded step must never be traced")

    monkeypatch.setattr(_torch_step, "count_step", refuse)


@pytest.mark.parametrize("strategy", [CpuFSDP, DeepSpeedStrategy])
def test_the_model_config_gives_the_flops_and_the_strategy_sums_the_ranks(tmp_path, no_trace, strategy):
    fake = strategy()
    summary = drive(CarbonCallback(intensity=0.5, meter=FixedMeter(), output_dir=tmp_path), trainer(fake, tmp_path),
                    Lit(CONFIG))
    per_step = transformer_flops(TransformerConfig.from_hf(CONFIG, seq_len=16, batch_size=2)).model_flops
    assert summary["total_model_flops"] == 2 * 4 * per_step  # both ranks' steps, summed by the strategy
    assert fake.reduced == ["sum"] * 3  # two intervals and the end: the strategy's own collective, nothing else
    assert summary["world_size"] == 2


def test_without_a_config_it_warns_once_and_counts_nothing(tmp_path, no_trace):
    with pytest.warns(CarbonCallbacksWarning, match="under DeepSpeedStrategy the step is sharded") as caught:
        summary = drive(CarbonCallback(intensity=0.5, meter=FixedMeter(), output_dir=tmp_path),
                        trainer(DeepSpeedStrategy(), tmp_path), Lit())
    assert len([w for w in caught if "sharded" in str(w.message)]) == 1
    assert summary["total_model_flops"] is None and summary["steps"] == 4


def test_flops_per_batch_is_taken_under_fsdp(tmp_path, no_trace):
    module = Lit()
    module.flops_per_batch = 1e9
    summary = drive(CarbonCallback(intensity=0.5, meter=FixedMeter(), output_dir=tmp_path),
                    trainer(CpuFSDP(), tmp_path), module)
    assert summary["total_model_flops"] == 2 * 4 * 1e9
