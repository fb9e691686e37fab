"""`carbon-callbacks flops`: exact FLOPs per training step and parameter counts of a dense or MoE transformer."""

from __future__ import annotations

import json

from carbon_callbacks._errors import check_count, check_number
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
    shape = parser.add_argument_group("shape")
    shape.add_argument(
        "--layers", dest="num_layers", type=int, required=True, metavar="N",
        help="layers (the encoder's, with --decoder-layers)",
    )
    shape.add_argument("--d-model", dest="d_model", type=int, required=True, metavar="N", help="model width")
    shape.add_argument("--heads", dest="num_heads", type=int, required=True, metavar="N", help="attention heads")
    shape.add_argument("--seq-len", dest="seq_len", type=int, required=True, metavar="N", help="tokens per sequence")
    shape.add_argument("--batch", dest="batch_size", type=int, required=True, metavar="N", help="sequences per step")
    shape.add_argument("--vocab", dest="vocab_size", type=int, required=True, metavar="N", help="vocabulary size")
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
    shape.add_argument("--norm", default="layernorm", choices=sorted(NORMS), help="norm layer (parameters only)")
    moe = parser.add_argument_group("mixture of experts")
    moe.add_argument(
        "--experts", dest="num_experts", type=int, metavar="N", default=0,
        help="experts per MoE layer (0: dense)",
    )
    moe.add_argument("--top-k", dest="top_k", type=int, metavar="N", default=1, help="experts per token (default 1)")
    moe.add_argument(
        "--capacity-factor", dest="capacity_factor", type=float, metavar="X", default=1.0,
        help="expert capacity factor (default 1.0)",
    )
    moe.add_argument(
        "--moe-every", dest="moe_every", type=int, metavar="N", default=1,
        help="every N-th layer is MoE (default 1)",
    )
    moe.add_argument(
        "--moe-impl", default="token_gather", choices=MOE_IMPLEMENTATIONS, help="implementation for hardware FLOPs"
    )
    parser.add_argument("--causal", action="store_true", help="count decoder self-attention on the lower triangle")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    parser.set_defaults(func=run)


def config_from_args(args) -> TransformerConfig:
    """Checks every number under its flag's name, then builds the `TransformerConfig`."""
    values = {}
    for flag, name, minimum in _NUMBERS:
        value = getattr(args, name)
        if value is None:
            continue
        if minimum is None:
            values[name] = check_number(flag, value, positive=True)
        else:
            values[name] = check_count(flag, value, minimum=minimum)
    return TransformerConfig(
        **values,
        gated_ffn=args.gated_ffn,
        tied_embeddings=args.tied_embeddings,
        learned_positions=not args.no_learned_positions,
        norm=args.norm,
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
