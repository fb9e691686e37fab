"""Model FLOPs of real tokens only: one sequence's polynomial (`SequenceFit`), the sequence cut out of its batch
(`SequenceProbe`, padded or packed), the interval's sums, forward-only passes and generation in the record."""

from __future__ import annotations

import pytest

from carbon_callbacks import RunSession, read_run
from carbon_callbacks._run.length_fit import SequenceFit
from carbon_callbacks._run.step_flops import (
    BatchPass,
    PackedSequences,
    SequenceProbe,
    StepFlops,
    cut_batch,
    labelled_tokens,
    sequence_lengths,
)
from carbon_callbacks.meters import ReplayMeter

np = pytest.importorskip("numpy")
C = (1000, 70, 3, 11)  # c0 + c1 n + c2 n^2 + c3 m


def one_sequence(n: int, m: int) -> int:
    return C[0] + C[1] * n + C[2] * n * n + C[3] * m


@pytest.mark.parametrize("labelled", [False, True])
def test_the_fit_is_exact_after_its_checks_and_not_before(labelled):
    fit = SequenceFit(labelled)
    points = [(30, 29), (29, 28), (28, 27), (30, 28), (27, 26), (26, 25), (30, 27)]
    for n, m in points[:fit.unknowns]:
        fit.add(n, m if labelled else 0, one_sequence(n, m if labelled else 0))
    assert fit.per_sequence() is None  # fitted, not yet checked
    for n, m in points[fit.unknowns:fit.unknowns + 2]:
        fit.add(n, m if labelled else 0, one_sequence(n, m if labelled else 0))
    assert fit.trusted and fit.per_sequence() == (C if labelled else (*C[:3], 0.0))


def test_a_count_off_the_polynomial_ends_the_fit():
    fit = SequenceFit(False)
    for n in (30, 29, 28):
        fit.add(n, 0, one_sequence(n, 0))
    fit.add(27, 0, one_sequence(27, 0) + 2)  # a capacity rounding, a window
    assert fit.failed and fit.per_sequence() is None


def test_the_probe_cuts_the_longest_sequence_of_a_left_padded_batch_with_its_labels():
    ids = np.array([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0) * 1, "labels": np.where(ids > 8, ids, -100)}
    seen = []
    probe = SequenceProbe(batch, batch["attention_mask"], lambda cut: seen.append(cut) or "counted")
    assert probe.labelled and sequence_lengths(batch).tolist() == [3, 5]
    assert labelled_tokens(batch).tolist() == [0, 4]
    assert probe.plan() == [(5, 0), (4, 0), (3, 0), (5, 1), (2, 0), (5, 2)]  # 4 unknowns, 2 checks
    assert probe(4, skipped=1) == "counted"
    assert seen[0]["input_ids"].tolist() == [[8, 9, 10, 11]]
    assert seen[0]["labels"].tolist() == [[-100, -100, 10, 11]]  # the first read label skipped
    assert probe.labels_read(4, 1) == 2


def test_a_packed_batch_is_its_sequences():
    positions = np.array([[0, 1, 2, 0, 1, 2, 3, 0, 1]])
    batch = {"input_ids": np.arange(9)[None], "position_ids": positions}
    lengths = sequence_lengths(batch)
    assert isinstance(lengths, PackedSequences) and lengths.tolist() == [3, 4, 2]
    seen = []
    SequenceProbe(batch, lengths, seen.append)(4)
    assert seen[0]["input_ids"].tolist() == [[3, 4, 5, 6]] and seen[0]["position_ids"].tolist() == [[0, 1, 2, 3]]
    assert cut_batch(batch, 1, 9, 0, 7, 9)["input_ids"].tolist() == [[7, 8]]


def session(tmp_path) -> RunSession:
    run = RunSession(intensity=0.5, pue=1.0, output_dir=tmp_path, meter=ReplayMeter(energy_j=1.0, seconds=1.0),
                     chip="h100-sxm")
    run.start()
    return run


def test_the_interval_sums_each_sequence_and_counts_reference_passes_once(tmp_path):
    run = session(tmp_path)
    lengths, labelled = np.array([3, 5]), np.array([2, 4])
    train = StepFlops(model_flops=999.0, hardware_flops=5000.0, method="traced", tokens=10.0, per_sequence=C)
    reference = train._replace(hardware_flops=1500.0, trains=False)
    run.step_end(batches=[BatchPass(train, lengths, labelled=labelled), BatchPass(reference, lengths,
                                                                                    labelled=labelled)],
                 generation=(400.0, 6.0))
    run.finish()
    summary, _ = read_run(run.run_dir)
    per_batch = one_sequence(3, 2) + one_sequence(5, 4)
    assert summary["total_model_flops"] == 2 * per_batch  # no padding, the reference's forward too
    assert summary["total_hardware_flops"] == 5000 + 1500 + 400  # what ran: padding and generation too
    assert summary["tokens"] == 8 and summary["padding_tokens"] == 2  # the policy's tokens, once
    assert summary["total_generation_flops"] == 400 and summary["generation_tokens"] == 6
    assert "generation" in summary["mfu_covers"]
