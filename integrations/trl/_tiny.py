"""A tiny Llama built from a config and a word-level tokenizer made here (nothing downloaded), shared by the TRL
suites."""

from __future__ import annotations

import tokenizers
import torch
import transformers

VOCAB = 128
LORA = {"r": 4, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
COMMON = {"report_to": "none", "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, "seed": 0,
          "per_device_train_batch_size": 4}


def tokenizer():
    """A word-level tokenizer over `w0 ... w124`, with pad, eos and bos: made here, nothing downloaded."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"w{i}": i + 3 for i in range(VOCAB - 3)}}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="<eos>",
                                                bos_token="<bos>")


def llama():
    return transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128,
                                    pad_token_id=0, eos_token_id=1, bos_token_id=2)


def model():
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(llama())


def words(generator, low: int, high: int) -> str:
    n = int(torch.randint(low, high, (1,), generator=generator))
    return " ".join(f"w{int(i)}" for i in torch.randint(0, VOCAB - 3, (n,), generator=generator))
