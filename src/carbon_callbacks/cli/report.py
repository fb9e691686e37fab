"""`carbon-callbacks report RUN_DIR`: the run's report card (paper Table 4 rows), as text, JSON, Markdown or LaTeX."""

from __future__ import annotations

from carbon_callbacks._reports.report import read_report, render_json, render_latex, render_markdown, render_text


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="the report card of a run directory (paper Table 4 rows, dense/sparse split, model-card block)",
        description=(
            "Reads run.json and steps.jsonl and prints the rows of Patterson et al. 2021 Table 4 the run can fill, "
            "each with how it was obtained, plus what is missing. A crashed or partial run is reported as found."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds run.json / steps.jsonl)")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print a JSON object")
    form.add_argument("--markdown", action="store_true", help="print Markdown (table and model-card YAML)")
    form.add_argument("--latex", action="store_true", help="print a LaTeX table (booktabs)")
    parser.set_defaults(func=run)


def run(args) -> int:
    report = read_report(args.run_dir)
    if args.json:
        print(render_json(report))
    elif args.markdown:
        print(render_markdown(report))
    elif args.latex:
        print(render_latex(report))
    else:
        print(render_text(report))
    return 0
