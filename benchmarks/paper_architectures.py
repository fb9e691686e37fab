"""Table 4 of Patterson et al. 2021 recomputed from the five models' architectures and token counts alone.

For each model the FLOPs are counted from its shape (`data/paper_models.csv`, each row with its papers) and its
paper's token count; energy = FLOPs / (chips x Table 4's measured FLOP/s) x chips x measured W x PUE, tCO2e =
energy x Table 4's intensities. The only input not taken from Table 4 is the FLOP count, so the FLOPs error
carries through to energy and tCO2e. LLMCarbon's error is its 6 x N x D from the inputs its repository publishes.

Run: python benchmarks/paper_architectures.py [--json]   (pure Python, a second or two)
"""

from __future__ import annotations

import argparse
import json

from carbon_callbacks._paper.table4 import LLMCARBON, reproduce_from_architectures


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def markdown(rows) -> str:
    out = [
        "| model | tokens | params all / per token | FLOPs ours / Table 4 (err) | 6ND err | MWh ours / Table 4 (err) "
        "| gross tCO2e ours / Table 4 (err) | net tCO2e err | LLMCarbon err | tokens Table 4 implies |",
        "|---|---:|---:|---|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.model} | {r.tokens:.3g} | {r.params_total / 1e9:.4g}B / {r.params_active_per_token / 1e9:.3g}B "
            f"| {r.total_flops:.3g} / {r.paper_total_flops:.3g} ({pct(r.rel_error('total_flops'))}) "
            f"| {pct(r.flops_6n / r.paper_total_flops - 1)} "
            f"| {r.energy_mwh:.4g} / {r.paper_energy_mwh:g} ({pct(r.rel_error('energy_mwh'))}) "
            f"| {r.gross_tco2e:.4g} / {r.paper_gross_tco2e:g} ({pct(r.rel_error('gross_tco2e'))}) "
            f"| {pct(r.rel_error('net_tco2e'))} | {pct(r.llmcarbon_rel_error)} | {r.implied_tokens:.3g} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = reproduce_from_architectures()
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    print(markdown(rows))
    within = [r.model for r in rows if abs(r.rel_error("energy_mwh")) <= 0.05]
    print(f"\nwithin 5% of Table 4's energy: {', '.join(within) or 'none'} ({len(within)} of {len(rows)})")
    print(f"LLMCarbon column: {LLMCARBON}.")
    for r in rows:
        print(f"\n{r.model} ({r.name}): tokens: {r.tokens_source}")
        if r.assumptions:
            print(f"  assumed: {r.assumptions}")


if __name__ == "__main__":
    main()
