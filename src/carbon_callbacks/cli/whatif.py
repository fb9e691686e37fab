"""`carbon-callbacks whatif RUN_DIR`: the run's footprint on other chips, in other regions, at other PUEs."""

from __future__ import annotations

from pathlib import Path

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._record.reader import read_summary
from carbon_callbacks._record.schema import strict_json
from carbon_callbacks._reports.whatif import format_whatif, whatif


def run_summary(run_dir: str) -> dict:
    """`RUN_DIR/run.json`, which is all a what-if needs (the step log is never read).

    Raises:
        InvalidInputError: for a missing folder or `run.json`, or one that cannot be used (naming the field).
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise InvalidInputError(f"run directory {run_dir!r} does not exist (or is not a directory).")
    summary = read_summary(folder)
    if summary is None:
        raise InvalidInputError(f"{folder / 'run.json'} is missing: a what-if needs the run's summary.")
    return summary


def add_lever_arguments(parser) -> None:
    """The what-if levers, shared with `carbon-callbacks plot`."""
    parser.add_argument("--chip", nargs="+", default=[], metavar="CHIP", help="other chips (chips table)")
    parser.add_argument("--region", nargs="+", default=[], metavar="REGION", help="other regions (regions table)")
    parser.add_argument(
        "--pue", nargs="+", default=[], metavar="PUE", help="other PUEs: numbers or provider names (pue table)"
    )
    parser.add_argument(
        "--mfu", type=float, help="utilization assumed on other chips (default: the run's own MFU)"
    )
    parser.add_argument("--no-moe-twin", action="store_true", help="leave out the MoE twin's sparse alternative")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "whatif",
        help="recompute a run's footprint on other chips, regions, PUEs, and as its MoE twin",
        description=(
            "Every combination of the values given (each lever also keeps the run's own) as one row, sorted by "
            "net CO2e, with the factor against the run. Chip and MoE-twin rows are estimates: energy scales by "
            "achieved FLOP/s per watt (the other chip's dense peak x the run's MFU, at its measured system power, "
            "else TDP)."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    add_lever_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.set_defaults(func=run)


def scenarios_from_args(summary: dict, args):
    return whatif(
        summary,
        chips=args.chip,
        regions=args.region,
        pues=args.pue,
        moe_twin=not args.no_moe_twin,
        mfu=args.mfu,
    )


def run(args) -> int:
    summary = run_summary(args.run_dir)
    scenarios = scenarios_from_args(summary, args)
    if args.json:
        print(strict_json([s.to_dict() for s in scenarios], indent=2))
        return 0
    print(f"what-if for {args.run_dir} (status {summary.get('status')}, {summary.get('steps')} steps)")
    print(format_whatif(scenarios))
    return 0
