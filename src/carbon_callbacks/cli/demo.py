"""`carbon-callbacks demo`: the main job: a dense transformer and its Switch twin trained on CPU, compared."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train a dense transformer and its Switch (MoE) twin on CPU with Lightning and compare their footprint",
        description=(
            "Trains the dense reference transformer and its Switch twin (same active parameters per token) on a "
            "text that ships with Python, byte-level, on CPU, with the Lightning callback; prints both report "
            "cards, the dense-vs-sparse comparison, and writes the plot. Needs the `lightning` and `plot` extras."
        ),
    )
    parser.add_argument("--output-dir", default="demo-output", help="where the run directories and the plot go")
    parser.add_argument("--region", default="us-average", help="region assumed (regions table)")
    parser.add_argument("--pue", type=float, default=None, help="PUE assumed (default: the industry average)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (default: the demo's)")
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        import matplotlib  # noqa: F401
        import pytorch_lightning  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        print(
            f"carbon-callbacks demo: error: {err.name} is not installed; the demo needs the lightning and plot "
            "extras: pip install 'carbon-callbacks[lightning,plot,reports]' (or run `make demo`).",
            file=sys.stderr,
        )
        return 2
    from carbon_callbacks.demo import main

    return main(output_dir=args.output_dir, region=args.region, pue=args.pue, steps=args.steps)
