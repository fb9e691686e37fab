"""`carbon-callbacks flops`: exact FLOPs per training step and parameter counts of a dense or MoE transformer,
given by its shape or by a Hugging Face `config.json` (`--hf-config`)."""

from __future__ import annotations

import json
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError, check_count, check_number
from carbon_callbacks._reports.format import fmt_number, text_table
from carbon_callbacks.flops.analytic import MOE_IMPLEMENTATIONS, NORMS, TransformerConfig, transformer_flops

#: (flag, TransformerConfig field, minimum or None for a positive real) of every number the command takes.
_NUMBERS = (
    ("--layers", "num_layers", 1),
    ("--d-model", "d_model", 1),
    ("--heads", "num_heads", 1),
    ("--seq-len", "seq_len", 1),
    ("--batch", "batch_size", 1),
    ("--vocab", "vocab_size", 1),
    ("--d-ff", "d_ff", 1),
    ("--head-dim", "head_dim", 1),
    ("--experts", "num_experts", 0),
    ("--top-k", "top_k", 1),
    ("--capacity-factor", "capacity_factor", None),
    ("--moe-every", "moe_every", 1),
    ("--decoder-layers", "num_decoder_layers", 1),
    ("--decoder-seq-len", "decoder_seq_len", 1),
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "flops",
        help="exact FLOPs per training step and parameters of a dense or MoE transformer",
        description=(
            "Matmul FLOPs of one training step (forward + backward = 3 x forward; a multiply-add is 2 FLOPs; "
            "softmax, norms and activations not counted; attention without causal halving unless --causal). "
            "Model FLOPs count the top-k experts and the router; hardware FLOPs what --moe-impl runs."
        ),
    )
    parser.add_argument(
        "--hf-config", metavar="CONFIG_JSON",
        help="a Hugging Face config.json (gpt2, llama, mistral, qwen2, mixtral, qwen2_moe, t5, mt5, "
        "switch_transformers): the shape comes from it; give only --batch, --seq-len (default: the model's "
        "context length), --decoder-seq-len and the MoE implementation flags",
    )
    shape = parser.add_argument_group("shape (required without --hf-config: --layers, --d-model, --heads, "
                                      "--seq-len, --batch, --vocab)")
    shape.add_argument(
        "--layers", dest="num_layers", type=int, metavar="N",
        help="layers (the encoder's, with --decoder-layers)",
    )
    shape.add_argument("--d-model", dest="d_model", type=int, metavar="N", help="model width")
    shape.add_argument("--heads", dest="num_heads", type=int, metavar="N", help="attention heads")
    shape.add_argument("--seq-len", dest="seq_len", type=int, metavar="N", help="tokens per sequence")
    shape.add_argument("--batch", dest="batch_size", type=int, metavar="N", help="sequences per step")
    shape.add_argument("--vocab", dest="vocab_size", type=int, metavar="N", help="vocabulary size")
    shape.add_argument("--d-ff", dest="d_ff", type=int, metavar="N", help="FFN hidden width (default 4 x d-model)")
    shape.add_argument(
        "--head-dim", dest="head_dim", type=int, metavar="N",
        help="width per head (default d-model / heads)",
    )
    shape.add_argument(
        "--decoder-layers", dest="num_decoder_layers", type=int, metavar="N",
        help="decoder layers: makes an encoder-decoder (T5 style)",
    )
    shape.add_argument(
        "--decoder-seq-len", dest="decoder_seq_len", type=int, metavar="N",
        help="decoder length of an encoder-decoder (default seq-len)",
    )
    shape.add_argument("--gated-ffn", action="store_true", help="FFN with 3 matrices (GLU)")
    shape.add_argument("--tied-embeddings", action="store_true", help="logits reuse the input embedding")
    shape.add_argument("--no-learned-positions", action="store_true", help="no position table in the parameters")
    shape.add_argument("--norm", choices=sorted(NORMS), help="norm layer (parameters only; default layernorm)")
    moe = parser.add_argument_group("mixture of experts")
    moe.add_argument(
        "--experts", dest="num_experts", type=int, metavar="N",
        help="experts per MoE layer (default 0: dense)",
    )
    moe.add_argument("--top-k", dest="top_k", type=int, metavar="N", help="experts per token (default 1)")
    moe.add_argument(
        "--capacity-factor", dest="capacity_factor", type=float, metavar="X",
        help="expert capacity factor (default 1.0)",
    )
    moe.add_argument(
        "--moe-every", dest="moe_every", type=int, metavar="N",
        help="every N-th layer is MoE (default 1)",
    )
    moe.add_argument(
        "--moe-impl", default="token_gather", choices=MOE_IMPLEMENTATIONS, help="implementation for hardware FLOPs"
    )
    parser.add_argument("--causal", action="store_true", help="count decoder self-attention on the lower triangle")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    parser.set_defaults(func=run)


#: Flags that give the model's shape, which --hf-config replaces.
_SHAPE_FLAGS = {
    "num_layers": "--layers", "d_model": "--d-model", "num_heads": "--heads", "vocab_size": "--vocab",
    "d_ff": "--d-ff", "head_dim": "--head-dim", "num_experts": "--experts", "top_k": "--top-k",
    "moe_every": "--moe-every", "num_decoder_layers": "--decoder-layers", "gated_ffn": "--gated-ffn",
    "tied_embeddings": "--tied-embeddings", "no_learned_positions": "--no-learned-positions", "norm": "--norm",
}
_REQUIRED = ("num_layers", "d_model", "num_heads", "seq_len", "batch_size", "vocab_size")


def _checked_numbers(args) -> dict:
    """Every number given, checked under its flag's name."""
    values = {}
    for flag, name, minimum in _NUMBERS:
        value = getattr(args, name)
        if value is None:
            continue
        if minimum is None:
            values[name] = check_number(flag, value, positive=True)
        else:
            values[name] = check_count(flag, value, minimum=minimum)
    return values


def read_hf_config(path: str) -> dict:
    """The object of a `config.json` given as `--hf-config`; an unreadable or non-object file names the flag."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InvalidInputError(f"--hf-config: cannot read {str(path)!r} ({err.strerror or err}).") from None
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"--hf-config: {str(path)!r} is not JSON ({err}).") from None
    if not isinstance(values, dict):
        raise InvalidInputError(f"--hf-config: {str(path)!r} holds a {type(values).__name__}, not a config object.")
    return values


def hf_config_from_args(args) -> TransformerConfig:
    """The `TransformerConfig` of `--hf-config`, with the workload flags."""
    given = [flag for name, flag in _SHAPE_FLAGS.items() if getattr(args, name) not in (None, False)]
    if given:
        raise InvalidInputError(
            f"{', '.join(given)}: the shape comes from --hf-config; drop these flags (only --batch, --seq-len, "
            "--decoder-seq-len, --capacity-factor, --moe-impl and --causal combine with it)."
        )
    values = read_hf_config(args.hf_config)
    numbers = _checked_numbers(args)
    workload = {name: numbers[name] for name in ("seq_len", "batch_size", "decoder_seq_len", "capacity_factor")
                if name in numbers}
    return TransformerConfig.from_hf(values, **workload)


def config_from_args(args) -> TransformerConfig:
    """Checks every number under its flag's name, then builds the `TransformerConfig`."""
    if getattr(args, "hf_config", None):
        return hf_config_from_args(args)
    missing = [_SHAPE_FLAGS.get(name) or {"seq_len": "--seq-len", "batch_size": "--batch"}[name]
               for name in _REQUIRED if getattr(args, name) is None]
    if missing:
        raise InvalidInputError(f"{', '.join(missing)}: required (or give the shape with --hf-config).")
    return TransformerConfig(
        **_checked_numbers(args),
        gated_ffn=args.gated_ffn,
        tied_embeddings=args.tied_embeddings,
        learned_positions=not args.no_learned_positions,
        norm=args.norm or "layernorm",
    )


def run(args) -> int:
    config = config_from_args(args)
    result = transformer_flops(config, moe_implementation=args.moe_impl, causal=args.causal)
    if args.json:
        print(json.dumps({**result.to_dict(), "config": config.to_dict()}, indent=2))
        return 0
    rows = [
        [kind, result.breakdown[kind], result.hardware_breakdown[kind]]
        for kind in result.breakdown
        if result.breakdown[kind] or result.hardware_breakdown[kind]
    ]
    rows.append(["total", result.model_flops, result.hardware_flops])
    print(text_table(["layer kind", "model FLOPs/step", f"hardware FLOPs/step ({result.moe_implementation})"], rows))
    print(
        f"\nparameters: {fmt_number(result.params_total)} total, {fmt_number(result.params_active_per_token)} "
        f"activated per token ({result.percent_active:.3g}%)"
        f"\ntokens per step: {result.tokens_per_step}; model FLOPs per token: "
        f"{fmt_number(result.model_flops / result.tokens_per_step)}"
    )
    if config.num_experts:
        print(f"expert capacity: {result.expert_capacity} slots per expert per MoE layer")
    return 0
