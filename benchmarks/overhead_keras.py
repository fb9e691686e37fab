"""Step-time overhead of `carbon_callbacks.keras.CarbonCallback` on each Keras backend.

For each backend (a process of its own: a backend is chosen when Keras is imported), a reference GPT is trained
for `--steps` steps per `fit`, alternately without and with the callback (default meter, default interval), after
a warm-up fit that compiles the step. Two times per fit:

- steps: from the first batch's start to the epoch's end, after Keras waited for every step (and after the
  callback's own epoch-end work). This is the per-step overhead; a timing callback that only overrides
  `on_train_batch_begin` and `on_epoch_end` takes it, so the baseline keeps Keras's asynchronous dispatch.
- hook: `on_train_batch_end` alone, called 20,000 times as Keras calls it (µs per call, meter reads included).
- fit: the whole `fit` call, which adds the callback's once-per-fit work (meter, run files, the printed report).
- CodeCarbon: the same fit with `codecarbon.OfflineEmissionsTracker` started before and stopped after it (the
  `[bench]` extra; skipped when it is not installed), in the same interleaved run.

One callback instance serves every fit, as one long `fit` would: the FLOP count (a trace of the model, once per
batch shape and callback) is paid in its first fit, reported apart as `first fit extra s`.

The ratio reported is median(with) / median(without) over `--repeats` interleaved pairs.

Usage:
    python benchmarks/overhead_keras.py [--backends tensorflow jax torch] [--steps 200] [--repeats 5]
        [--size small|medium]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SIZES = {
    # The reference DENSE model of the tests: a few ms per step on a laptop CPU.
    "small": {},
    # Wider and deeper: tens of ms per step on a CPU.
    "medium": {"num_layers": 4, "d_model": 256, "num_heads": 8, "seq_len": 64, "batch_size": 8, "d_ff": 1024},
}


def worker(steps: int, repeats: int, size: str) -> dict:
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

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # each fit writes its run to ./carbon-runs/<timestamp>
        one_fit(None)  # compiles the step
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
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.steps, args.repeats, args.size)))
        return
    print("| backend | size | steps x repeats | ms/step without | ms/step with | step-time ratio | fit ratio "
          "| first fit extra s | hook µs/call | CodeCarbon step ratio | CodeCarbon fit ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for backend in args.backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        command = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--repeats", str(args.repeats),
                   "--size", args.size]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"| {backend} | failed: {done.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(lines[-1][len("RESULT "):])
        print(
            f"| {r['backend']} | {r['size']} | {r['steps']} x {r['repeats']} | {r['step_ms_without']:.2f} | "
            f"{r['step_ms_with']:.2f} | {r['step_ratio']:.4f} | {r['fit_ratio']:.4f} | {r['first_fit_extra_s']:.2f} | "
            f"{r['hook_us_per_call']:.1f} | {_ratio(r['codecarbon_step_ratio'])} | "
            f"{_ratio(r['codecarbon_fit_ratio'])} |",
            flush=True,
        )


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    main()
