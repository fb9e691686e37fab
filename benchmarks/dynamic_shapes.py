"""Fit time with and without carbon-callbacks when most batches bring a new sequence length (dynamic padding).

The workload of issue 11: a 2-layer GPT (d_model 128, 4 heads, d_ff 512, vocabulary 512), batches of 8 sequences
whose length is drawn from 16-192 for every step, `--steps` steps. Each adapter runs in a process of its own
(`--child`), bare and tracked fits interleaved `--repeats` times after one warm-up of each, so the machine's
drift hits both alike. Reported: the median fit-time ratio (tracked / bare), the distinct shapes, and how many
steps the FLOP counter traced directly (the rest came from the length polynomial, `_run/length_fit.py`). With the
`[bench]` extra, the same fit under CodeCarbon's offline tracker joins each repeat (Lightning and Keras).

Keras runs on the torch backend (the JAX backend recompiles the step for every new shape, with or without us).
Flax jit-compiles every new shape: one jitted step serves every fit of the process, so the warm-up fits compile
each shape and the timed fits compare running, not compiling.

Run: python benchmarks/dynamic_shapes.py [--steps 120] [--repeats 3] [--only lightning,keras,flax]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

SITE = {"intensity": 0.4, "pue": 1.1}


def config():
    from carbon_callbacks.models import DENSE

    return DENSE.with_(d_model=128, num_heads=4, d_ff=512, vocab_size=512, seq_len=192, batch_size=8)


def lengths(steps: int, seed: int = 0) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randint(16, 192) for _ in range(steps)]


def quiet():
    """Mutes the report card and the frameworks' chatter, which are the same in both arms."""
    return contextlib.redirect_stdout(io.StringIO())


@contextlib.contextmanager
def codecarbon_around(enabled: bool):
    """CodeCarbon's offline tracker started before and stopped after the fit (the `[bench]` extra)."""
    if not enabled:
        yield
        return
    from codecarbon import OfflineEmissionsTracker

    tracker = OfflineEmissionsTracker(country_iso_code="USA", save_to_file=False, log_level="error")
    tracker.start()
    try:
        yield
    finally:
        tracker.stop()


def lightning(steps: int, tracked: bool, out: Path, codecarbon: bool = False) -> dict:
    import logging

    import pytorch_lightning as pl
    import torch

    from carbon_callbacks.lightning import CarbonCallback
    from carbon_callbacks.models.torch_gpt import GPT, loss_fn

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    cfg = config()
    torch.manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (cfg.batch_size, n + 1)) for n in lengths(steps)]

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = GPT(cfg)

        def training_step(self, batch, batch_idx):
            return loss_fn(self.model(batch[:, :-1]), batch[:, 1:])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    callback = CarbonCallback(**SITE, output_dir=out) if tracked else None
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=out,
                         callbacks=[callback] if callback else [])
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    start = time.perf_counter()
    with quiet(), codecarbon_around(codecarbon):
        trainer.fit(Module(), loader)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **(_counts(callback.session) if callback else {})}


def keras(steps: int, tracked: bool, out: Path, codecarbon: bool = False) -> dict:
    import keras as k
    import numpy as np

    from carbon_callbacks.keras import CarbonCallback
    from carbon_callbacks.models.keras_gpt import build_gpt, loss_fn

    cfg = config()
    rng = np.random.default_rng(0)
    data = [rng.integers(0, cfg.vocab_size, (cfg.batch_size, n + 1)).astype("int32") for n in lengths(steps)]

    class Batches(k.utils.PyDataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i][:, :-1], data[i][:, 1:]

    model = build_gpt(cfg)
    model.compile(k.optimizers.SGD(0.01), loss_fn())
    callback = CarbonCallback(**SITE, output_dir=out) if tracked else None
    start = time.perf_counter()
    with quiet(), codecarbon_around(codecarbon):
        model.fit(Batches(), epochs=1, verbose=0, shuffle=False, callbacks=[callback] if callback else [])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **(_counts(callback.session) if callback else {})}


@functools.cache
def _flax_setup(steps: int):
    """The model, its batches and one jitted step shared by every fit, so each shape compiles once per process
    (in the warm-up fits) and the timed fits compare running, not compiling."""
    import jax
    import optax
    from flax.training import train_state

    from carbon_callbacks.models.flax_gpt import GPT, loss_fn

    cfg = config()
    model = GPT(cfg)
    key = jax.random.PRNGKey(0)
    batches = [jax.random.randint(jax.random.fold_in(key, i), (cfg.batch_size, n + 1), 0, cfg.vocab_size)
               for i, n in enumerate(lengths(steps))]
    params = model.init(key, batches[0][:, :-1])["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.01))

    @jax.jit
    def train_step(state, tokens, targets):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(state.apply_fn({"params": p}, tokens), targets))(
            state.params)
        return state.apply_gradients(grads=grads), {"loss": loss}

    return state, batches, train_step


def flax(steps: int, tracked: bool, out: Path) -> dict:
    import jax

    from carbon_callbacks.flax import track

    state, batches, train_step = _flax_setup(steps)
    step = track(train_step, **SITE, output_dir=out) if tracked else train_step
    start = time.perf_counter()
    with quiet():
        for batch in batches:
            state, metrics = step(state, batch[:, :-1], batch[:, 1:])
        jax.block_until_ready(metrics)
        if tracked:
            step.close()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **(_counts(step.session) if tracked else {})}


def _counts(session) -> dict:
    info = session.summary()["info"]
    return {"direct_counts": info.get("flops_counts"), "flops_method": info.get("flops_method")}


def child(name: str, steps: int, repeats: int) -> dict:
    warnings.simplefilter("ignore")
    run = {"lightning": lightning, "keras": keras, "flax": flax}[name]
    try:
        import codecarbon  # noqa: F401  (the [bench] extra)

        peer = name != "flax"  # CodeCarbon has no JAX integration to compare with
    except ImportError:
        peer = False
    bare, tracked, peer_s, counts = [], [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        run(steps, False, Path(tmp) / "warm-bare")
        run(steps, True, Path(tmp) / "warm-tracked")
        for i in range(repeats):
            bare.append(run(steps, False, Path(tmp) / f"bare{i}")["seconds"])
            result = run(steps, True, Path(tmp) / f"tracked{i}")
            tracked.append(result.pop("seconds"))
            counts = result
            if peer:
                peer_s.append(run(steps, False, Path(tmp) / f"cc{i}", codecarbon=True)["seconds"])
    return {"framework": name, "bare_s": bare, "tracked_s": tracked,
            "ratio": statistics.median(tracked) / statistics.median(bare), "shapes": len(set(lengths(steps))),
            "codecarbon_ratio": statistics.median(peer_s) / statistics.median(bare) if peer_s else None, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="lightning,keras,flax")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.repeats)))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs; steps {args.steps}, "
          f"repeats {args.repeats}")
    print(f"{'adapter':<10} {'bare fit (s)':>13} {'tracked (s)':>12} {'ratio':>7} {'shapes':>7} {'traced':>7} "
          f"{'CodeCarbon ratio':>17}")
    for name in args.only.split(","):
        env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--repeats",
                               str(args.repeats)], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name:<10} {statistics.median(r['bare_s']):>13.2f} {statistics.median(r['tracked_s']):>12.2f} "
              f"{r['ratio']:>7.3f} {r['shapes']:>7} {r.get('direct_counts', '-'):>7} "
              f"{'-' if r['codecarbon_ratio'] is None else format(r['codecarbon_ratio'], '.3f'):>17}")
        print(f"           flops_method: {r.get('flops_method')}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
