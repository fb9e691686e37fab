"""Model FLOPs against hardware FLOPs in the traced counters: what activation checkpointing recomputes, the gradients
no parameter needs, passes without gradients, and generation with a KV cache.

Model FLOPs are the model's math, each forward once and each backward training needs once (docs/flops.md); hardware
FLOPs are what ran. Each is checked against an outside count: torch's `FlopCounterMode` (with the library's formulas
for what it misses) over the step that really runs, with and without checkpointing.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch.utils.checkpoint import checkpoint  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from carbon_callbacks.flops import TransformerConfig, count_step  # noqa: E402
from carbon_callbacks.flops._torch import formulas  # noqa: E402
from carbon_callbacks.flops.analytic import generation_flops  # noqa: E402

torch.set_num_threads(1)
VOCAB = 128


def llama(**kwargs):
    return transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, **kwargs)


def ran(step) -> int:
    """FlopCounterMode over `step()`, which runs for real (its backward included)."""
    with FlopCounterMode(display=False, custom_mapping=formulas()) as counter:
        step()
    return counter.get_total_flops()


class Blocks(torch.nn.Module):
    """Two MLP blocks, checkpointed or not, reentrant or not."""

    def __init__(self, mode: str | None) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(),
                                                              torch.nn.Linear(64, 32)) for _ in range(2))
        self.mode = mode

    def forward(self, x):
        for block in self.blocks:
            x = block(x) if self.mode is None else checkpoint(block, x, use_reentrant=self.mode == "reentrant")
        return x.pow(2).mean()


@pytest.mark.parametrize("mode", ["reentrant", "non-reentrant"])
def test_checkpointing_is_hardware_not_model_flops(mode):
    torch.manual_seed(0)
    plain, checkpointed = Blocks(None), Blocks(mode)
    x = torch.randn(8, 32, requires_grad=mode == "reentrant")  # reentrant needs an input that requires a gradient
    counted = count_step(checkpointed, checkpointed, x)
    assert counted.total == ran(lambda: checkpointed(x).backward())  # what ran, the recompute included
    # Each block's forward once more: both products (reentrant), or up to the last tensor its backward needs
    # (non-reentrant stops early: the second product's output is saved by no one).
    products = 2 if mode == "reentrant" else 1
    assert counted.recomputed == products * 2 * 2 * 8 * 32 * 64
    assert counted.without_recompute == count_step(plain, plain, x).total == ran(lambda: plain(x).backward())


def lora_llama(checkpointed: bool):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = peft.get_peft_model(transformers.AutoModelForCausalLM.from_config(llama()),
                                peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    if checkpointed:  # as TRL's SFTTrainer sets it up for a peft model
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model.train()


def test_lora_with_checkpointing_counts_the_step_of_plain_lora_as_model_flops():
    checkpointed, plain = lora_llama(True), lora_llama(False)
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}

    def step(model):
        return lambda b: model(**b)

    as_run = count_step(checkpointed, step(checkpointed), batch)
    assert as_run.total == ran(lambda: checkpointed(**batch).loss.backward())
    assert as_run.recomputed > 0 and as_run.other_gradients  # the embeddings' output was made to require a gradient
    needed = count_step(checkpointed, step(checkpointed), batch, backward="parameters")
    plain_step = ran(lambda: plain(**batch).loss.backward())
    assert needed.without_recompute == count_step(plain, step(plain), batch).total == plain_step
    assert as_run.without_recompute > plain_step  # the extra gradient ran; training does not need it
    assert not count_step(plain, step(plain), batch).other_gradients


def test_a_pass_without_gradients_counts_its_forward():
    model = transformers.AutoModelForCausalLM.from_config(llama()).train()
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    counted = count_step(model, lambda i: model(input_ids=i), ids, backward="none")
    with torch.no_grad():
        forward = ran(lambda: model(input_ids=ids))
    assert counted.total == forward and not counted.includes_backward
    assert 3 * forward == count_step(model, lambda i: model(input_ids=i, labels=i), ids).total


def test_generation_flops_equal_what_generate_runs():
    config = llama(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    calls = []

    def see(module, args, kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        calls.append((kwargs["input_ids"].shape, cache.get_seq_length(), kwargs.get("logits_to_keep")))

    model.register_forward_pre_hook(see, with_kwargs=True)
    prompt = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    total = ran(lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4,
                                       min_new_tokens=4, do_sample=False))
    shape = TransformerConfig.from_hf(config, seq_len=1)
    assert len(calls) == 4  # the prompt, then one token per sequence each time
    assert total == sum(generation_flops(shape, batch=s[0], new_tokens=s[1], context=past + s[1], logits_tokens=keep)
                        for s, past, keep in calls)


def test_jax_remat_is_hardware_not_model_flops():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from carbon_callbacks.flops import count

    w1, w2, x = jnp.ones((64, 64)), jnp.ones((64, 64)), jnp.ones((8, 64))

    def block(w1, w2, x):
        return jnp.tanh(jnp.tanh(x @ w1) @ w2)

    def step(remat):
        inner = jax.checkpoint(block) if remat else block
        return lambda params, x: jax.grad(lambda p: inner(*p, x).sum())(params)

    plain, remat = count(step(False), (w1, w2), x), count(step(True), (w1, w2), x)
    assert remat.recomputed == 2 * 2 * 8 * 64 * 64  # the body's two products, recomputed in the backward pass
    assert remat.total == plain.total + remat.recomputed and remat.without_recompute == plain.total
