"""Each client's own reader, for tests that check what users read: TensorBoard, MLflow, W&B (offline), the card.

Imported by the integration suites as `from readers import ...` (pytest puts tests/ on the path).
"""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path


def tensorboard_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag under `log_dir`, as (step, value) pairs, read with TensorBoard's `EventAccumulator`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted({str(Path(p).parent) for p in glob.glob(f"{log_dir}/**/events.out.tfevents.*",
                                                                 recursive=True)}):
        accumulator = EventAccumulator(events, size_guidance={"scalars": 0, "tensors": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
        for tag in accumulator.Tags()["tensors"]:  # tf.summary (Keras, Flax) writes scalars as tensors
            from tensorboard.util import tensor_util

            arrays = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]
            if all(a.ndim == 0 and a.dtype.kind in "fiu" for _, a in arrays):  # not text (`add_text`)
                out.setdefault(tag, []).extend((step, float(a)) for step, a in arrays)
    return {tag: sorted(values) for tag, values in out.items()}


def wandb_records(save_dir: str | Path, run_id: str | None = None) -> dict:
    """An offline W&B run as W&B recorded it: its history rows, final summary, config and saved files.

    The run's `.wandb` file is a LevelDB-style log of W&B's own protobuf `Record`s (wandb 0.31 ships no Python
    reader for it), decoded here with `wandb.proto.wandb_internal_pb2.Record`.
    """
    from wandb.proto import wandb_internal_pb2

    pattern = f"{save_dir}/wandb/offline-run-*-{run_id or '*'}/run-*.wandb"
    (path,) = glob.glob(pattern)
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    history: list[dict] = []
    summary: dict = {}
    config: dict = {}
    files: list[str] = []
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # full, first | middle, last
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        which = record.WhichOneof("record_type")
        if which == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
        elif which == "summary":
            summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in record.summary.update})
        elif which == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif which == "files":
            files.extend(f.path for f in record.files.files)
    return {"history": history, "summary": summary, "config": config, "files": files}
