"""The fine-tuning recipes people run through TRL's real trainers, with `CarbonCallback`: SFT with LoRA and
gradient checkpointing, DPO with a LoRA reference (the adapters off) and with a reference model of its own, and a
tiny GRPO that generates inside its steps. Tiny Llamas built from a config and a word-level tokenizer made here:
nothing is downloaded.

Every figure is checked against an outside count, torch's `FlopCounterMode` (with the library's formulas for what
it misses) over what really runs: hardware FLOPs over the padded passes as they ran, recompute included; model
FLOPs over each sequence's pass alone on its real tokens, without checkpointing, and each reference forward once,
without a backward (docs/flops.md "Model and hardware FLOPs").
"""

from __future__ import annotations

import contextlib
import copy
import functools

import pytest

trl = pytest.importorskip("trl")
peft = pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")
import torch  # noqa: E402
from _tiny import COMMON, LORA, llama, model, tokenizer, words  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from carbon_callbacks import read_run  # noqa: E402
from carbon_callbacks._compat.torch import is_fake  # noqa: E402
from carbon_callbacks.flops import TransformerConfig, transformer_flops  # noqa: E402
from carbon_callbacks.flops._torch import formulas  # noqa: E402
from carbon_callbacks.flops.analytic import generation_flops  # noqa: E402
from carbon_callbacks.meters import ReplayMeter  # noqa: E402
from carbon_callbacks.transformers import CarbonCallback  # noqa: E402

torch.set_num_threads(1)  # tiny models on a shared 2-core machine
pytestmark = pytest.mark.slow


def callback() -> CarbonCallback:
    return CarbonCallback(intensity=0.5, pue=1.1, meter=ReplayMeter(energy_j=10.0, seconds=1.0))


@contextlib.contextmanager
def recording(*modules):
    """The real forwards of `modules` inside the block: (module, gradients on, its kwargs); the callback's counts
    run on meta or fake tensors and are left out, and so are the test's own recounts after the block."""
    seen: list[tuple] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and not (is_fake(ids) or ids.is_meta):
            seen.append((module, torch.is_grad_enabled(), dict(kwargs)))

    handles = [module.register_forward_pre_hook(hook, with_kwargs=True) for module in modules]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def flops(step) -> int:
    """FlopCounterMode over `step()`, run for real."""
    with FlopCounterMode(display=False, custom_mapping=formulas()) as counter:
        step()
    return counter.get_total_flops()


def as_ran(module, trains: bool, kwargs) -> int:
    """The pass as it ran: forward and the loss's backward, or (no gradients) the forward alone."""
    if not trains:
        with torch.no_grad():
            return flops(lambda: module(**kwargs))
    count = flops(lambda: module(**kwargs).loss.backward())
    module.zero_grad(set_to_none=True)
    return count


def each_sequence(kwargs):
    """Each sequence of a padded batch alone, on its real tokens (left or right padded), or of a packed one (no
    mask: each sequence starts at position id 0)."""
    if "attention_mask" in kwargs:
        mask = kwargs["attention_mask"]
        spans = [(row, int(real[0]), int(real[-1]) + 1) for row in range(mask.shape[0])
                 if len(real := mask[row].nonzero().flatten())]
    else:
        starts = (kwargs["position_ids"][0] == 0).nonzero().flatten().tolist()
        spans = [(0, a, b) for a, b in zip(starts, [*starts[1:], kwargs["position_ids"].shape[1]])]
    for row, start, stop in spans:
        yield {k: v[row:row + 1, start:stop] if isinstance(v, torch.Tensor) and v.dim() == 2 else v
               for k, v in kwargs.items() if not k.startswith(("cu_seq_lens", "max_length"))}


def model_flops(module, trains: bool, kwargs) -> int:
    """The model FLOPs of a pass by their definition: each sequence's pass alone on its real tokens, and only the
    gradients the trained weights need (not the embedding output's that checkpointing asks for)."""
    trained = [p for p in module.parameters() if p.requires_grad]

    def step(alone):
        torch.autograd.grad(module(**alone).loss, trained)

    if not trains:
        return sum(as_ran(module, False, alone) for alone in each_sequence(kwargs))
    return sum(flops(functools.partial(step, alone)) for alone in each_sequence(kwargs))


# ---------------------------------------------------------------------------------------------------- SFT
@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """SFT with LoRA and gradient checkpointing (TRL's default), texts of 5 to 29 words: dynamic padding."""
    generator = torch.Generator().manual_seed(0)
    data = datasets.Dataset.from_dict({"text": [words(generator, 5, 30) for _ in range(16)]})
    carbon = callback()
    args = trl.SFTConfig(output_dir=str(tmp_path_factory.mktemp("sft")), max_steps=4, logging_steps=2,
                         gradient_checkpointing=True, max_length=64, **COMMON)
    trainer = trl.SFTTrainer(model=model(), args=args, train_dataset=data, processing_class=tokenizer(),
                             peft_config=peft.LoraConfig(**LORA), callbacks=[carbon])
    with recording(trainer.model) as seen:
        trainer.train()
    summary, records = read_run(carbon.session.run_dir)
    return {"trainer": trainer, "summary": summary, "records": records, "seen": seen}


def test_sft_counts_real_tokens_and_padding(sft):
    summary, seen = sft["summary"], sft["seen"]
    masks = [kwargs["attention_mask"] for _, trains, kwargs in seen if trains]
    assert len(masks) == 4
    assert summary["tokens"] == sum(int(m.sum()) for m in masks)
    assert summary["padding_tokens"] == sum(m.numel() - int(m.sum()) for m in masks) > 0


def test_sft_hardware_flops_are_what_ran_and_model_flops_the_model_math(sft):
    trainer, summary, seen = sft["trainer"], sft["summary"], sft["seen"]
    policy = trainer.model
    assert policy.is_gradient_checkpointing
    ran = sum(as_ran(policy, True, kwargs) for _, _, kwargs in seen)  # recompute and padding included
    assert summary["total_hardware_flops"] == ran
    policy.gradient_checkpointing_disable()  # the model's math: no recompute
    assert summary["total_model_flops"] == sum(model_flops(policy, True, kwargs) for _, _, kwargs in seen)
    assert summary["total_model_flops"] < 0.7 * ran
    info = summary["info"]
    assert "of parameters train" in info["flops_method"] and info["model_flops_padding"].startswith("excluded")
    assert "recomputes" in info["activation_checkpointing"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_packed_counts_each_packed_sequence(tmp_path, lora):
    """Padding-free packing: sequences end to end in one row, delimited by position ids. Model FLOPs are each
    sequence's; a full fine-tune's come from the config, a LoRA one's from the sequence traced alone."""
    generator = torch.Generator().manual_seed(4)
    data = datasets.Dataset.from_dict({"text": [words(generator, 5, 30) for _ in range(16)]})
    carbon = callback()
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=2, logging_steps=1, packing=True, max_length=64,
                         gradient_checkpointing=False, **COMMON)
    trainer = trl.SFTTrainer(model=model(), args=args, train_dataset=data, processing_class=tokenizer(),
                             peft_config=peft.LoraConfig(**LORA) if lora else None, callbacks=[carbon])
    with recording(trainer.model) as seen:
        trainer.train()
    summary, _ = read_run(carbon.session.run_dir)
    packed = [kwargs for _, trains, kwargs in seen if trains]
    assert len(packed) == 2 and all("attention_mask" not in k for k in packed)
    lengths = [a["input_ids"].shape[1] for k in packed for a in each_sequence(k)]
    assert len(lengths) > 2 * 4  # several sequences per packed row
    assert summary["tokens"] == sum(k["input_ids"].numel() for k in packed) == sum(lengths)
    assert summary["total_hardware_flops"] == sum(as_ran(trainer.model, True, k) for k in packed)
    if lora:
        expected = sum(model_flops(trainer.model, True, k) for k in packed)
    else:
        expected = sum(transformer_flops(TransformerConfig.from_hf(llama(), batch_size=1, seq_len=n)).model_flops
                       for n in lengths)
    assert summary["total_model_flops"] == expected < summary["total_hardware_flops"]


# ---------------------------------------------------------------------------------------------------- DPO
def preferences(count: int):
    generator = torch.Generator().manual_seed(1)
    return datasets.Dataset.from_list([{"prompt": words(generator, 3, 12), "chosen": words(generator, 2, 10),
                                        "rejected": words(generator, 2, 10)} for _ in range(count)])


def dpo_run(tmp_path, **kwargs):
    carbon = callback()
    args = trl.DPOConfig(output_dir=str(tmp_path), max_steps=2, logging_steps=1, max_length=64,
                         gradient_checkpointing=False, **COMMON)
    trainer = trl.DPOTrainer(model=model(), args=args, train_dataset=preferences(8), processing_class=tokenizer(),
                             callbacks=[carbon], **kwargs)
    modules = [trainer.model] + ([trainer.ref_model] if trainer.ref_model is not None else [])
    with recording(*modules) as seen:
        trainer.train()
    summary, _ = read_run(carbon.session.run_dir)
    return trainer, summary, seen


def test_dpo_with_a_lora_reference_counts_each_pass_as_what_it_is(tmp_path):
    trainer, summary, seen = dpo_run(tmp_path, peft_config=peft.LoraConfig(**LORA))
    policy = trainer.model
    train = [kwargs for _, trains, kwargs in seen if trains]
    reference = [kwargs for _, trains, kwargs in seen if not trains]  # the adapters off, no gradients
    assert len(train) == len(reference) == 2
    assert train[0]["input_ids"].shape[0] == 8  # chosen and rejected of 4 pairs, in one batch
    # Tokens: the policy's real tokens (chosen plus rejected), counted once; the reference pass adds none.
    assert summary["tokens"] == sum(int(k["attention_mask"].sum()) for k in train)
    with policy.disable_adapter():
        ref_ran = sum(as_ran(policy, False, k) for k in reference)
        ref_model = sum(model_flops(policy, False, k) for k in reference)
    assert summary["total_hardware_flops"] == sum(as_ran(policy, True, k) for k in train) + ref_ran
    assert summary["total_model_flops"] == sum(model_flops(policy, True, k) for k in train) + ref_model
    assert summary["info"]["trainer"] == "DPOTrainer"
    contents = summary["info"]["step_contents"].split("; ")
    assert sorted(contents) == ["1 x forward-only pass of the trained model (no gradients: a reference with its "
                                "adapters off, or scoring)", "1 x training pass (forward and backward) of the "
                                "trained model"]
    assert summary["info"]["flops_method_forward_only"].startswith("forward only")


def test_dpo_with_a_reference_model_counts_its_forward_once(tmp_path):
    policy = model()
    trainer, summary, seen = dpo_run(tmp_path, ref_model=copy.deepcopy(policy))
    train = [kwargs for module, trains, kwargs in seen if trains]
    reference = [kwargs for module, trains, kwargs in seen if module is trainer.ref_model]
    assert len(train) == len(reference) == 2
    assert summary["tokens"] == sum(int(k["attention_mask"].sum()) for k in train)
    assert "1 x forward-only pass of the reference model" in summary["info"]["step_contents"]
    ref = trainer.ref_model
    assert summary["total_hardware_flops"] == (sum(as_ran(trainer.model, True, k) for k in train)
                                               + sum(as_ran(ref, False, k) for k in reference))
    # All weights train: the policy's model FLOPs come from its config, each sequence on its real tokens.
    config = llama()
    analytic = sum(transformer_flops(TransformerConfig.from_hf(config, batch_size=1, seq_len=n)).model_flops
                   for k in train for n in k["attention_mask"].sum(1).tolist())
    assert summary["total_model_flops"] == analytic + sum(model_flops(ref, False, k) for k in reference)


# ---------------------------------------------------------------------------------------------------- GRPO
def test_grpo_counts_generation_on_its_own(tmp_path):
    generator = torch.Generator().manual_seed(2)
    prompts = datasets.Dataset.from_list([{"prompt": words(generator, 3, 9)} for _ in range(8)])
    carbon = CarbonCallback(intensity=0.5, pue=1.1, chip="h100-sxm", meter=ReplayMeter(energy_j=10.0, seconds=1.0))
    args = trl.GRPOConfig(output_dir=str(tmp_path), max_steps=2, num_generations=2, max_completion_length=6,
                          logging_steps=1, beta=0.0, **COMMON)
    trainer = trl.GRPOTrainer(model=model(), args=args, train_dataset=prompts, processing_class=tokenizer(),
                              reward_funcs=lambda completions, **kw: [float(len(c)) for c in completions],
                              callbacks=[carbon])
    calls = []

    def see(module, args, kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if cache is not None and not torch.is_grad_enabled() and not is_fake(kwargs["input_ids"]) \
                and not kwargs["input_ids"].is_meta:
            calls.append((kwargs["input_ids"].shape, cache.get_seq_length(), kwargs.get("logits_to_keep")))

    generating = trainer.model.register_forward_pre_hook(see, with_kwargs=True)
    with recording(trainer.model) as seen:
        trainer.train()
    generating.remove()
    summary, _ = read_run(carbon.session.run_dir)
    assert calls and summary["generation_tokens"] == sum(shape[0] for shape, _, _ in calls)  # one per sequence
    shape = TransformerConfig.from_hf(llama(), seq_len=1)
    generated = sum(generation_flops(shape, batch=s[0], new_tokens=s[1], context=past + s[1], logits_tokens=keep)
                    for s, past, keep in calls)  # equal to what generate runs: test_model_flops.py
    assert summary["total_generation_flops"] == generated
    train = [kwargs for _, trains, kwargs in seen if trains and not _generating(kwargs)]
    assert summary["tokens"] == sum(int(k["attention_mask"].sum()) for k in train)
    ran = sum(as_ran(trainer.model, True, k) for k in train) + sum(
        as_ran(trainer.model, False, k) for _, trains, k in seen if not trains and not _generating(k))
    assert summary["total_hardware_flops"] == ran + generated  # everything that ran, generation included
    assert summary["total_model_flops"] < summary["total_hardware_flops"] - generated  # no padding, no generation
    assert "generation" in summary["mfu_covers"]
    assert "generation forward (KV cache, no gradients)" in summary["info"]["step_contents"]


def _generating(kwargs) -> bool:
    return kwargs.get("past_key_values", kwargs.get("cache")) is not None


def test_generation_in_a_vllm_server_is_said_to_be_uncounted():
    from types import SimpleNamespace

    from carbon_callbacks._compat.transformers import generation_elsewhere

    server = SimpleNamespace(args=SimpleNamespace(use_vllm=True, vllm_mode="server"))
    assert "separate vLLM server" in generation_elsewhere(server) and "not counted" in generation_elsewhere(server)
    assert generation_elsewhere(SimpleNamespace(args=SimpleNamespace(use_vllm=False))) is None
