"""Ex ante: the energy and CO2e of GPT-3 and Switch Transformer, estimated before training, as in the paper.

Patterson et al. 2021 (arXiv:2104.10350), Table 4. Before a run, you know the model's FLOPs (from its shape and
the tokens it will see), the chips and the FLOP/s they sustain, their power, the datacenter's PUE and the grid.
This script:

1. counts GPT-3's training FLOPs exactly from its shape (the bundled `gpt3` architecture: Brown et al. 2020,
   Table 2.1: 96 layers, d_model 12288, 96 heads, 2048-token context; 300B tokens) and compares them with the
   paper's 3.14e23 and with 6 x N x tokens;
2. estimates energy and gross/net tCO2e of both models from FLOPs (GPT-3: from its architecture and tokens),
   chips, measured TFLOP/s per chip, the chips table's measured system power per chip, PUE and the datacenter's
   intensity, next to the paper's figures, with the chips' embodied (manufacturing) share beside them;
3. asks what-if: the same GPT-3 run in another grid and with another PUE.

Run: python examples/estimate_large_models.py   (pure Python: no framework needed)
"""

from __future__ import annotations

from carbon_callbacks import architecture_flops, estimate, get_paper_model, get_pue
from carbon_callbacks._paper.table4 import table4_inputs
from carbon_callbacks._reports.format import text_table

TOKENS_GPT3 = 300e9  # Brown et al. 2020, Section 2.2


def gpt3_flops() -> tuple[float, float]:
    """(training FLOPs counted from the shape, 6 x parameters x tokens)."""
    counted = architecture_flops(get_paper_model("gpt3").config, TOKENS_GPT3)
    return counted.total_model_flops, counted.six_n_flops


def main() -> None:
    paper = {row["model"]: row for row in table4_inputs()}
    counted, six_nd = gpt3_flops()
    print(f"GPT-3 training FLOPs counted from its shape: {counted:.3g} (6ND: {six_nd:.3g}; "
          f"paper: {float(paper['GPT-3']['total_flops']):.3g})\n")

    plans = {
        # model: (FLOPs, FLOPs source, chips, chip name, TFLOP/s per chip, region, PUE entry)
        "GPT-3": (counted, "counted", 10000, "v100", 24.6, "microsoft-gpt3", "paper-gpt3"),
        "Switch Transformer": (8.22e22, "paper", 1024, "tpu-v3", 34.4, "google-georgia-switch", "paper-switch"),
    }
    rows = []
    for model, (flops, source, chips, chip, tflops, region, pue_name) in plans.items():
        if source == "counted":  # from the architecture and its tokens
            run = estimate(chips=chips, model="gpt3", tokens=TOKENS_GPT3, tflops_achieved=tflops, chip=chip,
                           region=region, pue=get_pue(pue_name).pue)
        else:
            run = estimate(chips=chips, flops=flops, tflops_achieved=tflops, chip=chip, region=region,
                           pue=get_pue(pue_name).pue)
        row = paper[model]
        rows.append([
            model, source, f"{flops:.3g}", chip, run.watts_per_chip, run.hours / 24,
            run.energy_kwh / 1000, float(row["energy_mwh"]),
            run.gross_tco2e, float(row["gross_tco2e"]), run.net_tco2e, float(row["net_tco2e"]),
            run.embodied_co2e_kg / 1000 if run.embodied_co2e_kg is not None else None,
        ])
    print(text_table(
        ["model", "FLOPs from", "FLOPs", "chip", "W/chip", "days", "MWh", "paper", "gross t", "paper",
         "net t", "paper", "embodied t"],
        rows,
    ))
    print("\nW/chip is the chips table's measured system power (paper Table 3); the paper's Table 4 used the\n"
          "per-run measurement (GPT-3 330 W, Switch 245 W), hence the gaps in MWh. 'embodied t' is the chips'\n"
          "manufacturing share over a 6-year life (logic die only for V100 and TPU v3: LLMCarbon's figures), beside\n"
          "the operational tonnes, not in them.\n")

    print("What-if: the same GPT-3 run elsewhere (energy x intensity; PUE changes the energy)")
    base = plans["GPT-3"]
    whatif_rows = []
    for region, pue in (("microsoft-gpt3", 1.1), ("google-georgia", 1.1), ("fr", 1.1), ("pl", 1.1),
                        ("microsoft-gpt3", get_pue("industry-average").pue)):
        run = estimate(chips=base[2], flops=base[0], tflops_achieved=base[4], chip=base[3], region=region, pue=pue)
        whatif_rows.append([region, pue, run.energy_kwh / 1000, run.gross_tco2e, run.net_tco2e])
    print(text_table(["region", "PUE", "MWh", "gross tCO2e", "net tCO2e"], whatif_rows))


if __name__ == "__main__":
    main()
