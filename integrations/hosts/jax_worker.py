"""One process of a JAX job spread over simulated hosts, run by test_hosts.py: `python jax_worker.py PORT RANK
WORLD OUT_DIR`. The host it is on comes from `CARBON_CALLBACKS_HOST`, that host's RAPL tree from
`CARBON_CALLBACKS_POWERCAP`. It trains an MLP under `track` for `STEPS` steps of about 50 ms, with the default
meter."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax

STEPS = 60


def main(port: int, rank: int, world: int, out: Path) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=world, process_id=rank)

    from carbon_callbacks.flax import track

    from flax_support import SITE, batch, linen_state, make_linen_step

    step = track(make_linen_step(), **SITE, nvml=False, log_every_n_steps=5, output_dir=out / "run")
    state, xy = linen_state(), batch(seed=rank)
    for _ in range(STEPS):
        state, _ = step(state, xy)
        time.sleep(0.05)
    step.close()
    payload = {"rank": rank, "summary": step.summary()}
    (out / f"rank{rank}.json").write_text(json.dumps(payload), encoding="utf-8")
    jax.distributed.shutdown()


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here.parent / "flax"), str(here.parents[1] / "tests")]
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
