"""Counts sharded JAX steps (and a Keras model under `keras.distribution.DataParallel`) on 4 CPU devices; prints one
JSON object. Run by `test_sharded_flops.py` with `XLA_FLAGS=--xla_force_host_platform_device_count=4` (the device
count is fixed when JAX starts, so each run is a process of its own): `python sharded_count.py jax|keras`, or
`python sharded_count.py processes PORT RANK` for one of two processes of 2 devices each sharing one mesh.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def jax_cases() -> dict:
    import jax
    import jax.numpy as jnp
    from jax import shard_map
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from carbon_callbacks.flops import count
    from carbon_callbacks.flops._jax import count_placed

    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("data",))
    grid = Mesh(devices.reshape(2, 2), ("data", "model"))

    def loss(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    w, x = jnp.ones((8, 16)), jnp.ones((32, 8))  # a global batch of 32, 8 per device
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    ws, xs = jax.device_put(w, replicated), jax.device_put(x, batch)
    data_parallel = shard_map(lambda w, x: jax.lax.psum(jax.grad(loss)(w, x), "data"), mesh=mesh,
                              in_specs=(P(), P("data")), out_specs=P())
    steps = {
        "jit_with_shardings": (jax.jit(jax.grad(loss), in_shardings=(replicated, batch)), (w, x)),
        "sharded_arguments": (jax.jit(jax.grad(loss)), (ws, xs)),
        "shard_map": (jax.jit(data_parallel), (ws, xs)),
        "pmap": (jax.pmap(jax.grad(loss), in_axes=(None, 0)), (w, x.reshape(4, 8, 8))),
    }
    out = {"unsharded": count(jax.grad(loss), w, x).total, "device_count": jax.device_count()}
    for name, (step, args) in steps.items():
        result, placement = count_placed(step, *args)
        out[name] = {"total": result.total, "devices": placement.devices, "processes": placement.processes}
    # model parallel: each device multiplies its (batch, in) block by its (in, out) block, then a psum over `model`
    tensor_parallel = shard_map(lambda w, x: jax.lax.psum(x @ w, "model"), mesh=grid,
                                in_specs=(P("model", None), P("data", "model")), out_specs=P("data", None))
    out["shard_map_2d"] = count(jax.jit(tensor_parallel), w, x).executed
    # only `data` manual: the body sees the whole `model` axis and runs once per `data` shard
    partial = shard_map(lambda w, x: x @ w, mesh=grid, in_specs=(P(), P("data")), out_specs=P("data"),
                        axis_names={"data"})
    out["shard_map_partial"] = count(jax.jit(partial), w, x).executed
    out["matmul"] = 2 * 32 * 8 * 16
    return out


def keras_cases() -> dict:
    import tempfile

    import keras

    from carbon_callbacks.flops import count
    from carbon_callbacks.keras import CarbonCallback

    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, use_bias=False),
                                 keras.layers.Dense(1, use_bias=False)])

    x, y = np.ones((64, 16), "float32"), np.ones((64, 1), "float32")
    out = {"global_batch": count(build(), x[:32]).total, "device_batch": count(build(), x[:8]).total}
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
    model = build()
    model.compile(optimizer="sgd", loss="mse")
    seen: list[dict] = []

    class Logs(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(dict(logs or {}))

    callback = CarbonCallback(intensity=0.4, output_dir=tempfile.mkdtemp(), log_every_n_steps=1)
    model.fit(x, y, batch_size=32, epochs=1, callbacks=[callback, Logs()], verbose=0)
    out["adapter_flops"] = [entry.get("carbon/flops") for entry in seen]
    out["mesh_devices"] = len(keras.distribution.distribution().device_mesh.devices.flatten())
    return out


def flax_case() -> dict:
    """`track` around a data-parallel step jitted over the 4-device mesh: the run's FLOPs and MFU's chips."""
    import tempfile

    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from carbon_callbacks import read_run
    from carbon_callbacks.flax import track
    from carbon_callbacks.meters import ReplayMeter

    mesh = Mesh(np.array(jax.devices()), ("data",))

    def loss(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    @jax.jit
    def step(w, x):
        return w - 0.1 * jax.grad(loss)(w, x), {"loss": loss(w, x)}

    w = jax.device_put(np.ones((8, 16), np.float32), NamedSharding(mesh, P()))
    x = jax.device_put(np.ones((32, 8), np.float32), NamedSharding(mesh, P("data")))  # 8 rows per device
    out_dir = tempfile.mkdtemp()
    with track(step, intensity=0.4, output_dir=out_dir, log_every_n_steps=1, chip="cpu", dtype="fp32",
               meter=ReplayMeter(energy_j=1.0, seconds=1.0, component="cpu")) as tracked:
        for _ in range(3):
            w, _metrics = tracked(w, x)
    summary, _ = read_run(out_dir)
    return {"total_model_flops": summary["total_model_flops"], "num_chips": summary["num_chips"],
            "matmuls": 3 * 2 * 32 * 8 * 16 - 2 * 32 * 8 * 16 + 2 * 32 * 8 * 16}


def two_process_case(port: int, rank: int) -> dict:
    """One of two processes: a data-parallel step over a mesh of both processes' devices, this process's half of
    the global batch of 32 placed with `make_array_from_process_local_data`."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=rank)
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from carbon_callbacks.flops._jax import count_placed

    mesh = Mesh(np.array(jax.devices()), ("data",))

    def loss(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), np.ones((16, 8), np.float32))
    w = jax.device_put(np.ones((8, 16), np.float32), NamedSharding(mesh, P()))
    result, placement = count_placed(jax.jit(jax.grad(loss)), w, x)
    out = {"rank": rank, "global_batch": x.shape[0], "total": result.total, "devices": placement.devices,
           "processes": placement.processes, "matmuls": 3 * 2 * 32 * 8 * 16 - 2 * 32 * 8 * 16}
    jax.distributed.shutdown()
    return out


if __name__ == "__main__":
    if sys.argv[1] == "processes":
        cases = two_process_case(int(sys.argv[2]), int(sys.argv[3]))
    else:
        cases = {"jax": jax_cases, "keras": keras_cases, "flax": flax_case}[sys.argv[1]]()
    print("RESULT " + json.dumps(cases))
