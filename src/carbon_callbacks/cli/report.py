"""`carbon-callbacks report RUN_DIR`: the run's report card (paper Table 4 rows), as text, JSON, Markdown or LaTeX."""

from __future__ import annotations

from carbon_callbacks._reports.model_card import hf_co2_block, write_model_card
from carbon_callbacks._reports.report import read_report, render_json, render_latex, render_markdown, render_text


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="the report card of a run directory (paper Table 4 rows, dense/sparse split, model-card block)",
        description=(
            "Reads run.json and steps.csv and prints the rows of Patterson et al. 2021 Table 4 the run can fill, "
            "each with how it was obtained, plus what is missing. A crashed or partial run is reported as found."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds run.json / steps.csv)")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print a JSON object")
    form.add_argument("--markdown", action="store_true", help="print Markdown (table and model-card YAML)")
    form.add_argument("--latex", action="store_true", help="print a LaTeX table (booktabs)")
    card = parser.add_argument_group("model card")
    card.add_argument("--model-card", metavar="README.md",
                      help="write or update the co2_eq_emissions block in this Hugging Face model card's YAML header "
                      "(every other key and the body are kept)")
    card.add_argument("--training-type", help="the card's training_type, e.g. pre-training or fine-tuning "
                      "(default: the one given to the callback, if any)")
    card.add_argument("--location", help="the card's geographical_location (default: the region's place name)")
    existing = card.add_mutually_exclusive_group()
    existing.add_argument("--replace", action="store_true", help="replace a co2_eq_emissions block the card has")
    existing.add_argument("--add", action="store_true", help="keep the card's block and add this run's to it "
                          "(pre-training plus fine-tuning): the sums, and each run's block in co2_eq_emissions_parts")
    parser.set_defaults(func=run)


def run(args) -> int:
    report = read_report(args.run_dir)
    if args.model_card:
        block = hf_co2_block(report.summary, training_type=args.training_type, location=args.location)
        written = write_model_card(args.model_card, block, replace=args.replace, add=args.add)
        if written.note:
            print(f"carbon-callbacks: {written.note}")
        print(f"{written.how} co2_eq_emissions ({block.get('emissions')} g CO2e) in {written.path}")
        return 0
    if args.json:
        print(render_json(report))
    elif args.markdown:
        print(render_markdown(report))
    elif args.latex:
        print(render_latex(report))
    else:
        print(render_text(report))
    return 0
