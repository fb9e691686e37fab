"""Step-time overhead of `carbon_callbacks.flax.track` on the reference GPT (Linen `TrainState`, jitted step).

For each model size, the same jitted step runs `--steps` steps bare and `--steps` steps wrapped by `track` (default
meter, default 50-step interval), back to back in alternating order, `--repeats` times after a warm-up; the
overhead is the median of the pairs' ratios. A third measurement times the wrapper alone around a Python no-op step
with the same arguments, which gives its cost per step in microseconds without the noise of the step itself.
Before them, `--timed-fits` runs with a fresh tracked step each (each counts its FLOPs) time our work in place:
`_after_step` on every step, the run's start and `close` (the fixed cost), beside as many floor runs (the same
timers around an empty call).

Usage: python benchmarks/overhead_flax.py [--steps 200] [--repeats 5] [--markdown] [--timed-fits 4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
import warnings

import jax
import optax
from flax.training import train_state

from carbon_callbacks._run.session import RunSession
from carbon_callbacks.flax import TrackedStep, track
from carbon_callbacks.flops import transformer_flops
from carbon_callbacks.models import DENSE
from carbon_callbacks.models.flax_gpt import GPT, loss_fn, random_batch

from _interleaved import hook_figures, in_place_result, print_in_place

SIZES = {
    "DENSE (reference)": DENSE,
    "DENSE x2 width, seq 64": DENSE.with_(d_model=128, d_ff=512, seq_len=64),
}


def build(config):
    model = GPT(config)
    tokens, targets = random_batch(config)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adamw(1e-3))

    def train_step(state, tokens, targets):
        def compute_loss(params):
            return loss_fn(state.apply_fn({"params": params}, tokens), targets)

        loss, grads = jax.value_and_grad(compute_loss)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss}

    return train_step, state, tokens, targets


def timed(step, state, tokens, targets, steps: int) -> tuple[float, object]:
    """Seconds per step over `steps` steps, from the first dispatch to the last result being ready."""
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, tokens, targets)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / steps, state


def noop(state, tokens, targets):
    return state, {"loss": 0.0}


class NoopJitted:
    """A no-op step with a jit-like cache: empty before the first call, one entry after it."""

    def __init__(self) -> None:
        self.calls = 0

    def _cache_size(self) -> int:
        return min(self.calls, 1)

    def __call__(self, state, tokens, targets):
        self.calls += 1
        return state, {"loss": 0.0}


def wrapper_cost(step_fn, state, tokens, targets, steps: int, repeats: int, out_dir: str) -> float:
    """Median seconds per step that `track` adds around `step_fn`."""
    tracked = track(step_fn, region="us-central1", output_dir=out_dir)
    tracked(state, tokens, targets)  # the first call counts FLOPs
    bare_s, tracked_s = [], []
    for _ in range(repeats):
        for fn, out in ((step_fn, bare_s), (tracked, tracked_s)):
            start = time.perf_counter()
            for _ in range(steps):
                fn(state, tokens, targets)
            out.append((time.perf_counter() - start) / steps)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        tracked.close()
    return statistics.median(tracked_s) - statistics.median(bare_s)


class TimedStep(TrackedStep):
    """`track`'s step with our work timed in place: the run's start (the first call), `_after_step` on every step
    (the first holds the FLOP count) and `close`. `floor=True` times an empty call in `_after_step`'s place."""

    def __init__(self, train_step, out_dir: str, floor: bool = False) -> None:
        super().__init__(train_step, RunSession(region="us-central1", output_dir=out_dir))
        self.floor, self.after_s, self.start_s, self.end_s = floor, [], 0.0, 0.0

    def _start(self, args):
        start = time.perf_counter()
        super()._start(args)
        self.start_s = time.perf_counter() - start

    def _after_step(self, out, args, kwargs):
        start = time.perf_counter()
        tracked = None if self.floor else super()._after_step(out, args, kwargs)
        self.after_s.append(time.perf_counter() - start)
        return tracked

    def close(self, status=None):
        start = time.perf_counter()
        closed = super().close(status)
        self.end_s = time.perf_counter() - start
        return closed

    def figures(self) -> dict[str, float]:
        return {**hook_figures(self.after_s[1:]), "first_hook": self.after_s[0], "start": self.start_s,
                "end": self.end_s}


def in_place(config, steps: int, fits: int, out_dir: str) -> dict:
    """Our work timed in place over `fits` runs of `steps` steps, each a new step function jitted and tracked (it
    counts its FLOPs, and its jit cache starts empty, as in a new script), beside as many floor runs; the first is
    the process's first."""
    runs, floors = [], []
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for _ in range(fits):
            for floor, out in ((False, runs), (True, floors)):
                train_step, state, tokens, targets = build(config)
                tracked = TimedStep(jax.jit(train_step), out_dir, floor=floor)
                _, state = timed(tracked, state, tokens, targets, steps)
                tracked.close()
                out.append(tracked.figures())
    return in_place_result(runs, floors)


def measure(name: str, config, steps: int, repeats: int, out_dir: str) -> dict:
    train_step, state, tokens, targets = build(config)
    bare = jax.jit(train_step)
    tracked = track(bare, region="us-central1", output_dir=out_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the default meter's note that this machine has no RAPL
        for step in (bare, tracked):  # compile, count FLOPs, open the first interval
            _, state = timed(step, state, tokens, targets, 3)
    bare_s, tracked_s = [], []
    for repeat in range(repeats):  # pairs run back to back, in alternating order, so load drift cancels
        order = ((bare, bare_s), (tracked, tracked_s)) if repeat % 2 == 0 else ((tracked, tracked_s), (bare, bare_s))
        for step, out in order:
            seconds, state = timed(step, state, tokens, targets, steps)
            out.append(seconds)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        tracked.close()
        summary = tracked.summary()

    # The wrapper alone, around Python no-op steps with the same (state, tokens, targets) tree (no device work):
    # one that looks jitted (a `_cache_size()` that stays 1 after the first call: the fast path, which skips the
    # input signature) and a plain function (no jit cache to consult: the signature is computed every step).
    wrapper_us = {
        path: wrapper_cost(step_fn, state, tokens, targets, steps, repeats, out_dir) * 1e6
        for path, step_fn in (("jitted", NoopJitted()), ("plain", noop))
    }
    bare_med, tracked_med = statistics.median(bare_s), statistics.median(tracked_s)
    return {
        "model": name,
        "params": transformer_flops(config).params_total,
        "bare_ms": bare_med * 1e3,
        "tracked_ms": tracked_med * 1e3,
        "ratio": statistics.median(t / b for t, b in zip(tracked_s, bare_s)),
        "wrapper_us": wrapper_us["jitted"],
        "wrapper_plain_us": wrapper_us["plain"],
        "wrapper_share": wrapper_us["jitted"] / 1e6 / bare_med,
        "energy_method": summary["energy_method"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--timed-fits", type=int, default=4, help="runs timed in place, and as many floor runs")
    args = parser.parse_args()
    rows, timed_rows = [], []
    with tempfile.TemporaryDirectory() as out_dir:
        for name, config in SIZES.items():
            timed_rows.append((name, in_place(config, args.steps, args.timed_fits, out_dir)))
            rows.append(measure(name, config, args.steps, args.repeats, out_dir))
    header = ["model", "params", "bare ms/step", "tracked ms/step", "ratio", "wrapper us/step (jitted)",
              "as % of bare step", "wrapper us/step (not jitted)"]
    lines = [header]
    for r in rows:
        lines.append([
            r["model"],
            f"{r['params']:,}",
            f"{r['bare_ms']:.3f}",
            f"{r['tracked_ms']:.3f}",
            f"{r['ratio']:.4f}",
            f"{r['wrapper_us']:.1f}",
            f"{100 * r['wrapper_share']:.2f}%",
            f"{r['wrapper_plain_us']:.1f}",
        ])
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines[1:]:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        for line in lines:
            print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s); "
          f"{args.steps} steps x {args.repeats} repeats, medians")
    print_in_place(f"Our work timed in place (`_after_step`), {args.timed_fits} runs of {args.steps} steps per "
                   "model, medians of the runs after the process's first; floor: the same timers around an empty "
                   "call", timed_rows)


if __name__ == "__main__":
    main()
