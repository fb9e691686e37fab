"""`carbon-callbacks plot RUN_DIR... -o FILE.png`: loss against cumulative CO2e and energy, and what-if bars."""

from __future__ import annotations

import sys

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._reports.plot import plot_runs, plot_when
from carbon_callbacks.cli.whatif import add_lever_arguments, run_summary, scenarios_from_args, when_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="plot loss vs cumulative CO2e and energy (needs the `plot` extra: matplotlib)",
        description=(
            "Draws each run's loss against its cumulative gross CO2e and facility energy; with --chip/--region/"
            "--pue also the what-if bars of the first run. With --intensity-trace it draws instead the first run's "
            "power and cumulative CO2e above the trace, placed at --start (else where it ran), the best window of "
            "--best-start-within shaded."
        ),
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more run directories")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="image to write (.png, .svg, .pdf)")
    parser.add_argument("--label", nargs="+", metavar="LABEL", help="legend labels, one per run directory")
    parser.add_argument("--title", help="figure title")
    add_lever_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        path = _when(args) if args.intensity_trace else _runs(args)
    except ImportError as err:  # the `plot` extra is missing: the message has the pip command
        print(f"carbon-callbacks plot: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _runs(args):
    scenarios = None
    if args.chip or args.region or args.pue:
        scenarios = scenarios_from_args(run_summary(args.run_dirs[0]), args, args.run_dirs[0])
    return plot_runs(args.run_dirs, args.output, labels=args.label, scenarios=scenarios, title=args.title)


def _when(args):
    if len(args.run_dirs) != 1:
        raise InvalidInputError("plot --intensity-trace draws one run: give one RUN_DIR.")
    trace, profile, start, best = when_from_args(args, args.run_dirs[0])
    return plot_when(profile, trace, args.output, start=start, best=best, title=args.title)
