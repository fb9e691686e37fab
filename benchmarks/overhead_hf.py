"""Per-step overhead of `CarbonCallback` in a real Hugging Face `Trainer.train`, next to transformers' own
`CodeCarbonCallback`.

A GPT-2 built from its config (2 layers, d_model 64, batches of 8 x 32 tokens: a step of a few ms on one CPU
thread, so that any per-step cost shows) is trained for `--steps` steps in three configurations, interleaved
`--repeats` times so drift in the machine's speed hits all three alike:

- `baseline`: no tracking (`report_to="none"`);
- `carbon-callbacks`: `CarbonCallback(intensity=...)` with the default meter (what a user gets), logging every
  `--logging-steps` steps as the Trainer does;
- `codecarbon`: transformers' `CodeCarbonCallback`, its tracker an `OfflineEmissionsTracker(country_iso_code=...)`
  (the callback's own `EmissionsTracker` looks the machine's location up online; offline: no network). Skipped,
  with a message, when `codecarbon` is not installed (`pip install ".[bench]"`).

Step time is the time between consecutive `on_step_begin` hooks (so it includes every callback's work at the step
end and at the log rows), measured by the same timing callback in every configuration. The median is the per-step
cost; the mean also shows the work done once per logging row, and `train wall` includes start-up and shutdown
(our one FLOP count of the step on fake tensors, CodeCarbon's tracker start and stop).

Run: python benchmarks/overhead_hf.py [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers

from carbon_callbacks.transformers import CarbonCallback

from _interleaved import HOOK_KEYS, configs_with_codecarbon, hook_figures, interleaved, print_hooks

#: The GPT-2 and its batches: a few ms per training step on one core of a 2020s x86 CPU.
LAYERS, D_MODEL, HEADS, VOCAB, BATCH, LENGTH = 2, 64, 4, 256, 8, 32


class StepTimer(transformers.TrainerCallback):
    """Records `time.perf_counter()` at every `on_step_begin`."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self.starts.append(time.perf_counter())

    def step_times(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[warmup:], self.starts[warmup + 1:])]


class _Timed:
    """Hooks whose per-step work (`on_step_begin`, `on_substep_end`, `on_step_end`, `on_log`) adds its run time to
    `hook_s`, one entry per step (a load-independent figure), and whose `on_train_begin` and `on_train_end` time
    themselves into `start_s` and `end_s`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hook_s: list[float] = [0.0]
        self.start_s = self.end_s = 0.0

    def on_train_begin(self, *args, **kwargs):
        start = time.perf_counter()
        super().on_train_begin(*args, **kwargs)
        self.start_s = time.perf_counter() - start

    def on_train_end(self, *args, **kwargs):
        start = time.perf_counter()
        super().on_train_end(*args, **kwargs)
        self.end_s = time.perf_counter() - start

    def _timed(self, method, *args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            self.hook_s[-1] += time.perf_counter() - start

    def on_step_begin(self, *args, **kwargs):
        return self._timed(super().on_step_begin, *args, **kwargs)

    def on_substep_end(self, *args, **kwargs):
        return self._timed(super().on_substep_end, *args, **kwargs)

    def on_step_end(self, *args, **kwargs):
        self._timed(super().on_step_end, *args, **kwargs)
        self.hook_s.append(0.0)

    def on_log(self, *args, **kwargs):
        return self._timed(super().on_log, *args, **kwargs)


class TimedCarbonCallback(_Timed, CarbonCallback):
    """`CarbonCallback`, its hooks and its forward pre-hook timed."""

    def _see_forward(self, *args):
        return self._timed(super()._see_forward, *args)


class TimedFloor(_Timed, transformers.TrainerCallback):
    """The same timers around the Trainer's empty hooks: what the timing itself reads in a run (the floor)."""


def codecarbon_callback(country: str, root: Path):
    """transformers' `CodeCarbonCallback` with an offline tracker in place of its online one (set before
    `on_init_end`, where the callback would make its own)."""
    import codecarbon
    from transformers.integrations import CodeCarbonCallback

    callback = CodeCarbonCallback()
    callback.tracker = codecarbon.OfflineEmissionsTracker(country_iso_code=country, output_dir=str(root),
                                                          save_to_file=False, log_level="error")
    return callback


def run_once(config: str, steps: int, root: Path, country: str, intensity: float, logging_steps: int) -> dict:
    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=LAYERS, n_embd=D_MODEL, n_head=HEADS, vocab_size=VOCAB, n_positions=LENGTH, bos_token_id=0,
        eos_token_id=0))
    ids = torch.randint(0, VOCAB, (BATCH * 32, LENGTH), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in ids]
    timer = StepTimer()
    callbacks: list = [timer]
    ours = None
    if config == "carbon-callbacks":
        ours = TimedCarbonCallback(intensity=intensity)
        callbacks.append(ours)
    elif config == "codecarbon":
        callbacks.append(codecarbon_callback(country, root))
    elif config == "floor":
        ours = TimedFloor()
        callbacks.append(ours)
    args = transformers.TrainingArguments(
        output_dir=str(root), max_steps=steps, per_device_train_batch_size=BATCH, logging_steps=logging_steps,
        report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # our report, the Trainer's printed rows
        trainer.train()
    wall = time.perf_counter() - start
    times = timer.step_times(warmup=10)
    result = {"median": statistics.median(times), "mean": statistics.fmean(times), "wall": wall}
    if ours is not None:  # the first step holds the one-off FLOP count; the rest is the per-step cost
        result.update(hook_figures(ours.hook_s[1:-1]), first_hook=ours.hook_s[0], start=ours.start_s,
                      end=ours.hook_s[-1] + ours.end_s)  # the run ends at the closing log row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per train() (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--logging-steps", type=int, default=10, help="the Trainer's logging_steps (default 10)")
    parser.add_argument("--country", default="FRA", help="CodeCarbon's offline country (default FRA)")
    parser.add_argument("--intensity", type=float, default=0.056, help="kg CO2e/kWh for ours (default 0.056)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    configs, codecarbon_version = configs_with_codecarbon()
    results = interleaved(lambda config, steps, root: run_once(config, steps, root, args.country, args.intensity,
                                                               args.logging_steps), configs, args.steps, args.repeats)

    def med(config: str, key: str) -> float:
        return statistics.median(r[key] for r in results[config])

    base = {key: med("baseline", key) for key in ("median", "mean", "wall")}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, codecarbon {codecarbon_version}, "
          f"threads {args.threads}, {args.steps} steps x {args.repeats} repeats, logging_steps {args.logging_steps}")
    print(f"{'config':18} {'median step ms':>15} {'ratio':>8} {'mean step ms':>13} {'ratio':>8} "
          f"{'train wall s':>13} {'ratio':>8}")
    for config in configs:
        row = [med(config, key) for key in ("median", "mean", "wall")]
        print(f"{config:18} {row[0] * 1e3:15.3f} {row[0] / base['median']:8.4f} {row[1] * 1e3:13.3f} "
              f"{row[1] / base['mean']:8.4f} {row[2]:13.2f} {row[2] / base['wall']:8.4f}")
    floor = [run_once("floor", args.steps, Path(tmp), args.country, args.intensity, args.logging_steps)["hook_median"]
             for tmp in [tempfile.mkdtemp() for _ in range(3)]]
    print_hooks({key: med("carbon-callbacks", key) for key in HOOK_KEYS}, base["median"],
                "the interval closes: meter read and the carbon/* keys of every log row", statistics.median(floor),
                results["carbon-callbacks"][0])

if __name__ == "__main__":
    main()
