"""The per-step batch reader: a plan per batch structure gives exactly what walking the batch gives."""

from __future__ import annotations

import numpy as np
import pytest

from carbon_callbacks._run.batch_plan import BatchReader
from carbon_callbacks._run.step_flops import PackedSequences, batch_key, token_layout

torch = pytest.importorskip("torch")


def ids(batch: int = 2, length: int = 8):
    return torch.zeros(batch, length, dtype=torch.long)


BATCHES = [
    torch.randn(4, 3),
    np.zeros((4, 3), dtype=np.float32),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)),
    [torch.randn(4, 3)],
    {"input_ids": ids(), "attention_mask": torch.ones(2, 8), "labels": ids()},
    {"input_ids": ids(), "padding_mask": torch.ones(2, 8)},
    {"input_ids": ids(), "attention_mask": torch.ones(2, 1, 8, 8), "padding_mask": torch.ones(2, 8)},
    {"input_ids": ids(1, 9), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])},
    {"input_ids": ids(), "use_cache": False, "num_items_in_batch": 7},
    ({"input_ids": ids(), "attention_mask": torch.ones(2, 8)}, torch.zeros(2)),  # nested: walked
    ((torch.randn(2), torch.randn(2)), torch.randn(2)),
    (torch.randn(2), 3),
    "not an array",
]


def same_layout(a, b) -> bool:
    if isinstance(a, PackedSequences):
        return isinstance(b, PackedSequences) and a.positions is b.positions
    return a is b


@pytest.mark.parametrize("batch", BATCHES, ids=range(len(BATCHES)))
def test_the_plan_reads_what_the_walk_reads(batch):
    reader = BatchReader()
    for _ in range(2):  # the plan made, then used
        key, layout = reader.read(batch)
        assert key == batch_key(batch) and hash(key) == hash(batch_key(batch))
        assert same_layout(layout, token_layout(batch))


def test_one_structure_with_other_shapes_and_other_contents_reads_each_batch_right():
    reader = BatchReader()
    for length in (8, 16, 5):  # dynamic lengths: the plan stays, the key follows the shapes
        batch = {"input_ids": ids(2, length), "attention_mask": torch.ones(2, length)}
        key, layout = reader.read(batch)
        assert key == batch_key(batch) and layout is batch["attention_mask"]
    for batch in [(torch.randn(3), torch.randn(3)), (torch.randn(3), {"a": torch.randn(3)}), (torch.randn(3), None)]:
        key, layout = reader.read(batch)  # same length, other contents: still right
        assert key == batch_key(batch) and layout is token_layout(batch)
    batch = {"input_ids": ids(), "attention_mask": torch.ones(2, 1, 8, 8)}  # the mask no longer 2-D
    assert reader.read(batch) == (batch_key(batch), None)


def test_batches_of_every_structure_in_turn_are_each_read_right():
    reader = BatchReader()  # `read` is the last structure's plan: every other structure must reach its own
    for batch in BATCHES + BATCHES[::-1] + BATCHES:
        key, layout = reader.read(batch)
        assert key == batch_key(batch) and same_layout(layout, token_layout(batch))


def test_a_copied_reader_reads_on_its_own():
    import copy
    import pickle

    reader = BatchReader()
    reader.read(BATCHES[2])  # its `read` is now a plan of its own
    for twin in (copy.deepcopy(reader), pickle.loads(pickle.dumps(reader))):
        for batch in BATCHES:
            key, layout = twin.read(batch)
            assert key == batch_key(batch) and same_layout(layout, token_layout(batch))
        assert reader.read.__closure__ is not None and twin.read is not reader.read
