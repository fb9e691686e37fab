"""One of the two JAX processes of `test_flax_multiprocess.py`: python two_process_worker.py PORT RANK OUT_DIR.

Each process trains the Linen MLP on its own data shard under `track`, with a deterministic meter whose energy
differs per process (process 0: 90 J per interval, process 1: 30 J), and writes what it saw to
OUT_DIR/rank<RANK>.json. Process 0 alone writes the run files, to OUT_DIR/run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax


def main(port: int, rank: int, out_dir: Path) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=rank)

    from carbon_callbacks.flax import track

    from flax_support import SITE, FixedMeter, batch, linen_state, make_linen_step

    step = track(
        make_linen_step(),
        **SITE,
        meter=FixedMeter(joules=90.0 if rank == 0 else 30.0, seconds=3.0),
        log_every_n_steps=2,
        output_dir=out_dir / "run",
    )
    state, xy = linen_state(), batch(seed=rank)
    history = []
    for _ in range(5):
        state, metrics = step(state, xy)
        history.append({k: float(v) for k, v in metrics.items()})
    step.close()
    summary = step.summary()
    payload = {
        "rank": rank,
        "process_count": jax.process_count(),
        "history": history,
        "summary": summary,
        "run_dir": str(step.run_dir) if step.run_dir is not None else None,
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(payload), encoding="utf-8")
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
