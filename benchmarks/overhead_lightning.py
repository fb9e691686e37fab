"""Per-step overhead of `CarbonCallback` in a real `Trainer.fit`, next to CodeCarbon's tracker around `fit`.

A small MLP whose training step takes about 10 ms on one CPU thread is fitted for `--steps` steps, in three
configurations, interleaved `--repeats` times so drift in the machine's speed hits all three alike:

- `baseline`: no tracking;
- `carbon-callbacks`: `CarbonCallback(intensity=...)` with the default meter (what a user gets);
- `codecarbon`: `codecarbon.OfflineEmissionsTracker(country_iso_code=...)` started before `fit` and stopped
  after it (offline: no network). Skipped, with a message, when `codecarbon` is not installed.

Step time is the time between consecutive `on_train_batch_start` hooks (so it includes every callback's work
at the batch end), measured by the same timing callback in every configuration. The median is what the issue
asks for; the mean also shows work done once per logging interval, and `fit wall` includes start-up and
shutdown.

Run: python benchmarks/overhead_lightning.py [--steps 400] [--repeats 3]
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

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from carbon_callbacks.lightning import CarbonCallback

from _interleaved import HOOK_KEYS, configs_with_codecarbon, hook_figures, interleaved, print_hooks

#: Widths of the MLP and the batch: about 10 ms per training step on one core of a 2020s x86 CPU.
D_IN, D_HIDDEN, BATCH = 256, 512, 128


class StepTimer(pl.Callback):
    """Records `time.perf_counter()` at every `on_train_batch_start`."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def step_times(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[warmup:], self.starts[warmup + 1 :])]


class MLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(D_IN, D_HIDDEN), torch.nn.ReLU(), torch.nn.Linear(D_HIDDEN, D_HIDDEN),
            torch.nn.ReLU(), torch.nn.Linear(D_HIDDEN, D_IN),
        )

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = torch.nn.functional.mse_loss(self.net(x), x)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class _Timed:
    """Hooks that time themselves (load-independent figures): the per-batch ones into `hook_s`, one entry per step,
    `on_train_start` and `on_train_end` into `start_s` and `end_s`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hook_s: list[float] = []
        self.start_s = self.end_s = 0.0

    def on_train_start(self, *args) -> None:
        start = time.perf_counter()
        super().on_train_start(*args)
        self.start_s = time.perf_counter() - start

    def on_train_batch_start(self, *args) -> None:
        start = time.perf_counter()
        super().on_train_batch_start(*args)
        self.hook_s.append(time.perf_counter() - start)

    def on_train_batch_end(self, *args) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(*args)
        self.hook_s[-1] += time.perf_counter() - start

    def on_train_end(self, *args) -> None:
        start = time.perf_counter()
        super().on_train_end(*args)
        self.end_s = time.perf_counter() - start


class TimedCarbonCallback(_Timed, CarbonCallback):
    """`CarbonCallback`, its hooks timed."""


class TimedFloor(_Timed, pl.Callback):
    """The same timers around Lightning's empty hooks: what the timing itself reads in a fit (the floor)."""


def run_once(config: str, steps: int, root: Path, country: str, intensity: float) -> dict:
    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    data = DataLoader(TensorDataset(torch.randn(BATCH * 16, D_IN)), batch_size=BATCH)
    timer = StepTimer()
    callbacks: list[pl.Callback] = [timer]
    ours = None
    if config == "carbon-callbacks":
        ours = TimedCarbonCallback(intensity=intensity, output_dir=root / "carbon")
        callbacks.append(ours)
    elif config == "floor":
        ours = TimedFloor()
        callbacks.append(ours)
    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=steps,
        callbacks=callbacks,
        logger=pl.loggers.CSVLogger(root, name=config),
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    module = MLP()
    start = time.perf_counter()
    tracker = None
    if config == "codecarbon":
        from codecarbon import OfflineEmissionsTracker

        tracker = OfflineEmissionsTracker(
            country_iso_code=country, output_dir=str(root), save_to_file=False, log_level="error"
        )
        tracker.start()
    with contextlib.redirect_stdout(io.StringIO()):  # our end-of-fit report
        trainer.fit(module, data)
    if tracker is not None:
        tracker.stop()
    wall = time.perf_counter() - start
    times = timer.step_times(warmup=10)
    result = {"median": statistics.median(times), "mean": statistics.fmean(times), "wall": wall}
    if ours is not None:  # the first step holds the one-off FLOP count; the rest is the per-step cost
        result.update(hook_figures(ours.hook_s[1:]), first_hook=ours.hook_s[0], start=ours.start_s, end=ours.end_s)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps per fit (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--country", default="FRA", help="CodeCarbon's offline country (default FRA)")
    parser.add_argument("--intensity", type=float, default=0.056, help="kg CO2e/kWh for ours (default 0.056)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    configs, codecarbon_version = configs_with_codecarbon()
    results = interleaved(lambda config, steps, root: run_once(config, steps, root, args.country, args.intensity),
                          configs, args.steps, args.repeats)

    def med(config: str, key: str) -> float:
        return statistics.median(r[key] for r in results[config])

    base = {key: med("baseline", key) for key in ("median", "mean", "wall")}
    print(f"torch {torch.__version__}, {pl.__name__} {pl.__version__}, codecarbon {codecarbon_version}, "
          f"threads {args.threads}, {args.steps} steps x {args.repeats} repeats")
    print(f"{'config':18} {'median step ms':>15} {'ratio':>8} {'mean step ms':>13} {'ratio':>8} "
          f"{'fit wall s':>11} {'ratio':>8}")
    for config in configs:
        row = [med(config, key) for key in ("median", "mean", "wall")]
        print(f"{config:18} {row[0] * 1e3:15.3f} {row[0] / base['median']:8.4f} {row[1] * 1e3:13.3f} "
              f"{row[1] / base['mean']:8.4f} {row[2]:11.2f} {row[2] / base['wall']:8.4f}")
    floor = [run_once("floor", args.steps, Path(tmp), args.country, args.intensity)["hook_median"]
             for tmp in [tempfile.mkdtemp() for _ in range(3)]]
    print_hooks({key: med("carbon-callbacks", key) for key in HOOK_KEYS}, base["median"],
                "the interval closes: meter read and pl_module.log_dict of the carbon/* metrics",
                statistics.median(floor), results["carbon-callbacks"][0])


if __name__ == "__main__":
    main()
