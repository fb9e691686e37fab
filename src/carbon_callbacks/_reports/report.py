"""The report card of a run: the rows of the paper's Table 4 that its files can fill, each with how it was obtained.

`format_report(summary)` is the short text the adapters print at the end of training. `read_report(run_dir)` reads
a run directory (complete, partial after a crash, or written by an older version) into a `RunReport` that says
what it found and what is missing, and renders as text, Markdown, LaTeX or JSON. Nothing is invented: a value the
files do not hold is listed as missing, with the reason.

The card also carries the split of energy between dense and sparse (MoE) layers, apportioned by FLOPs, and the
Hugging Face model-card `co2_eq_emissions` block (https://huggingface.co/docs/hub/model-cards-co2).

The chips' embodied (manufacturing) CO2e has a row of its own, beside the operational rows and never added into
them; the model-card block keeps operational emissions in `emissions` and names embodied `embodied_emissions`.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from carbon_callbacks._constants import J_PER_KWH, SCHEMA_VERSION
from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._record.names import RUN_FILE, STEPS_FILE
from carbon_callbacks._record.reader import CRASH, read_run_files, read_summary
from carbon_callbacks._record.schema import strict_json
from carbon_callbacks._reports.format import fmt_number, text_table
from carbon_callbacks._reports.model_card import hf_co2_block, hf_yaml
from carbon_callbacks._warnings import CarbonCallbacksWarning

#: `info` keys an adapter may use for the per-step FLOPs by layer kind (from the analytic counter).
BREAKDOWN_KEYS = ("flops_by_layer_kind", "flops_breakdown", "flops_by_kind")
#: A layer kind whose name holds one of these words belongs to the sparse (MoE) part of the model.
_SPARSE_WORDS = ("moe", "expert", "router", "sparse", "switch")
SPLIT_METHOD = "estimate: apportioned by FLOPs"
#: The report row of the chips' manufacturing share (beside the operational CO2e, not part of it).
EMBODIED_ROW = "embodied kg CO2e (chips' manufacturing share; not in the rows above)"

#: Why a row can be empty, for the "missing" list.
_MISSING_REASON = {
    "parameters": "run.json info has no params_total (the model was not annotated)",
    "% parameters activated per token": "run.json info has no percent_active",
    "% parameters trained": "the adapter cannot see which parameters train (e.g. an optax mask); all are assumed to",
    "processor": "no chip was given to the callback",
    "number of processors": "not in run.json",
    "PUE": "not in run.json",
    "gross kg CO2e/kWh": "not in run.json",
    "net kg CO2e/kWh": "not in run.json",
    "average system power per processor (W)": "no energy or no wall time recorded",
    "achieved TFLOP/s per processor": "FLOPs were not counted",
    "MFU": "FLOPs not counted, or no dense peak FLOP/s for the chip and dtype",
    "training time (h)": "not in run.json",
    "total model FLOPs": "FLOPs were not counted",
    "energy (kWh, facility)": "no energy recorded",
    "gross kg CO2e": "no energy recorded",
    "net kg CO2e": "no energy recorded",
    "gross tCO2e": "no energy recorded",
    "net tCO2e": "no energy recorded",
    EMBODIED_ROW: "no chip with a published manufacturing footprint (or run.json written by an older version)",
}


def table4_rows(summary: dict) -> list[tuple[str, object, str]]:
    """(row, value, how it was obtained) for each Table 4 row the summary can fill; missing values are `None`."""
    sources = summary.get("sources") or {}
    info = summary.get("info") or {}
    hours = summary["wall_time_s"] / 3600.0 if summary.get("wall_time_s") is not None else None
    achieved = summary.get("achieved_flops_per_chip")
    gross_kg, net_kg = summary.get("gross_co2e_kg"), summary.get("net_co2e_kg")
    world = summary.get("world_size")
    power_how = summary.get("energy_method") or ""
    trace = info.get("intensity_trace")
    gross_how, net_how = "energy x gross intensity", "energy x net intensity"
    if trace:  # the second line the card prints: the annual figure the trace replaced
        gross_how = net_how = "each interval's energy x the trace over it"
    rows = [
        ("parameters", info.get("params_total"), info.get("params_source", "")),
        ("% parameters activated per token", info.get("percent_active"), info.get("params_source", "")),
        ("% parameters trained", info.get("percent_trainable"), "counted: parameters that require a gradient"),
        ("processor", summary.get("chip"), "given" if summary.get("chip") else ""),
        ("number of processors", summary.get("num_chips"), f"world size {world}" if world is not None else ""),
        ("PUE", summary.get("pue"), sources.get("pue", "")),
        ("gross kg CO2e/kWh", summary.get("gross_kg_per_kwh"), sources.get("gross_kg_per_kwh", "")),
        ("net kg CO2e/kWh", summary.get("net_kg_per_kwh"), sources.get("net_kg_per_kwh", "")),
        *([("annual gross kg CO2e/kWh (replaced)", trace.get("annual_kg_per_kwh"),
            trace.get("annual_source") or "no region given")] if trace else []),
        ("average system power per processor (W)", summary.get("avg_power_w_per_chip"), power_how),
        ("achieved TFLOP/s per processor", achieved / 1e12 if achieved else None, info.get("flops_method", "")),
        ("MFU", summary.get("mfu"), sources.get("peak_flops_per_chip", "")),
        ("training time (h)", hours, "measured: wall clock"),
        ("total model FLOPs", summary.get("total_model_flops"), info.get("flops_method", "")),
        ("energy (kWh, facility)", summary.get("energy_kwh"), f"IT energy x PUE; {summary.get('energy_method')}"),
        ("gross kg CO2e", gross_kg, gross_how),
        ("net kg CO2e", net_kg, net_how),
        ("gross tCO2e", gross_kg / 1000.0 if gross_kg is not None else None, gross_how),
        ("net tCO2e", net_kg / 1000.0 if net_kg is not None else None, net_how),
        (EMBODIED_ROW, summary.get("embodied_co2e_kg"), _embodied_how(summary)),
    ]
    return rows


def _embodied_how(summary: dict) -> str:
    """The embodied row's formula and footprint row, short; run.json `sources.embodied_co2e_kg` has every URL."""
    how = (summary.get("sources") or {}).get("embodied_co2e_kg") or ""
    if summary.get("embodied_co2e_kg") is None or "; lifetime" not in how:
        return how
    life = summary.get("lifetime_years")
    life_text = f"{life:g}-year life" if isinstance(life, (int, float)) else "life"
    return (
        f"{how.split('; lifetime')[0]}; {life_text}; footprint: table:chips/{summary.get('chip')} "
        "(sources: run.json sources.embodied_co2e_kg)"
    )


# ------------------------------------------------------------------------------------------- dense vs sparse
def flops_breakdown(info: dict) -> dict[str, float] | None:
    """The per-step FLOPs by layer kind an adapter stored in `info`, or `None` (hardware FLOPs preferred).

    Accepts `{kind: flops}` or `{"hardware": {kind: flops}, "model": {kind: flops}}` under any of `BREAKDOWN_KEYS`.
    """
    for key in BREAKDOWN_KEYS:
        value = info.get(key)
        if isinstance(value, dict) and value:
            for nested in ("hardware", "model"):
                if isinstance(value.get(nested), dict):
                    value = value[nested]
                    break
            numbers = {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float)) and v >= 0}
            return numbers or None
    return None


def is_sparse_kind(kind: str) -> bool:
    """Whether a layer kind (e.g. `"moe_experts"`, `"router"`) belongs to the sparse (MoE) layers."""
    return any(word in kind.lower() for word in _SPARSE_WORDS)


def energy_split(summary: dict) -> list[dict] | None:
    """The run's energy and CO2e split between dense and sparse (MoE) layers, apportioned by FLOPs.

    Returns:
        One dict per part (`"dense"`, `"sparse (MoE)"`) with `flops_share`, `energy_kwh`, `gross_co2e_kg`,
        `net_co2e_kg` and `method`; `None` unless the model has both parts and the run has an energy total.
    """
    breakdown = flops_breakdown(summary.get("info") or {})
    energy = summary.get("energy_kwh")
    if breakdown is None or energy is None:
        return None
    sparse = sum(v for k, v in breakdown.items() if is_sparse_kind(k))
    dense = sum(v for k, v in breakdown.items() if not is_sparse_kind(k))
    total = sparse + dense
    if sparse <= 0 or dense <= 0:
        return None
    parts = []
    for name, flops in (("dense", dense), ("sparse (MoE)", sparse)):
        share = flops / total
        part = {"part": name, "flops_share": share, "energy_kwh": energy * share, "method": SPLIT_METHOD}
        for key in ("gross_co2e_kg", "net_co2e_kg"):
            part[key] = summary[key] * share if summary.get(key) is not None else None
        parts.append(part)
    return parts


# ------------------------------------------------------------------------------------------- projection text
def projection_line(summary: dict) -> str | None:
    """One line on the projection logged during the run, compared with the final figure when the run finished."""
    proj = (summary.get("info") or {}).get("projection")
    if not isinstance(proj, dict) or proj.get("energy_kwh") is None:
        return None
    text = (
        f"projection after {proj.get('steps_observed')} of {proj.get('total_steps')} steps: "
        f"{fmt_number(proj['energy_kwh'])} kWh [{fmt_number(proj.get('energy_kwh_low'))}, "
        f"{fmt_number(proj.get('energy_kwh_high'))}], {fmt_number(proj.get('gross_co2e_kg'))} kg CO2e gross"
    )
    final = summary.get("energy_kwh")
    if summary.get("status") == "finished" and summary.get("steps") == proj.get("total_steps") and final:
        text += f"; final {fmt_number(final)} kWh ({proj['energy_kwh'] / final - 1.0:+.1%} off)"
    return text


def _first_source(how: str) -> str:
    """The first of several ` ; `-separated source URLs, for a terminal-width table (JSON keeps them all)."""
    first, _, rest = str(how).partition(" ; ")
    return first + (" ; ..." if rest else "")


def format_report(summary: dict) -> str:
    """The report as a text table, headed by the run's status and step count (what adapters print at the end)."""
    rows = [(name, value, _first_source(how)) for name, value, how in table4_rows(summary) if value is not None]
    head = (
        f"carbon-callbacks: {summary.get('steps')} steps, status {summary.get('status')}, "
        f"{fmt_number(summary.get('energy_kwh'))} kWh, {fmt_number(summary.get('gross_co2e_kg'))} kg CO2e gross, "
        f"{fmt_number(summary.get('net_co2e_kg'))} kg CO2e net"
    )
    parts = [head, text_table(["row (paper Table 4)", "value", "how obtained"], rows)]
    split = energy_split(summary)
    if split:
        parts.append(_split_text(split))
    if (line := projection_line(summary)) is not None:
        parts.append(line)
    return "\n".join(parts)


def _split_text(split: list[dict]) -> str:
    rows = [(p["part"], p["flops_share"], p["energy_kwh"], p["gross_co2e_kg"], p["net_co2e_kg"]) for p in split]
    return f"energy by layer kind ({SPLIT_METHOD}):\n" + text_table(
        ["layers", "FLOP share", "kWh", "kg CO2e gross", "kg CO2e net"], rows
    )


# ------------------------------------------------------------------------------------------- run directories
@dataclass
class RunReport:
    """What a run directory holds, ready to render.

    Attributes:
        run_dir: the directory read.
        summary: `run.json`, or, when it is missing, the totals the step log alone supports (labelled).
        records: the step records of `steps.csv`.
        found: what was read, one line per file.
        missing: what the report cannot show, with the reason, one line per item.
        notes: anything the reader should know (crashed run, older version, files that disagree, lines skipped).
        problems: the step log's lines that were skipped (also in `notes`), for readers that show no notes.
    """

    run_dir: str
    summary: dict
    records: list[dict]
    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def warn_problems(self) -> None:
        """Warns about each skipped line of the step log other than a torn last one (a crash mid-write)."""
        for problem in self.problems:
            if CRASH not in problem:
                warnings.warn(f"carbon-callbacks: {problem}", CarbonCallbacksWarning, stacklevel=3)

    def rows(self) -> list[tuple[str, object, str]]:
        return table4_rows(self.summary)

    def to_dict(self) -> dict:
        """The card as plain data (`--json`)."""
        return {
            "run_dir": self.run_dir,
            "status": self.summary.get("status"),
            "steps": self.summary.get("steps"),
            "found": self.found,
            "missing": self.missing,
            "notes": self.notes,
            "rows": [{"row": n, "value": v, "how": h} for n, v, h in self.rows()],
            "energy_split": energy_split(self.summary),
            "projection": (self.summary.get("info") or {}).get("projection"),
            "co2_eq_emissions": hf_co2_block(self.summary),
        }


def _sum_or_none(records: list[dict], key: str) -> float | None:
    values = [r.get(key) for r in records]
    if not values or any(v is None for v in values):
        return None
    return float(sum(values))


def summary_from_records(records: list[dict]) -> dict:
    """The totals the step log alone supports, for a run whose `run.json` is missing; every source says so."""
    label = f"derived from {STEPS_FILE} ({RUN_FILE} missing)"
    last = records[-1]
    it_j = _sum_or_none(records, "it_energy_j")
    step_kwh = _sum_or_none(records, "step_energy_kwh")
    step_co2 = _sum_or_none(records, "step_co2e_kg")
    energy = last.get("energy_kwh")
    methods = sorted({r["energy_method"] for r in records if r.get("energy_method")})
    seconds = _sum_or_none(records, "seconds")
    return {
        "status": f"unknown ({RUN_FILE} missing)",
        "steps": int(sum(r.get("num_steps", 1) for r in records)),
        "wall_time_s": seconds,
        "energy_kwh": energy,
        "it_energy_kwh": it_j / J_PER_KWH if it_j is not None else None,
        "gross_co2e_kg": last.get("co2e_kg"),
        "net_co2e_kg": last.get("co2e_net_kg"),
        "pue": step_kwh * J_PER_KWH / it_j if step_kwh and it_j else None,
        "gross_kg_per_kwh": step_co2 / step_kwh if step_co2 is not None and step_kwh else None,
        "net_kg_per_kwh": last["co2e_net_kg"] / energy if last.get("co2e_net_kg") is not None and energy else None,
        "total_model_flops": _sum_or_none(records, "model_flops"),
        "tokens": _sum_or_none(records, "tokens"),
        "energy_method": "+".join(methods) or None,
        "sources": {"pue": label, "gross_kg_per_kwh": label, "net_kg_per_kwh": label},
        "info": {},
    }


def read_report(run_dir: str | os.PathLike) -> RunReport:
    """Reads a run directory into a `RunReport`, saying what it found and what is missing.

    A run whose `run.json` says what its step log holds (`step_log`, this version's runs) is reported from
    `run.json` alone, however long its log (`RunReport.records` is then empty: read them with `read_run`); an older
    or crashed run's log is read, around a torn last line or a bad line, which the notes name.

    Raises:
        InvalidInputError: when the directory does not exist or holds neither `run.json` nor a step log, or
            `run.json` cannot be used (one line naming the file and the field).
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise InvalidInputError(f"run directory {str(path)!r} does not exist (or is not a directory).")
    try:
        summary = read_summary(path)
        if summary is not None and isinstance(summary.get("step_log"), dict):
            return _assemble(str(path), summary, None, [])
        files = read_run_files(path)
    except OSError as err:
        raise InvalidInputError(f"run directory {str(path)!r} cannot be read: {err}") from None
    if files.summary is None and not files.records:
        raise InvalidInputError(
            f"run directory {str(path)!r} holds neither {RUN_FILE} nor a step in {STEPS_FILE}: "
            "nothing to report (did the run start? was output_dir set to another place?)."
        )
    return _assemble(str(path), files.summary, files.records, files.problems)


def report_of(summary: dict, run_dir: str | os.PathLike) -> RunReport:
    """The card of a run from its summary in memory, as the run writes `report.md` at its end: the step log is
    described by the summary's `step_log`, not read again."""
    return _assemble(str(run_dir), summary, None, [])


def _assemble(run_dir: str, summary: dict | None, records: list[dict] | None, problems: list[str]) -> RunReport:
    found, missing, notes = [], [], list(problems)
    step_log = (summary or {}).get("step_log") if isinstance((summary or {}).get("step_log"), dict) else None
    if records is None:
        logged_records = step_log.get("records") if step_log else None
        logged_steps = step_log.get("steps_covered") if step_log else None
    else:
        logged_records, logged_steps = len(records), int(sum(r.get("num_steps", 1) for r in records))
    if logged_records:
        found.append(f"{STEPS_FILE}: {logged_records} records covering {logged_steps} steps")
    else:
        missing.append(f"{STEPS_FILE}: no step records (no plot, projection or per-step figures)")
    if summary is None:
        missing.append(f"{RUN_FILE}: missing (crashed before its first write?); site, chip and model facts unknown")
        summary = summary_from_records(records or [])
        notes.append(f"totals are derived from {STEPS_FILE} alone; rows it cannot support are listed as missing")
    else:
        found.append(
            f"{RUN_FILE}: schema {summary.get('schema_version')}, status {summary.get('status')}, "
            f"{summary.get('steps')} steps"
        )
        notes += _record_notes(summary, logged_steps)
    derived = summary.get("status") == f"unknown ({RUN_FILE} missing)"
    for name, value, _how in table4_rows(summary):
        if value is None:
            reason = f"needs {RUN_FILE}" if derived else _MISSING_REASON.get(name, "not recorded")
            embodied_how = (summary.get("sources") or {}).get("embodied_co2e_kg") or ""
            if name == EMBODIED_ROW and embodied_how.startswith("unknown: "):
                reason = embodied_how[len("unknown: "):]
            missing.append(f"{name}: {reason}")
    return RunReport(run_dir, summary, records or [], found, missing, notes, list(problems))


def _record_notes(summary: dict, logged_steps: int | None) -> list[str]:
    """What a reader should know about how the run was recorded: its status, version, lineage, faults, step log."""
    notes = []
    schema = summary.get("schema_version")
    if schema != SCHEMA_VERSION:
        notes.append(
            f"{RUN_FILE} has schema_version {schema!r} (this version reads {SCHEMA_VERSION}): written by "
            "another version; only the keys it has are shown"
        )
    status = summary.get("status")
    if status == "running":
        notes.append("status 'running': the run crashed or is still going; figures cover the steps flushed so far")
    elif status in ("interrupted", "failed"):
        notes.append(f"status {status!r}: the run stopped early; figures cover the steps it completed")
    parent = summary.get("parent")
    if isinstance(parent, dict):
        notes.append(
            f"forked from run {parent.get('run_id')} ({parent.get('run_dir')}) at step {parent.get('steps')}; "
            + ("the totals include the parent's" if parent.get("totals_include_parent") else "the totals are its own")
        )
    resumed = (summary.get("info") or {}).get("resumed_from")
    if isinstance(resumed, dict):
        notes.append(
            f"resumed at step {resumed.get('step')}: {resumed.get('steps_discarded')} steps run after that checkpoint "
            f"({fmt_number(resumed.get('energy_kwh_discarded'))} kWh) were lost with the crash and are not in the "
            "totals"
        )
    faults = summary.get("meter_faults")
    if isinstance(faults, dict) and faults.get("windows"):
        reasons = ", ".join(f"{k} x{v}" for k, v in (faults.get("reasons") or {}).items())
        notes.append(
            f"the meter's reading was unusable for {faults['windows']} window(s), {fmt_number(faults.get('seconds'))} "
            f"s, estimated and labelled instead" + (f" ({reasons})" if reasons else "")
        )
    step_log = summary.get("step_log")
    steps = summary.get("steps")
    if isinstance(step_log, dict) and (step_log.get("gap_count") or step_log.get("waiting")):
        shown = ", ".join(f"{a}-{b}" for a, b in (step_log.get("gaps") or [])[:5])
        notes.append(
            f"{STEPS_FILE} covers {step_log.get('steps_covered')} of the {steps} steps in the totals"
            + (f"; missing steps {shown}" + (" ..." if step_log.get("gap_count", 0) > 5 else "") if shown else "")
            + (f"; {step_log['waiting']} records could not be written" if step_log.get("waiting") else "")
        )
    elif logged_steps is not None and steps is not None and steps != logged_steps and not isinstance(step_log, dict):
        notes.append(
            f"{RUN_FILE} counts {steps} steps, {STEPS_FILE} {logged_steps} "
            "(a resumed run keeps its earlier steps in the totals; a crash can cut the log)"
        )
    return notes


# ------------------------------------------------------------------------------------------- renderers
def render_text(report: RunReport) -> str:
    """The card for a terminal: what was found, the Table 4 rows, the split, the projection, the HF block."""
    parts = [f"run directory: {report.run_dir}", *(f"  found: {f}" for f in report.found)]
    parts += [f"  note: {n}" for n in report.notes]
    parts.append(format_report(report.summary))
    if report.missing:
        parts.append("missing:\n" + "\n".join(f"  - {m}" for m in report.missing))
    parts.append("Hugging Face model card metadata:\n" + hf_yaml(hf_co2_block(report.summary)))
    return "\n".join(parts)


def _md_cell(value: object) -> str:
    return fmt_number(value).replace("|", "\\|")


def render_markdown(report: RunReport) -> str:
    """The card as Markdown: a Table 4 table, the split, notes, missing items and the model-card YAML."""
    s = report.summary
    out = [
        f"### Carbon report: `{report.run_dir}`",
        "",
        f"Status {s.get('status')}, {s.get('steps')} steps.",
        "",
        "| row (paper Table 4) | value | how obtained |",
        "|---|---:|---|",
    ]
    out += [f"| {n} | {_md_cell(v)} | {_md_cell(h)} |" for n, v, h in report.rows() if v is not None]
    split = energy_split(s)
    if split:
        out += ["", f"Energy by layer kind ({SPLIT_METHOD}):", "",
                "| layers | FLOP share | kWh | kg CO2e gross | kg CO2e net |", "|---|---:|---:|---:|---:|"]
        out += [
            f"| {p['part']} | {_md_cell(p['flops_share'])} | {_md_cell(p['energy_kwh'])} | "
            f"{_md_cell(p['gross_co2e_kg'])} | {_md_cell(p['net_co2e_kg'])} |"
            for p in split
        ]
    if (line := projection_line(s)) is not None:
        out += ["", line[0].upper() + line[1:] + "."]
    for title, items in (("Notes", report.notes), ("Missing", report.missing)):
        if items:
            out += ["", f"{title}:", "", *(f"- {item}" for item in items)]
    out += ["", "Model-card metadata:", "", "```yaml", hf_yaml(hf_co2_block(s)), "```"]
    return "\n".join(out)


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: object) -> str:
    """`text` with LaTeX's special characters escaped."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def render_latex(report: RunReport) -> str:
    """The Table 4 rows as a LaTeX `table` (booktabs), ready for a paper's appendix."""
    body = [
        f"  {latex_escape(n)} & {latex_escape(fmt_number(v))} & {latex_escape(h)} \\\\"
        for n, v, h in report.rows()
        if v is not None
    ]
    caption = (
        f"Energy and CO$_2$e of the run ({latex_escape(report.summary.get('steps'))} steps, status "
        f"{latex_escape(report.summary.get('status'))}), method of Patterson et al.\\ (2021)."
    )
    return "\n".join(
        [
            "% needs \\usepackage{booktabs}",
            "\\begin{table}[t]",
            "\\centering\\small",
            "\\begin{tabular}{lrp{0.45\\linewidth}}",
            "\\toprule",
            "Row (Table 4) & Value & How obtained \\\\",
            "\\midrule",
            *body,
            "\\bottomrule",
            "\\end{tabular}",
            f"\\caption{{{caption}}}",
            "\\end{table}",
        ]
    )


def render_json(report: RunReport) -> str:
    """The card as strict JSON: a value that is not a finite number is `null`, and its row's `how` says so."""
    card = report.to_dict()
    for row in card["rows"]:
        value = row["value"]
        if isinstance(value, float) and not math.isfinite(value):
            row["value"], row["how"] = None, f"not a finite number ({value!r}); {row['how']}"
    return strict_json(card, indent=2, sort_keys=False)
