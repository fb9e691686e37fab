"""One process of a Keras fit on JAX spread over simulated hosts (`keras.distribution.DataParallel` over
`jax.distributed`), run by test_hosts.py: `python keras_worker.py PORT RANK WORLD OUT_DIR`. Its host comes from
`CARBON_CALLBACKS_HOST`, that host's RAPL tree from `CARBON_CALLBACKS_POWERCAP`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402

STEPS, LOCAL_BATCH = 40, 8


def main(port: int, rank: int, world: int, out: Path) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np

    keras.distribution.initialize(job_addresses=f"127.0.0.1:{port}", num_processes=world, process_id=rank)
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    distribution.auto_shard_dataset = False  # each process feeds its own shard
    keras.distribution.set_distribution(distribution)

    from carbon_callbacks.keras import CarbonCallback

    class Slow(keras.callbacks.Callback):  # steps of about 50 ms, as a real model's would be
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(0.05)

    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    rng = np.random.default_rng(rank)
    x, y = rng.normal(size=(STEPS * LOCAL_BATCH, 16)).astype("float32"), np.zeros((STEPS * LOCAL_BATCH, 4), "float32")
    callback = CarbonCallback(intensity=0.5, nvml=False, log_every_n_steps=5, output_dir=out / "run")
    model.fit(x, y, batch_size=LOCAL_BATCH, epochs=1, verbose=0, callbacks=[Slow(), callback])
    from carbon_callbacks.flops import count

    one_step = count(model, np.zeros((world * LOCAL_BATCH, 16), "float32"), framework="keras").total  # global batch
    payload = {"rank": rank, "summary": callback.summary, "global_step_flops": one_step, "steps": STEPS}
    (out / f"rank{rank}.json").write_text(json.dumps(payload), encoding="utf-8")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
