"""`carbon-callbacks whatif RUN_DIR`: the run's footprint on other chips, in other regions, at other PUEs."""

from __future__ import annotations

from pathlib import Path

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._record.reader import read_run, read_summary
from carbon_callbacks._record.schema import strict_json
from carbon_callbacks._reports.whatif import format_whatif, whatif
from carbon_callbacks._reports.when import best_start, parse_duration, power_profile, shifted
from carbon_callbacks._site.trace import parse_time
from carbon_callbacks.cli._site_args import add_trace_arguments, trace_from_args


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
    when = parser.add_argument_group("when (the run's measured power profile moved on an intensity trace)")
    add_trace_arguments(when)
    when.add_argument("--start", metavar="TIME", help="move the run to start here (ISO 8601 UTC: 2026-06-01T02:00Z)")
    when.add_argument("--best-start-within", metavar="DURATION",
                      help="find the start with the least CO2e within this long (48h, 2d) after --start, else "
                           "after the run's own start")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "whatif",
        help="recompute a run's footprint on other chips, regions, PUEs, starts, and as its MoE twin",
        description=(
            "Every combination of the values given (each lever also keeps the run's own) as one row, sorted by "
            "net CO2e, with the factor against the run. Chip and MoE-twin rows are estimates: energy scales by "
            "achieved FLOP/s per watt (the other chip's dense peak x the run's MFU, at its measured system power, "
            "else TDP). With --intensity-trace, --start and --best-start-within move the run's measured power "
            "profile (its step log) to other starts on the trace."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    add_lever_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.set_defaults(func=run)


def when_from_args(args, run_dir: str):
    """`(trace, power profile, --start or None, best start or None)` of the run in `run_dir` on `--intensity-trace`
    (`when`), or `None` without a trace; shared by `whatif` and `plot`."""
    trace = trace_from_args(args)
    if trace is None:
        if args.start or args.best_start_within:
            raise InvalidInputError("--start and --best-start-within need --intensity-trace FILE.")
        return None
    profile = power_profile(read_run(run_dir)[1])
    start = parse_time(args.start, "--start") if args.start else None
    best = None
    if args.best_start_within:
        earliest = start if start is not None else profile[0][0]
        best = best_start(profile, trace, earliest, parse_duration(args.best_start_within))
    return trace, profile, start, best


def shifts_from_args(args, run_dir: str) -> list:
    """The run in `run_dir` moved by `--start` and `--best-start-within` on `--intensity-trace`, or `[]`."""
    if args.intensity_trace and not (args.start or args.best_start_within):
        raise InvalidInputError("--intensity-trace needs --start TIME or --best-start-within DURATION.")
    when = when_from_args(args, run_dir)
    if when is None:
        return []
    trace, profile, start, best = when
    return [shift for shift in (shifted(profile, trace, start) if start is not None else None, best) if shift]


def scenarios_from_args(summary: dict, args, run_dir: str):
    return whatif(
        summary,
        chips=args.chip,
        regions=args.region,
        pues=args.pue,
        moe_twin=not args.no_moe_twin,
        mfu=args.mfu,
        shifts=shifts_from_args(args, run_dir),
    )


def run(args) -> int:
    summary = run_summary(args.run_dir)
    scenarios = scenarios_from_args(summary, args, args.run_dir)
    if args.json:
        print(strict_json([s.to_dict() for s in scenarios], indent=2))
        return 0
    print(f"what-if for {args.run_dir} (status {summary.get('status')}, {summary.get('steps')} steps)")
    print(format_whatif(scenarios))
    return 0
