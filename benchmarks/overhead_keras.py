"""Step-time overhead of `carbon_callbacks.keras.CarbonCallback` on each Keras backend.

For each backend (a process of its own: a backend is chosen when Keras is imported), a reference GPT is trained
for `--steps` steps per `fit`, alternately without and with the callback (default meter, default interval), after
a warm-up fit that compiles the step. Two times per fit:

- steps: from the first batch's start to the epoch's end, after Keras waited for every step (and after the
  callback's own epoch-end work). This is the per-step overhead; a timing callback that only overrides
  `on_train_batch_begin` and `on_epoch_end` takes it, so the baseline keeps Keras's asynchronous dispatch.
- hook: `on_train_batch_end` alone, called 20,000 times as Keras calls it (µs per call, meter reads included).
- in place: `--timed-fits` fits with a fresh callback each (so each counts its FLOPs) whose per-step work is timed
  where Keras runs it (`_before_batch` as the train function takes a batch, `on_train_batch_end`, `_after_call`),
  beside as many floor fits (the same timers around empty calls); the fixed cost is `on_train_begin`, the first
  batch's work (its FLOP count) and `on_train_end`. The first of them is the process's first tracked fit.
- fit: the whole `fit` call, which adds the callback's once-per-fit work (meter, run files, the printed report).
- CodeCarbon: the same fit with `codecarbon.OfflineEmissionsTracker` started before and stopped after it (the
  `[bench]` extra; skipped when it is not installed), in the same interleaved run.

One callback instance serves every fit, as one long `fit` would: the FLOP count (a trace of the model, once per
batch shape and callback) is paid in its first fit, reported apart as `first fit extra s`.

The ratio reported is median(with) / median(without) over `--repeats` interleaved pairs.

Usage:
    python benchmarks/overhead_keras.py [--backends tensorflow jax torch] [--steps 200] [--repeats 5]
        [--size small|medium] [--timed-fits 4]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _interleaved import hook_figures, in_place_result, print_in_place

SIZES = {
    # The reference DENSE model of the tests: a few ms per step on a laptop CPU.
    "small": {},
    # Wider and deeper: tens of ms per step on a CPU.
    "medium": {"num_layers": 4, "d_model": 256, "num_heads": 8, "seq_len": 64, "batch_size": 8, "d_ff": 1024},
}


#: Where our per-step work runs in a Keras fit (`Timed`).
PER_STEP = ("_before_batch", "on_train_batch_end", "_after_call")


def worker(steps: int, repeats: int, size: str, timed_fits: int = 4) -> dict:
    """Runs in a process whose `KERAS_BACKEND` is set; returns the timings."""
    import contextlib
    import io
    import logging

    import keras
    import numpy as np

    from carbon_callbacks.keras import CarbonCallback
    from carbon_callbacks.models import DENSE
    from carbon_callbacks.models.keras_gpt import build_gpt, loss_fn

    logging.disable(logging.WARNING)
    config = DENSE.with_(**SIZES[size])
    model = build_gpt(config)
    model.compile(keras.optimizers.SGD(0.01), loss_fn())
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, (steps * config.batch_size, config.seq_len + 1)).astype("int32")
    x, y = tokens[:, :-1], tokens[:, 1:]

    class Clock(keras.callbacks.Callback):
        """Times the steps without overriding a batch-end hook (which would turn off async dispatch)."""

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    def one_fit(callback, codecarbon: bool = False) -> tuple[float, float]:
        clock = Clock()
        callbacks = [callback] if callback is not None else []
        begin = time.perf_counter()
        tracker = None
        if codecarbon:  # CodeCarbon's tracker around the fit, offline (no network), as its docs show for Keras
            from codecarbon import OfflineEmissionsTracker

            tracker = OfflineEmissionsTracker(country_iso_code="USA", save_to_file=False, log_level="error")
            tracker.start()
        with contextlib.redirect_stdout(io.StringIO()):
            model.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=0, callbacks=[*callbacks, clock])
        if tracker is not None:
            tracker.stop()
        return clock.seconds, time.perf_counter() - begin

    def timed(method, per_step: bool):
        """`method` of `CarbonCallback`, timed into `self.times`; on a floor callback, per-step ones time nothing."""

        def run(self, *args, **kwargs):
            start = time.perf_counter()
            result = None if per_step and self.floor else method(self, *args, **kwargs)
            self.times[method.__name__].append(time.perf_counter() - start)
            return result

        return run

    class Timed(CarbonCallback):
        """Our work timed where Keras runs it: per step, `_before_batch` (the main thread, as the train function
        takes a batch; the first holds the FLOP count), `on_train_batch_end` and `_after_call`; and the ends.
        `floor=True` times empty calls in the same places: what the timers themselves read."""

        def __init__(self, floor: bool = False, **kwargs) -> None:
            super().__init__(**kwargs)
            self.floor = floor
            self.times: dict[str, list[float]] = collections.defaultdict(list)

        on_train_begin = timed(CarbonCallback.on_train_begin, per_step=False)
        on_train_end = timed(CarbonCallback.on_train_end, per_step=False)
        _before_batch = timed(CarbonCallback._before_batch, per_step=True)
        on_train_batch_end = timed(CarbonCallback.on_train_batch_end, per_step=True)
        _after_call = timed(CarbonCallback._after_call, per_step=True)

        def figures(self) -> dict[str, float]:
            places = [self.times[name] for name in PER_STEP if self.times[name]]
            per_step = [sum(place[i] for place in places) for i in range(min(map(len, places)))]
            return {**hook_figures(per_step[1:]), "first_hook": per_step[0],
                    "start": self.times["on_train_begin"][0], "end": self.times["on_train_end"][0]}

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # each fit writes its run to ./carbon-runs/<timestamp>
        one_fit(None)  # compiles the step
        # Our work timed in place: fresh callbacks (each counts its FLOPs), alternating with floor fits; the first
        # is the process's first tracked fit.
        in_place, floors = [], []
        for _ in range(timed_fits):
            for floor, out in ((False, in_place), (True, floors)):
                callback = Timed(floor=floor, intensity=0.4)
                one_fit(callback)
                out.append(callback.figures())
        base_first = one_fit(None)[1]
        # One callback for every fit: its FLOP count (a trace, once per batch shape) is then paid once, here.
        callback = CarbonCallback(intensity=0.4)
        first_fit = one_fit(callback)[1]
        try:
            import codecarbon  # noqa: F401  (the [bench] extra)

            peer = True
        except ImportError:
            peer = False
        base_steps, base_fit, with_steps, with_fit, cc_steps, cc_fit = [], [], [], [], [], []
        for _ in range(repeats):
            s, f = one_fit(None)
            base_steps.append(s)
            base_fit.append(f)
            s, f = one_fit(callback)
            with_steps.append(s)
            with_fit.append(f)
            if peer:
                s, f = one_fit(None, codecarbon=True)
                cc_steps.append(s)
                cc_fit.append(f)
        # The hook alone, called as Keras calls it (default meter and interval: one meter read per 50 calls).
        hook = CarbonCallback(intensity=0.4, flops=1e9)
        hook.set_model(model)
        hook.set_params({"epochs": 1, "steps": None, "verbose": 0})
        with contextlib.redirect_stdout(io.StringIO()):
            hook.on_train_begin()
            hook.on_epoch_begin(0)
            calls = 20_000
            begin = time.perf_counter()
            for batch in range(calls):
                hook.on_train_batch_end(batch, {"loss": 1.0})
            hook_us = 1e6 * (time.perf_counter() - begin) / calls
            hook.on_train_end()
    return {
        **in_place_result(in_place, floors),
        "hook_us_per_call": hook_us,
        "first_fit_extra_s": first_fit - base_first,
        "backend": keras.backend.backend(),
        "size": size,
        "steps": steps,
        "repeats": repeats,
        "step_ms_without": 1e3 * statistics.median(base_steps) / steps,
        "step_ms_with": 1e3 * statistics.median(with_steps) / steps,
        "step_ratio": statistics.median(with_steps) / statistics.median(base_steps),
        "fit_ratio": statistics.median(with_fit) / statistics.median(base_fit),
        "codecarbon_step_ratio": statistics.median(cc_steps) / statistics.median(base_steps) if cc_steps else None,
        "codecarbon_fit_ratio": statistics.median(cc_fit) / statistics.median(base_fit) if cc_fit else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--timed-fits", type=int, default=4, help="fits timed in place, and as many floor fits")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.steps, args.repeats, args.size, args.timed_fits)))
        return
    print("| backend | size | steps x repeats | ms/step without | ms/step with | step-time ratio | fit ratio "
          "| first fit extra s | hook µs/call | CodeCarbon step ratio | CodeCarbon fit ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    in_place = []
    for backend in args.backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        command = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--repeats", str(args.repeats),
                   "--size", args.size, "--timed-fits", str(args.timed_fits)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"| {backend} | failed: {done.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(lines[-1][len("RESULT "):])
        in_place.append(r)
        print(
            f"| {r['backend']} | {r['size']} | {r['steps']} x {r['repeats']} | {r['step_ms_without']:.2f} | "
            f"{r['step_ms_with']:.2f} | {r['step_ratio']:.4f} | {r['fit_ratio']:.4f} | {r['first_fit_extra_s']:.2f} | "
            f"{r['hook_us_per_call']:.1f} | {_ratio(r['codecarbon_step_ratio'])} | "
            f"{_ratio(r['codecarbon_fit_ratio'])} |",
            flush=True,
        )

    print_in_place("Our work timed in place (per step: `_before_batch` + `on_train_batch_end` + `_after_call`), "
                   "medians of the fits after the process's first; floor: the same timers around empty calls",
                   [(r["backend"], r) for r in in_place])


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    main()
