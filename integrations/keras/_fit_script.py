"""Real `model.fit` runs with `CarbonCallback` on one Keras backend; writes what they produced as JSON.

Run as `KERAS_BACKEND=<backend> python integrations/keras/_fit_script.py <out_dir>` (a backend is chosen when
Keras is imported, so each backend needs its own process). `test_keras.py` starts one process per backend and
asserts on `<out_dir>/results.json`. Each scenario runs in its own run directory under `<out_dir>`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import traceback
from pathlib import Path

BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "tensorflow":  # two logical CPU devices for MirroredStrategy, before TensorFlow starts its runtime
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from carbon_callbacks import read_run  # noqa: E402
from carbon_callbacks.keras import CarbonCallback  # noqa: E402
from carbon_callbacks.meters import ConstantPowerMeter  # noqa: E402
from carbon_callbacks.models import DENSE, SWITCH  # noqa: E402
from carbon_callbacks.models.keras_gpt import build_gpt, loss_fn  # noqa: E402

#: The deterministic site and meter every scenario uses.
SITE = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.25}
WATTS = 36.0


def data(config, samples: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (samples, config.seq_len + 1))
    return tokens[:, :-1].astype("int32"), tokens[:, 1:].astype("int32")


def compiled(config, steps_per_execution: int = 1, strategy=None):
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_gpt(config)
        model.compile(keras.optimizers.SGD(0.01), loss_fn(), steps_per_execution=steps_per_execution)
    return model


_DENSE_MODEL = []


def dense_model(steps_per_execution: int = 1):
    """One dense GPT for every dense scenario (building one costs seconds), recompiled when asked to."""
    if not _DENSE_MODEL:
        _DENSE_MODEL.append(compiled(DENSE))
    model = _DENSE_MODEL[0]
    if model.steps_per_execution != steps_per_execution:
        model.compile(keras.optimizers.SGD(0.01), loss_fn(), steps_per_execution=steps_per_execution)
    return model


def callback(out: Path, name: str, **kwargs) -> CarbonCallback:
    return CarbonCallback(**SITE, meter=ConstantPowerMeter({"cpu": WATTS}), output_dir=out / name, **kwargs)


def outcome(out: Path, name: str, history=None, printed: str = "", **extra) -> dict:
    summary, records = read_run(out / name)
    rows = []
    csv_path = out / f"{name}.csv"
    if csv_path.exists():
        with csv_path.open() as handle:
            rows = list(csv.DictReader(handle))
    return {
        "history": history.history if history is not None else None,
        "csv": rows,
        "summary": summary,
        "records": records,
        "reports_printed": printed.count("carbon-callbacks: "),
        **extra,
    }


def run_fit(out: Path, name: str, model, x, y, cb, **fit_kwargs) -> dict:
    logger = keras.callbacks.CSVLogger(str(out / f"{name}.csv"))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        history = model.fit(x, y, verbose=0, callbacks=[cb, logger, *fit_kwargs.pop("extra", [])], **fit_kwargs)
    return outcome(out, name, history, buffer.getvalue())


class RaiseAt(keras.callbacks.Callback):
    """Raises `error` at the end of the `at`-th training batch of the run (1-based)."""

    def __init__(self, at: int, error: BaseException) -> None:
        super().__init__()
        self.at, self.error, self.seen = at, error, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise self.error


def scenario_dense(out: Path) -> dict:
    """Dense GPT, 2 epochs of 4 steps, validation data."""
    x, y = data(DENSE, 16)
    vx, vy = data(DENSE, 8, seed=1)
    model = dense_model()
    cb = callback(out, "dense", log_every_n_steps=3)
    return run_fit(out, "dense", model, x, y, cb, batch_size=4, epochs=2, validation_data=(vx, vy))


def scenario_moe(out: Path) -> dict:
    """Switch (top-1) MoE GPT, 1 epoch of 2 steps."""
    x, y = data(SWITCH, 8)
    model = compiled(SWITCH)
    return run_fit(out, "moe", model, x, y, callback(out, "moe"), batch_size=4, epochs=1)


def scenario_steps_per_execution(out: Path) -> dict:
    """10 batches per epoch run 3 at a time (3 + 3 + 3 + 1), 2 epochs."""
    x, y = data(DENSE, 40)
    model = dense_model(steps_per_execution=3)
    cb = callback(out, "spe", log_every_n_steps=4)
    return run_fit(out, "spe", model, x, y, cb, batch_size=4, epochs=2)


def scenario_early_stopping(out: Path) -> dict:
    """EarlyStopping that can never see an improvement stops after the second of 5 epochs."""
    x, y = data(DENSE, 8)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    return run_fit(out, "early", dense_model(), x, y, callback(out, "early"), batch_size=4, epochs=5, extra=[stop])


def scenario_interrupted(out: Path) -> dict:
    """A fit that raises mid-epoch, without and with the context manager, then a reuse of the callback."""
    x, y = data(DENSE, 16)
    result = {}
    # 1. Plain: no hook runs after the exception; run.json is as of the first epoch's end.
    cb = callback(out, "crash", log_every_n_steps=2, continue_runs=True)
    try:
        dense_model().fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[cb, RaiseAt(6, RuntimeError("boom"))])
    except RuntimeError:
        pass
    result["plain"] = outcome(out, "crash")
    # 2. Reusing the callback closes the stale run as interrupted; with continue_runs the next fit continues it.
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        dense_model().fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[cb])
    result["reused"] = outcome(out, "crash", printed=buffer.getvalue())
    # 3. As a context manager: a KeyboardInterrupt ends the run as `interrupted` with every step counted.
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            with callback(out, "ctrl_c", log_every_n_steps=4) as cb2:
                dense_model().fit(
                    x, y, batch_size=4, epochs=3, verbose=0, callbacks=[cb2, RaiseAt(6, KeyboardInterrupt())]
                )
        except KeyboardInterrupt:
            pass
    result["context"] = outcome(out, "ctrl_c", printed=buffer.getvalue())
    return result


def scenario_ragged(out: Path) -> dict:
    """10 samples in batches of 4: a ragged final batch of 2."""
    x, y = data(DENSE, 10)
    return run_fit(out, "ragged", dense_model(), x, y, callback(out, "ragged", log_every_n_steps=1), batch_size=4,
                   epochs=1)


#: Sequence lengths of the `lengths` scenario, one batch each (dynamic padding).
LENGTHS = [8, 32, 16, 24, 12, 20, 28, 9]


def scenario_lengths(out: Path) -> dict:
    """A new sequence length every batch; the direct count of each batch beside what the run recorded."""
    from carbon_callbacks.flops import count

    rng = np.random.default_rng(0)
    batches = [rng.integers(0, DENSE.vocab_size, (4, n + 1)).astype("int32") for n in LENGTHS]

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return batches[i][:, :-1], batches[i][:, 1:]

    model = dense_model()
    cb = callback(out, "lengths", log_every_n_steps=1)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        model.fit(Batches(), epochs=1, verbose=0, shuffle=False, callbacks=[cb])
    direct = [count(model, b[:, :-1], framework="keras").total for b in batches]
    return outcome(out, "lengths", direct=direct)


def masked_model():
    """Token ids embedded with `mask_zero=True` (id 0 is padding), dense layers, pooled: one output. (A linear layer
    feeds the pooling: Keras 3.11's masked pooling on torch writes its input in place, which breaks the backward of
    an activation there, with or without a callback.)"""
    tokens = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(50, 16, mask_zero=True)(tokens)
    hidden = keras.layers.Dense(8)(keras.layers.Dense(32, activation="relu")(embedded))
    model = keras.Model(tokens, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(hidden)))
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


def scenario_masked(out: Path) -> dict:
    """Sequences of 4 to 19 ids padded per batch (TensorFlow's `padded_batch`; a `PyDataset` of the same batches
    elsewhere); each batch's count, and each sequence's alone on its real ids, beside what the run recorded."""
    from carbon_callbacks.flops import count

    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, 50, n).astype("int32") for n in rng.integers(4, 20, 12)]
    targets = rng.integers(0, 2, 12).astype("float32")
    batches = []
    for start in range(0, 12, 4):
        group = sequences[start:start + 4]
        ids = np.zeros((4, max(len(q) for q in group)), "int32")
        for row, q in enumerate(group):
            ids[row, :len(q)] = q
        batches.append((ids, targets[start:start + 4]))
    if BACKEND == "tensorflow":
        data = tf.data.Dataset.from_generator(lambda: zip(sequences, targets), output_signature=(
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32))).padded_batch(4)
    else:
        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return len(batches)

            def __getitem__(self, i):
                return batches[i]

        data = Batches()
    model = masked_model()
    cb = callback(out, "masked", log_every_n_steps=1)
    with contextlib.redirect_stdout(io.StringIO()):
        model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[cb])
    hardware = [count(model, ids, framework="keras").total for ids, _ in batches]
    alone = [count(model, q[None, :], framework="keras").total for q in sequences]
    return outcome(out, "masked", hardware=hardware, alone=alone, lengths=[len(q) for q in sequences],
                   positions=[ids.size for ids, _ in batches])


def scenario_remat(out: Path) -> dict:
    """The count of a model whose layers are rematerialized (`keras.RematScope`), beside the same model's without."""
    from carbon_callbacks.flops import count

    def model(remat: bool):
        inputs = keras.Input((32,))
        with keras.RematScope(mode="full") if remat else contextlib.nullcontext():
            first, second = keras.layers.Dense(64, activation="tanh"), keras.layers.Dense(64, activation="tanh")
        return keras.Model(inputs, keras.layers.Dense(1)(second(first(inputs))))

    x = np.ones((8, 32), "float32")
    plain, remat = count(model(False), x, framework="keras"), count(model(True), x, framework="keras")
    return {"plain": plain.total, "total": remat.total, "recomputed": remat.recomputed}


def scenario_order(out: Path) -> dict:
    """CarbonCallback before and after CSVLogger and TensorBoard: each file, read back, holds the carbon keys."""
    x, y = data(DENSE, 8)
    result = {}
    for name, first in (("first", True), ("last", False)):
        cb = callback(out, f"order_{name}", log_every_n_steps=1)
        loggers = [keras.callbacks.CSVLogger(str(out / f"order_{name}.csv")),
                   keras.callbacks.TensorBoard(str(out / f"order_{name}_tb"), update_freq=1)]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            history = dense_model().fit(x, y, batch_size=4, epochs=2, verbose=0,
                                        callbacks=[cb, *loggers] if first else [*loggers, cb])
        result[name] = outcome(out, f"order_{name}", history, buffer.getvalue(),
                               tensorboard=str(out / f"order_{name}_tb"))
    return result


def scenario_given(out: Path) -> dict:
    """FLOPs given by `flops=`, by `model.flops_per_batch`, and a broken `flops_per_batch` that must not stop fit."""
    import warnings

    x, y = data(DENSE, 8)
    model = dense_model()
    result = {"argument": run_fit(out, "given_arg", model, x, y, callback(out, "given_arg", flops=5e6), batch_size=4)}
    model.flops_per_batch = 123.0
    result["attribute"] = run_fit(out, "given_attr", model, x, y, callback(out, "given_attr"), batch_size=4)
    model.flops_per_batch = "not a number"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result["broken"] = run_fit(out, "given_broken", model, x, y, callback(out, "given_broken"), batch_size=4)
    del model.flops_per_batch
    result["broken"]["warnings"] = [str(w.message) for w in caught if "carbon-callbacks" in str(w.message)]
    return result


def scenario_mirrored(out: Path) -> dict:
    """TensorFlow only: MirroredStrategy over the two logical CPU devices."""
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y = data(DENSE, 16)
    model = compiled(DENSE, strategy=strategy)
    result = run_fit(out, "mirrored", model, x, y, callback(out, "mirrored"), batch_size=8, epochs=1)
    result["replicas_in_sync"] = strategy.num_replicas_in_sync
    return result


SCENARIOS = {
    "dense": scenario_dense,
    "early": scenario_early_stopping,
    "interrupted": scenario_interrupted,
    "given": scenario_given,
    "spe": scenario_steps_per_execution,
    "moe": scenario_moe,
    "mirrored": scenario_mirrored,
    "ragged": scenario_ragged,
    "lengths": scenario_lengths,
    "masked": scenario_masked,
    "remat": scenario_remat,
    "order": scenario_order,
}
#: The torch backend only runs `steps_per_execution=1`; MirroredStrategy is TensorFlow's.
SKIP = {"torch": {"spe", "mirrored"}, "jax": {"mirrored"}, "tensorflow": set()}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results = {"backend": keras.backend.backend()}
    for name, scenario in SCENARIOS.items():
        if name in SKIP[BACKEND]:
            continue
        try:
            results[name] = scenario(out)
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    (out / "results.json").write_text(json.dumps(results, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
