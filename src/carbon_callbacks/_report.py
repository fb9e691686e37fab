"""The short end-of-training report: the rows of the paper's Table 4 that a run's `run.json` can fill.

Each row carries how its value was obtained (measured / modeled / given / counted, and the source), so the
printed text can be pasted into a paper as it is.
"""

from __future__ import annotations

from carbon_callbacks._format import fmt_number, text_table


def table4_rows(summary: dict) -> list[tuple[str, object, str]]:
    """(row, value, how it was obtained) for each Table 4 row the summary can fill; missing values are `None`."""
    sources = summary.get("sources", {})
    info = summary.get("info", {})
    hours = summary["wall_time_s"] / 3600.0 if summary.get("wall_time_s") is not None else None
    achieved = summary.get("achieved_flops_per_chip")
    rows = [
        ("parameters", info.get("params_total"), info.get("params_source", "")),
        ("% parameters activated per token", info.get("percent_active"), info.get("params_source", "")),
        ("processor", summary.get("chip"), "given" if summary.get("chip") else ""),
        ("number of processors", summary.get("num_chips"), f"world size {summary.get('world_size')}"),
        ("PUE", summary.get("pue"), sources.get("pue", "")),
        ("gross kg CO2e/kWh", summary.get("gross_kg_per_kwh"), sources.get("gross_kg_per_kwh", "")),
        ("net kg CO2e/kWh", summary.get("net_kg_per_kwh"), sources.get("net_kg_per_kwh", "")),
        ("average system power per processor (W)", summary.get("avg_power_w_per_chip"), summary.get("energy_method") or ""),
        ("achieved TFLOP/s per processor", achieved / 1e12 if achieved else None, info.get("flops_method", "")),
        ("MFU", summary.get("mfu"), sources.get("peak_flops_per_chip", "")),
        ("training time (h)", hours, "measured: wall clock"),
        ("total model FLOPs", summary.get("total_model_flops"), info.get("flops_method", "")),
        ("energy (kWh, facility)", summary.get("energy_kwh"), f"IT energy x PUE; {summary.get('energy_method')}"),
        ("gross kg CO2e", summary.get("gross_co2e_kg"), "energy x gross intensity"),
        ("net kg CO2e", summary.get("net_co2e_kg"), "energy x net intensity"),
    ]
    return rows


def format_report(summary: dict) -> str:
    """The report as a text table, headed by the run's status and step count."""
    rows = [(name, value, how) for name, value, how in table4_rows(summary) if value is not None]
    head = (
        f"carbon-callbacks: {summary.get('steps')} steps, status {summary.get('status')}, "
        f"{fmt_number(summary.get('energy_kwh'))} kWh, {fmt_number(summary.get('gross_co2e_kg'))} kg CO2e gross, "
        f"{fmt_number(summary.get('net_co2e_kg'))} kg CO2e net"
    )
    return head + "\n" + text_table(["row (paper Table 4)", "value", "how obtained"], rows)
