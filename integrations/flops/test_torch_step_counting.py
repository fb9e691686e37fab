"""`count_step`: a torch training step counted with fake tensors, against the same step run for real.

Every model here is built from a config (no download): a Lightning module's `training_step`, a Hugging Face GPT-2
and Llama, a LoRA fine-tune of the Llama through `peft`, a Llama frozen but for its last layer, `torch.compile`d
modules, bf16 autocast, and a custom op with no fake implementation (the real-step fallback). Each count must
equal `FlopCounterMode` (with the library's formulas) over the real step, and leave the real module, the RNG,
the warnings, the global module hooks and the compiled graphs as they were.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pl = pytest.importorskip("pytorch_lightning")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from carbon_callbacks import _compat  # noqa: E402
from carbon_callbacks._compat import torch as torch_compat  # noqa: E402
from carbon_callbacks.flops import (  # noqa: E402
    FakeCountError,
    TransformerConfig,
    _torch,
    count_step,
    trainable_fraction,
    transformer_flops,
)
from carbon_callbacks.flops._torch import formulas  # noqa: E402
from carbon_callbacks.flops._torch_step import METHOD_FAKE, METHOD_META  # noqa: E402

TRACED = (METHOD_META, METHOD_FAKE)  # the step counted on meta tensors, or on fake ones where meta cannot

VOCAB, BATCH, SEQ = 128, 2, 24


# ---------------------------------------------------------------------------------------------- models
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64)
    return transformers.GPT2LMHeadModel(config)


def checkpointed_gpt2():
    """Activation checkpointing: the backward recomputes each block's forward, and the count includes it."""
    model = gpt2()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def llama(layers: int = 2):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=layers, hidden_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=96, vocab_size=VOCAB)
    return transformers.LlamaForCausalLM(config)


def lora_llama():
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    return peft.get_peft_model(llama(), config)


def frozen_llama():
    model = llama()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.model.layers[-1].parameters():
        p.requires_grad_(True)
    return model


def hf_batch():
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0  # one padded row: a mask that is not all ones
    return {"input_ids": ids, "attention_mask": mask, "labels": ids}


def hf_step(model):
    return lambda batch: model(**batch).loss


class LitClassifier(pl.LightningModule):
    """A LightningModule with batch-norm statistics, dropout and `self.log` in its step."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(8 * 8 * 8, 10),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss)
        self.log_dict({"acc": (logits.argmax(-1) == y).float().mean()})
        return {"loss": loss, "logits": logits.detach()}


def lightning_step(module):
    """The module's `training_step` with `self.log` and `self.log_dict` muted, as the adapter calls it."""
    from carbon_callbacks._compat.lightning import muted_training_step

    return muted_training_step(module)


def lightning_batch():
    torch.manual_seed(2)
    return torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))


# ---------------------------------------------------------------------------------------------- references
def real_flops(step, *inputs) -> int:
    """`FlopCounterMode` with the library's formulas over the real step and `loss.backward()`."""
    with FlopCounterMode(display=False, custom_mapping=formulas()) as counter:
        out = step(*inputs)
        loss = out["loss"] if isinstance(out, dict) else out
        loss.backward()
    return counter.get_total_flops()


def state(module) -> dict:
    """Copies of everything a count must not change: parameters, gradients, buffers, module hooks and the RNG
    state."""
    return {
        "params": {n: (p, p.detach().clone()) for n, p in module.named_parameters()},
        "grads": {n: None if p.grad is None else (p.grad, p.grad.clone()) for n, p in module.named_parameters()},
        "buffers": {n: (b, b.clone()) for n, b in module.named_buffers()},
        "hooks": {n: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for n, m in module.named_modules()},
        "rng": torch.get_rng_state(),
    }


def assert_untouched(module, before: dict) -> None:
    after = state(module)
    assert after["params"].keys() == before["params"].keys()
    for name, (p, value) in before["params"].items():
        assert after["params"][name][0] is p and torch.equal(p.detach(), value), name
        assert type(p) is torch.nn.Parameter and not torch_compat.is_fake(p), name
    for name, grad in before["grads"].items():
        current = module.get_parameter(name).grad
        if grad is None:
            assert current is None, name
        else:
            assert current is grad[0] and torch.equal(current, grad[1]), name
    for name, (b, value) in before["buffers"].items():
        assert after["buffers"][name][0] is b and torch.equal(b, value), name
    assert after["hooks"] == before["hooks"]
    assert torch.equal(after["rng"], before["rng"])
    for sub in module.modules():
        assert not any(torch_compat.is_fake(v) or isinstance(v, torch.Tensor) and v.is_meta
                       for v in vars(sub).values()), type(sub)


def assert_no_global_state() -> None:
    hooks = torch.nn.modules.module
    for name in ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_pre_hooks",
                 "_global_backward_hooks", "_global_forward_hooks_with_kwargs", "_global_forward_hooks_always_called"):
        assert not getattr(hooks, name), name
    assert torch._C._len_torch_dispatch_stack() == 0
    assert torch._dynamo.eval_frame._stance.stance == "default"


def give_grads(module) -> None:
    """Gradients as after a real backward, so that a count that touched them would show."""
    for p in module.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 0.5)


# ---------------------------------------------------------------------------------------------- counts
CASES = {
    "gpt2": (gpt2, hf_step, hf_batch),
    "gpt2-checkpointed": (checkpointed_gpt2, hf_step, hf_batch),
    "llama": (llama, hf_step, hf_batch),
    "llama-lora": (lora_llama, hf_step, hf_batch),
    "llama-frozen-but-last-layer": (frozen_llama, hf_step, hf_batch),
    "lightning": (LitClassifier, lightning_step, lambda: (lightning_batch(), 0)),
}


def _inputs(make_batch):
    batch = make_batch()
    return batch if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], int) else (batch,)


@pytest.mark.parametrize("name", list(CASES))
def test_fake_count_equals_the_real_step(name):
    make_model, make_step, make_batch = CASES[name]
    model = make_model()
    model.train()
    inputs = _inputs(make_batch)
    give_grads(model)
    before = state(model)
    result = count_step(model, make_step(model), *inputs)
    assert_untouched(model, before)
    assert_no_global_state()
    assert result.method in TRACED and result.warnings == () and result.includes_backward
    if name == "lightning":  # shapes are all it needs: the meta device counts it (batch norm, dropout included)
        assert result.method == METHOD_META
    assert result.total == result.executed > 0
    reference = real_flops(make_step(copy.deepcopy(model)), *inputs)
    assert abs(result.total / reference - 1) < 0.01
    assert result.total == reference  # exact here
    assert sum(result.breakdown.values()) == result.total and min(result.breakdown.values()) >= 0


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_breakdown_by_layer_kind_equals_the_analytic_count(name):
    """Each op lands in the module that runs it, backward ops in the module whose forward made their autograd node:
    the split by layer kind is the analytic one of the Hugging Face config, kind by kind."""
    model = CASES[name][0]()
    result = count_step(model, hf_step(model), hf_batch())
    analytic = transformer_flops(dataclasses.replace(TransformerConfig.from_hf(model.config), batch_size=BATCH,
                                                     seq_len=SEQ))
    assert result.total == analytic.hardware_flops
    assert {kind: result.breakdown[kind] for kind in analytic.hardware_breakdown} == analytic.hardware_breakdown
    assert result.breakdown["other"] == 0


def test_checkpointing_counts_the_recomputed_forward_in_its_layers():
    """Activation checkpointing reruns each block's forward in the backward pass: attention and FFN cost 4 x their
    forward instead of 3 x; the logits layer, outside the checkpointed blocks, is unchanged."""
    plain, checkpointed = ({}, {})
    for model, breakdown in ((gpt2(), plain), (checkpointed_gpt2(), checkpointed)):
        breakdown.update(count_step(model, hf_step(model), hf_batch()).breakdown)
    assert checkpointed["attention"] * 3 == plain["attention"] * 4
    assert checkpointed["dense_ffn"] * 3 == plain["dense_ffn"] * 4
    assert checkpointed["embeddings_logits"] == plain["embeddings_logits"] > 0


class CountAtBatchEnd(pl.Callback):
    """Counts each step at its batch end, as the Lightning adapter will."""

    def __init__(self):
        self.counts = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.counts.append(count_step(pl_module, lightning_step(pl_module), batch, batch_idx))


def _fit(callbacks):
    pl.seed_everything(0, verbose=False)
    model = LitClassifier()
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(24, 3, 8, 8), torch.randint(0, 10, (24,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(model, loader)
    return model


def test_counting_in_a_lightning_fit_changes_nothing_it_trains():
    """Six steps with dropout, batch norm and momentum: the weights come out bitwise the same as without counting."""
    counter = CountAtBatchEnd()
    counted, bare = _fit([counter]), _fit([])
    assert len(counter.counts) == 6 and all(c.method in TRACED for c in counter.counts)
    for (name, a), b in zip(counted.state_dict().items(), bare.state_dict().values()):
        assert torch.equal(a, b), name
    batch = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    assert counter.counts[0].total == real_flops(lightning_step(copy.deepcopy(bare)), batch, 0)
    assert_no_global_state()


def test_frozen_parameters_get_no_weight_gradient():
    full = count_step(llama(), hf_step(llama()), hf_batch()).total
    lora = count_step(lora_llama(), hf_step(lora_llama()), hf_batch()).total
    frozen = count_step(frozen_llama(), hf_step(frozen_llama()), hf_batch()).total
    assert lora < full and frozen < full
    with torch.no_grad():  # the forward alone, for the expected size of the saving
        model = llama()
        with FlopCounterMode(display=False, custom_mapping=formulas()) as counter:
            model(**hf_batch())
    forward = counter.get_total_flops()
    # A LoRA step does forward + input gradients (about 2 x forward) and next to no weight gradient: ~2/3 of full.
    assert 0.6 < lora / full < 0.75 and forward < lora - forward


def test_trainable_fraction():
    assert trainable_fraction(llama()).fraction == 1.0
    lora = trainable_fraction(lora_llama())
    assert 0 < lora.trainable < 0.05 * lora.total
    frozen = trainable_fraction(frozen_llama())
    model = llama()
    layer = sum(p.numel() for p in model.model.layers[-1].parameters())
    assert frozen == (layer, sum(p.numel() for p in model.parameters()))
    assert trainable_fraction(torch.compile(model, backend="eager")) == trainable_fraction(model)
    assert trainable_fraction(torch.nn.ReLU()).fraction is None


def test_outputs_without_a_loss_count_the_backward_of_their_sum():
    model = gpt2()
    batch = {"input_ids": hf_batch()["input_ids"]}
    result = count_step(model, lambda b: model(**b).logits, batch)
    reference_model = copy.deepcopy(model)
    with FlopCounterMode(display=False, custom_mapping=formulas()) as counter:
        reference_model(**batch).logits.float().sum().backward()
    assert result.total == counter.get_total_flops()


def test_a_loss_of_several_elements_is_summed_alone():
    model = torch.nn.Linear(8, 4)
    x = torch.randn(16, 8)
    per_sample = count_step(model, lambda v: {"loss": model(v).square().mean(1), "logits": model(v)}, x)
    summed = count_step(model, lambda v: {"loss": model(v).square().mean(1).sum(), "logits": model(v)}, x)
    assert per_sample.total == summed.total == 3 * 2 * 16 * 8 * 4  # two forwards, one weight gradient


def test_a_step_without_gradient_counts_its_forward_and_says_so():
    model = gpt2()
    batch = {"input_ids": hf_batch()["input_ids"]}

    def step(b):
        with torch.no_grad():
            return model(**b).logits

    result = count_step(model, step, batch)
    assert not result.includes_backward and "forward alone" in result.warnings[0]
    assert result.total == result.executed > 0


class MaskBranch(torch.nn.Module):
    """Chooses its path from the values of its batch, as transformers 4.46 does (`torch.all(mask == 1)` picks
    the causal attention kernel), and writes into its labels in place."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.full, self.padded = torch.nn.Linear(16, 16), torch.nn.Linear(16, 64)

    def forward(self, input_ids, attention_mask, labels):
        x = self.embed(input_ids)
        x = self.full(x) if bool(torch.all(attention_mask == 1)) else self.padded(x)[..., :16]
        labels.masked_fill_(attention_mask == 0, 0)
        return (x.sum(-1) * labels).float().mean()


@pytest.mark.parametrize("padded", [False, True], ids=["all-ones", "padded"])
def test_a_step_that_reads_its_batch_values_counts_on_fake_tensors(padded):
    model = MaskBranch()
    batch = hf_batch()
    if not padded:
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["labels"] = batch["labels"].clone()
    before = {k: v.clone() for k, v in batch.items()}
    result = count_step(model, lambda b: model(**b), batch, fallback=None)
    assert result.method == METHOD_FAKE  # meta tensors hold no values to branch on
    assert all(torch.equal(batch[k], before[k]) for k in batch)  # the real batch is never written
    reference = copy.deepcopy(model)
    assert result.total == real_flops(lambda b: reference(**b), {k: v.clone() for k, v in batch.items()})
    assert_no_global_state()


def test_bf16_autocast_inside_the_step_counts_as_fp32():
    model = llama()
    batch = hf_batch()

    def autocast_step(b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(**b).loss

    before = state(model)
    result = count_step(model, autocast_step, batch)
    assert_untouched(model, before)
    assert result.method in TRACED
    assert result.total == count_step(model, hf_step(model), batch).total  # FLOPs do not depend on the dtype
    assert result.total == real_flops(autocast_step, batch)


def test_bf16_autocast_around_the_count():
    """As when an adapter counts inside the trainer's precision context."""
    model = llama()
    batch = hf_batch()
    before = state(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = count_step(model, hf_step(model), batch)
    assert_untouched(model, before)
    assert result.method in TRACED
    assert result.total == count_step(model, hf_step(model), batch).total


def test_a_step_that_caches_a_tensor_on_the_module_leaves_nothing_fake_behind():
    class Caching(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            self.last_input = x  # a cache the count must not leave behind as a fake tensor
            self.lin.calls = getattr(self.lin, "calls", 0) + 1
            return self.lin(x).sum()

    model = Caching()
    model(torch.ones(2, 4))
    cached, calls = model.last_input, model.lin.calls
    assert count_step(model, model, torch.zeros(3, 4)).method == METHOD_META
    assert model.last_input is cached and model.lin.calls == calls


class FrozenKeyAttention(torch.nn.Module):
    """Attention through `scaled_dot_product_attention` with a frozen key projection."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(16, 16) for _ in range(3))
        self.k.requires_grad_(False)

    def forward(self, x):
        heads = [f(x).unflatten(-1, (2, 8)).transpose(1, 2) for f in (self.q, self.k, self.v)]
        return torch.nn.functional.scaled_dot_product_attention(*heads, is_causal=True).square().mean()


class Recurrent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.head = torch.nn.LSTM(16, 16, batch_first=True), torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.lstm(x)[0]).square().mean()


@pytest.mark.parametrize("make", [FrozenKeyAttention, Recurrent], ids=["attention", "lstm"])
def test_kernels_torch_picks_by_device_are_counted_on_fake_tensors(make):
    """On meta, attention and recurrent layers run their generic decomposition, whose backward is not the device's
    (the fused attention kernels compute the frozen keys' gradient too): counted on fake tensors, as they run."""
    model = make()
    x = torch.randn(2, 8, 16)
    result = count_step(model, model, x)
    assert result.method == METHOD_FAKE
    assert result.total == real_flops(copy.deepcopy(model), x)


# ---------------------------------------------------------------------------------------------- compiled modules
class CountingBackend:
    """A `torch.compile` backend that counts its compilations and the calls of the graphs it compiled."""

    def __init__(self):
        self.compiles = 0
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1

        def run(*args):
            self.calls += 1
            return gm.forward(*args)

        return run


class WithCompiledBody(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        torch.manual_seed(0)
        body = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
        self.body = torch.compile(body, backend=backend)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.body(x)).square().mean()


@pytest.mark.parametrize("compiled", ["submodule", "whole module"])
def test_compiled_modules_are_counted_uncompiled_and_keep_their_graphs(compiled):
    backend = CountingBackend()
    x = torch.randn(8, 16)
    if compiled == "submodule":
        model = WithCompiledBody(backend)
        step = model
    else:
        torch.manual_seed(0)
        model = torch.compile(torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 1)),
                              backend=backend)
        step = lambda v: model(v).square().mean()  # noqa: E731 - the step calls the compiled wrapper itself
    step(x).backward()  # compiles
    assert (backend.compiles, backend.calls) == (1, 1)
    before = state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = count_step(model, step, x)
    assert_untouched(model, before)
    assert_no_global_state()
    assert result.method in TRACED
    assert (backend.compiles, backend.calls) == (1, 1)  # the count ran nothing compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            step(x).backward()
    assert (backend.compiles, backend.calls) == (1, 4)  # later real steps run the compiled graph, not recompiled
    uncompiled = copy.deepcopy(model._orig_mod if compiled == "whole module" else model)
    if compiled == "submodule":
        uncompiled.body = uncompiled.body._orig_mod
        reference = real_flops(uncompiled, x)
    else:
        reference = real_flops(lambda v: uncompiled(v).square().mean(), x)
    assert result.total == reference


def test_the_old_real_replay_leaves_a_compiled_module_eager():
    """What counting uncompiled avoids: the counter over a compiled module warns and its graph stops running."""
    backend = CountingBackend()
    model = WithCompiledBody(backend)
    x = torch.randn(8, 16)
    model(x).backward()
    with pytest.warns(UserWarning, match="global hooks"):
        with FlopCounterMode(display=False):
            model(x).backward()
    model(x).backward()
    assert backend.calls == 1  # eager since the replay (torch 2.13.0)


@pytest.mark.slow
def test_inductor_compiled_module_is_not_recompiled():
    """The same with inductor, the default backend: later steps under `fail_on_recompile` and warnings as errors."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    compiled = torch.compile(torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 1)))
    x = torch.randn(8, 16)
    compiled(x).square().mean().backward()
    frames = dict(torch._dynamo.utils.counters["frames"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = count_step(compiled, lambda v: compiled(v).square().mean(), x)
        with torch.compiler.set_stance("fail_on_recompile"):
            for _ in range(2):
                compiled(x).square().mean().backward()
    assert result.method in TRACED
    assert result.total == real_flops(lambda v: copy.deepcopy(compiled._orig_mod)(v).square().mean(), x)
    assert dict(torch._dynamo.utils.counters["frames"]) == frames
    assert_no_global_state()


# ---------------------------------------------------------------------------------------------- the real fallback
_SCALE_OP = None


def scale_op():
    """A custom op with an autograd formula and no fake implementation: fake tensors cannot run it."""
    global _SCALE_OP
    if _SCALE_OP is None:
        @torch.library.custom_op("carbon_callbacks_test::scale", mutates_args=())
        def scale(x: torch.Tensor) -> torch.Tensor:
            return x * 2.0

        def backward(ctx, grad):
            return grad * 2.0

        scale.register_autograd(backward)
        _SCALE_OP = scale
    return _SCALE_OP


class WithCustomOp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 8)
        self.norm = torch.nn.BatchNorm1d(8)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(scale_op()(self.norm(self.lin(x)))).square().mean()


def test_custom_op_without_fake_impl_falls_back_to_the_real_step_with_no_lasting_effect():
    model = WithCustomOp().train()
    x = torch.randn(16, 8)
    give_grads(model)
    before = state(model)
    result = count_step(model, model, x)
    assert_untouched(model, before)
    assert_no_global_state()
    assert result.method.startswith("traced:torch-flop-counter(real step; fake tensors failed: ")
    assert "counted by running the step for real" in result.warnings[0]
    assert result.total == real_flops(copy.deepcopy(model), x)


def test_the_real_step_sees_nothing_the_failed_fake_try_left_on_the_module():
    class Caching(WithCustomOp):
        def forward(self, x):
            if hasattr(self, "previous"):
                x = x + 0 * self.previous  # mixing a leaked fake tensor with real ones would raise here
            self.previous = x.detach()
            return super().forward(x)

    model = Caching()
    x = torch.randn(16, 8)
    model(x)
    previous = model.previous
    result = count_step(model, model, x)
    assert "real step" in result.method and model.previous is previous


def test_no_fallback_raises_a_clear_error():
    model = WithCustomOp()
    x = torch.randn(16, 8)
    before = state(model)
    with pytest.raises(FakeCountError, match="fallback='real'") as info:
        count_step(model, model, x, fallback=None)
    assert "carbon_callbacks_test::scale" in str(info.value) or info.value.__cause__ is not None
    assert_untouched(model, before)
    assert_no_global_state()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="torch.nn.Module"):
        count_step(lambda x: x, lambda x: x, torch.ones(1))
    with pytest.raises(ValueError, match="fallback must be one of"):
        count_step(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.ones(1, 2), fallback="meta")


def test_sharded_or_wrapped_modules_are_refused(tmp_path, monkeypatch):
    """One rank cannot count a step of a sharded module: DDP wrappers, DTensor parameters, DeepSpeed ZeRO-3."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.distributed.tensor import Replicate, distribute_tensor, init_device_mesh

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = torch.nn.Linear(4, 4)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        with pytest.raises(ValueError, match="DistributedDataParallel wrapper"):
            count_step(ddp, ddp, torch.ones(2, 4))
        assert count_step(ddp.module, ddp.module, torch.ones(2, 4)).method in TRACED
        sharded = torch.nn.Linear(4, 4)
        mesh = init_device_mesh("cpu", (1,))
        sharded.weight = torch.nn.Parameter(distribute_tensor(sharded.weight.detach(), mesh, [Replicate()]))
        with pytest.raises(ValueError, match="weight is a DTensor"):
            count_step(sharded, sharded, torch.ones(2, 4))
    finally:
        dist.destroy_process_group()
    zero3 = torch.nn.Linear(4, 4)
    zero3.weight.ds_id = 0  # what DeepSpeed ZeRO-3 sets on the parameters it partitions
    monkeypatch.setitem(__import__("sys").modules, "deepspeed", object())
    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3"):
        count_step(zero3, zero3, torch.ones(2, 4))


def test_a_missing_torch_internal_warns_and_counts_the_real_step(monkeypatch, lenient):
    """Where `_reparametrize_module` is gone, `missing` warns once and the step runs for real; strict mode raises."""
    import torch.nn.utils.stateless as stateless

    monkeypatch.delattr(stateless, "_reparametrize_module")
    model = torch.nn.Linear(4, 4)
    with pytest.warns(_compat.InternalApiWarning, match="_reparametrize_module"):
        result = count_step(model, lambda x: model(x).sum(), torch.ones(2, 4))
    assert "real step" in result.method
    monkeypatch.setenv("CARBON_CALLBACKS_STRICT", "1")
    with pytest.raises(_compat.InternalApiMissing, match="_reparametrize_module"):
        count_step(model, lambda x: model(x).sum(), torch.ones(2, 4))


@pytest.fixture
def lenient(monkeypatch):
    """Not strict, with the process's warn-once registry empty: `missing` warns instead of raising."""
    monkeypatch.delenv("CARBON_CALLBACKS_STRICT", raising=False)
    monkeypatch.setattr("carbon_callbacks._warnings._SHOWN_IN_PROCESS", set())


def test_without_optimized_module_compiled_submodules_are_counted_eagerly(monkeypatch, lenient):
    import torch._dynamo.eval_frame as eval_frame

    backend = CountingBackend()
    model = WithCompiledBody(backend)
    x = torch.randn(8, 16)
    model(x).backward()
    expected = count_step(model, model, x).total
    monkeypatch.delattr(eval_frame, "OptimizedModule")
    with pytest.warns(_compat.InternalApiWarning, match="OptimizedModule"):
        result = count_step(model, model, x)
    assert result.total == expected and (backend.compiles, backend.calls) == (1, 1)
    assert_no_global_state()
    monkeypatch.undo()
    model(x).backward()
    assert (backend.compiles, backend.calls) == (1, 2)  # still compiled: the eager count left no mark


def test_without_the_graph_task_id_the_total_is_unchanged(monkeypatch, lenient):
    model = gpt2()
    batch = hf_batch()
    expected = count_step(model, hf_step(model), batch).total
    monkeypatch.setattr(torch_compat, "_graph_task_id", None)
    with pytest.warns(_compat.InternalApiWarning, match="_current_graph_task_id"):
        assert count_step(model, hf_step(model), batch).total == expected


def test_without_the_autograd_node_backward_flops_are_not_attributed(monkeypatch, lenient):
    """Where `_current_autograd_node` is gone the backward pass is counted but goes to `other`."""
    model = gpt2()
    expected = count_step(model, hf_step(model), hf_batch())
    monkeypatch.setattr(torch_compat, "_autograd_node", None)
    with pytest.warns(_compat.InternalApiWarning, match="_current_autograd_node"):
        result = count_step(model, hf_step(model), hf_batch())
    assert result.total == expected.total
    assert result.breakdown["other"] * 3 == 2 * result.total  # every op's backward is 2 x its forward here
    assert result.breakdown["attention"] * 3 == expected.breakdown["attention"]
    monkeypatch.setenv("CARBON_CALLBACKS_STRICT", "1")
    with pytest.raises(_compat.InternalApiMissing, match="_current_autograd_node"):
        count_step(model, hf_step(model), hf_batch())


def test_the_torch_internals_of_the_counter_are_there():
    assert torch_compat.dispatch_mode_base() is not None
    assert torch_compat.current_autograd_node() is None  # outside a backward pass
    assert torch_compat.may_decompose(torch.ops.aten.linear.default)  # a composite op
    assert not torch_compat.may_decompose(torch.ops.aten.mm.default)
    assert isinstance(_torch.new_counter(), _torch.Counter)


def test_without_dispatch_kernel_lookup_every_op_is_offered_a_decomposition(monkeypatch, lenient):
    model = llama()
    expected = count_step(model, hf_step(model), hf_batch())
    monkeypatch.setattr(torch_compat, "_has_kernel", None)
    with pytest.warns(_compat.InternalApiWarning, match="_dispatch_has_kernel_for_dispatch_key"):
        result = count_step(model, hf_step(model), hf_batch())
    assert result == expected


def test_dispatch_mode_base_missing_warns():
    import sys

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CARBON_CALLBACKS_STRICT", raising=False)
        patch.setattr("carbon_callbacks._warnings._SHOWN_IN_PROCESS", set())
        patch.setitem(sys.modules, "torch.utils._python_dispatch", None)  # `from ... import` raises ImportError
        with pytest.warns(_compat.InternalApiWarning, match="TorchDispatchMode"):
            assert torch_compat.dispatch_mode_base() is None


def test_without_torch_dispatch_mode_flop_counter_mode_counts(monkeypatch, lenient):
    """Where the lean mode cannot be built, `FlopCounterMode` itself counts: the same totals."""
    model = llama()
    expected = count_step(model, hf_step(model), hf_batch())
    monkeypatch.setattr(torch_compat, "dispatch_mode_base", lambda: None)
    _torch._mode_class.cache_clear()
    try:
        assert isinstance(_torch.new_counter(), _torch._StockCounter)
        result = count_step(model, hf_step(model), hf_batch())
        module_count = _torch.count(model, hf_batch()["input_ids"])
    finally:
        monkeypatch.undo()
        _torch._mode_class.cache_clear()
    assert result.total == expected.total and result.method == expected.method
    assert module_count.total == _torch.count(model, hf_batch()["input_ids"]).total
    assert_no_global_state()
