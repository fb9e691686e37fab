"""`carbon-callbacks estimate`: a run's energy and CO2e from its size, before or after the fact.

Before training the size can be the architecture: `--model NAME` (the paper's five models) or `--hf-config
config.json`, with `--tokens`; total FLOPs = tokens x the analytic FLOPs per token, shown beside 6 x N x tokens.
The chips' embodied (manufacturing) share is printed beside the operational CO2e, never added into it.
"""

from __future__ import annotations

import json

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._paper.estimate import estimate
from carbon_callbacks._reports.format import fmt_number, text_table
from carbon_callbacks._reports.when import shifted
from carbon_callbacks._site.trace import IntensityTrace, parse_time
from carbon_callbacks.cli._site_args import add_site_arguments, site_kwargs


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="estimate a run's energy and CO2e (hours x chips x W x PUE x intensity), from its size or architecture",
        description=(
            "Energy = hours x chips x average system power per chip x PUE; CO2e = energy x intensity. The hours "
            "can come from total FLOPs, or from an architecture and its training tokens, over the achieved FLOP/s. "
            "Embodied (manufacturing) CO2e of the chips is reported beside, never added in."
        ),
    )
    parser.add_argument("--chips", type=float, required=True, help="number of processors")
    time = parser.add_argument_group("training time (one of)")
    time.add_argument("--days", type=float, help="training days")
    time.add_argument("--hours", type=float, help="training hours")
    time.add_argument("--flops", type=float, help="total FLOPs of the run (needs --tflops-achieved or --mfu)")
    time.add_argument(
        "--model", help="bundled architecture: t5-11b, meena, gshard-600b, switch-c, gpt3 (needs --tokens)"
    )
    time.add_argument("--hf-config", help="a Hugging Face config.json: the architecture (needs --tokens)")
    arch = parser.add_argument_group("architecture workload (with --model or --hf-config)")
    arch.add_argument("--tokens", type=float, help="training tokens (input tokens of an encoder-decoder)")
    arch.add_argument("--seq-len", type=int, help="training sequence length (default: the model's)")
    arch.add_argument("--decoder-seq-len", type=int, help="target length of an encoder-decoder (default: the model's)")
    arch.add_argument(
        "--full-attention", action="store_true",
        help="count decoder self-attention as full S x S (default: causal, the lower triangle)",
    )
    speed = parser.add_argument_group("achieved speed, with --flops / --model / --hf-config (one of)")
    speed.add_argument("--tflops-achieved", type=float, help="measured TFLOP/s per chip")
    speed.add_argument("--mfu", type=float, help="model FLOPs utilization, times the --chip's dense peak")
    speed.add_argument("--dtype", default="bf16", help="dtype of the dense peak --mfu refers to (default: bf16)")
    power = parser.add_argument_group("power (one of)")
    power.add_argument("--watts", type=float, help="average system power per chip, W")
    power.add_argument("--chip", help="chip name: the table's measured system power (else TDP), peak and footprint")
    parser.add_argument(
        "--lifetime-years", type=float,
        help="service life the chips' manufacturing footprint is spread over (default: 6, as BLOOM's footprint "
             "and Google's TPU life-cycle assessment)",
    )
    add_site_arguments(parser)
    parser.add_argument("--start", metavar="TIME",
                        help="with --intensity-trace: when the run starts (ISO 8601 UTC, 2026-06-01T02:00Z)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    parser.set_defaults(func=run)


def _hf_config(args):
    """The `TransformerConfig` of `--hf-config` with the workload flags (TransformerConfig.from_hf)."""
    from carbon_callbacks.cli.flops import read_hf_config
    from carbon_callbacks.flops.analytic import TransformerConfig

    values = read_hf_config(args.hf_config)
    workload = {k: v for k, v in (("seq_len", args.seq_len), ("decoder_seq_len", args.decoder_seq_len)) if v}
    return TransformerConfig.from_hf(values, **workload)


def _estimate(args, model, seq_len, decoder_seq_len, site: dict):
    return estimate(
        chips=args.chips,
        days=args.days,
        hours=args.hours,
        flops=args.flops,
        tflops_achieved=args.tflops_achieved,
        watts=args.watts,
        chip=args.chip,
        model=model,
        tokens=args.tokens,
        seq_len=seq_len,
        decoder_seq_len=decoder_seq_len,
        causal=not args.full_attention,
        mfu=args.mfu,
        dtype=args.dtype,
        lifetime_years=args.lifetime_years,
        **site,
    )


def run(args) -> int:
    if args.model and args.hf_config:
        raise InvalidInputError("--model and --hf-config both name the architecture; give one.")
    model = args.model
    seq_len, decoder_seq_len = args.seq_len, args.decoder_seq_len
    if args.hf_config:
        model = _hf_config(args)
        seq_len = decoder_seq_len = None  # already applied by from_hf
    site = site_kwargs(args)
    trace = site["intensity"] if isinstance(site["intensity"], IntensityTrace) else None
    if (trace is None) != (args.start is None):
        raise InvalidInputError("--intensity-trace and --start go together: the trace's intensity over the run "
                                "depends on when it starts.")
    hours = None
    if trace is not None:  # the run's hours first, then the trace over them (power even through the run)
        hours = _estimate(args, model, seq_len, decoder_seq_len, {**site, "intensity": trace.mean()}).hours
        start = parse_time(args.start, "--start")
        site["intensity"] = shifted([(start, start + hours * 3600.0, 1.0)], trace, start).kg_per_kwh
    result = _estimate(args, model, seq_len, decoder_seq_len, site)
    if trace is not None:
        result.sources["gross_kg_per_kwh"] = (f"trace {trace.source} ({trace.column}) from {args.start} over the "
                                              f"run's {hours:.4g} h, power even through it")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    s = result.sources
    rows = []
    model_how, _, assumed = s.get("model", "").partition("; assumed: ")
    if result.total_model_flops is not None:
        rows += [
            ["architecture", args.model or args.hf_config, model_how],
            ["tokens", result.tokens, s["tokens"]],
            ["parameters (all)", result.params_total, "counted from the architecture"],
            ["parameters per token", result.params_active_per_token, "counted: all but the experts not routed to"],
            ["total model FLOPs", result.total_model_flops, result.flops_method],
            ["6 x N x tokens", result.flops_6n, "rule of thumb, for comparison only (N = parameters per token)"],
        ]
    elif result.total_flops is not None:
        rows.append(["total FLOPs", result.total_flops, "given"])
    rows += [
        ["hours", result.hours, s["hours"]],
        ["chips", result.chips, s["chips"]],
        ["W per chip", result.watts_per_chip, s["watts_per_chip"]],
        ["PUE", result.pue, s["pue"]],
        ["gross kg/kWh", result.gross_kg_per_kwh, s["gross_kg_per_kwh"]],
        ["net kg/kWh", result.net_kg_per_kwh, s["net_kg_per_kwh"]],
    ]
    print(text_table(["input", "value", "source"], rows))
    if assumed:
        print(f"assumed for this architecture: {assumed}")
    if result.embodied_co2e_kg is not None:
        embodied = (
            f"{fmt_number(result.embodied_co2e_kg)} kg CO2e (manufacturing share of the chips over "
            f"{result.lifetime_years:g} years; beside, not in, the figures above)\n         {s['embodied_co2e_kg']}"
        )
    else:
        embodied = f"not estimated: {s['embodied_co2e_kg']}"
    print(
        f"\nenergy: {fmt_number(result.energy_kwh)} kWh (facility; IT {fmt_number(result.it_energy_kwh)} kWh)"
        f"\ngross:  {fmt_number(result.gross_tco2e)} t CO2e (operational)"
        f"\nnet:    {fmt_number(result.net_tco2e)} t CO2e (operational)"
        f"\nembodied: {embodied}"
    )
    return 0
