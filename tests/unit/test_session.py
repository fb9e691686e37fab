"""The run session every adapter drives: intervals, FLOP sources, resume, ranks, statuses, failures, files."""

from __future__ import annotations

import math
import warnings

import pytest

import carbon_callbacks
from carbon_callbacks import METRIC_KEYS, InvalidInputError, RunSession, StepFlops, TransformerConfig, read_run
from carbon_callbacks._run.session import guarded, status_for
from carbon_callbacks._warnings import STRICT_ENV, CarbonCallbacksWarning
from carbon_callbacks.flops import transformer_flops

from fakes import FixedMeter

SITE = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.2}
TINY = TransformerConfig(num_layers=1, d_model=16, num_heads=2, seq_len=8, batch_size=2, vocab_size=32,
                         num_experts=4, top_k=1)


def step_meter(fail_after=None):
    """Every window holds 100 J of GPU energy over 2 s, measured; with `fail_after`, later windows raise."""
    return FixedMeter(joules=100.0, seconds=2.0, fail_after=fail_after)


def make(tmp_path, **kwargs) -> RunSession:
    return RunSession(**{**SITE, "meter": step_meter(), "output_dir": tmp_path, **kwargs})


def flops(model=1e9, hardware=None, tokens=10.0) -> StepFlops:
    return StepFlops(model, hardware if hardware is not None else model, "given", tokens)


class Model:
    """Something a framework trains: optionally a `flops_per_batch` attribute and a model config."""

    def __init__(self, config=None, flops_per_batch=None):
        if config is not None:
            self.config = config
        if flops_per_batch is not None:
            self.flops_per_batch = flops_per_batch


def test_missing_location_fails_at_construction():
    with pytest.raises(InvalidInputError, match="never guesses a location"):
        RunSession(meter=step_meter())


def test_intervals_close_every_n_steps(tmp_path):
    session = make(tmp_path, log_every_n_steps=4)
    session.start()
    closed = [session.step_end(flops=flops(), loss=2.0) is not None for _ in range(10)]
    assert closed == [False, False, False, True] * 2 + [False, False]
    metrics = session.metrics
    assert metrics["carbon/energy_kwh"] == pytest.approx(2 * 100 * 1.2 / 3.6e6)
    assert metrics["carbon/co2e_kg"] == pytest.approx(metrics["carbon/energy_kwh"] * 0.5)
    assert metrics["carbon/co2e_net_kg"] == pytest.approx(metrics["carbon/energy_kwh"] * 0.2)
    assert metrics["carbon/flops"] == 1e9
    assert metrics["carbon/step_time_s"] == pytest.approx(0.5)
    summary = session.finish()
    assert summary["steps"] == 10 and summary["tokens"] == 100
    assert summary["it_energy_kwh"] == pytest.approx(3 * 100 / 3.6e6)  # the partial third interval counts
    _, records = read_run(tmp_path)
    assert [r["num_steps"] for r in records] == [4, 4, 2]


def test_the_adapter_decides_the_logging_steps(tmp_path):
    session = make(tmp_path, log_every_n_steps=100)
    session.start()
    closed = [session.step_end(close=i in (1, 4)) is not None for i in range(6)]
    assert closed == [False, True, False, False, True, False]


def test_quiet_steps_count_as_steps_do(tmp_path):
    """`add_step` (the per-step path) and `step_end` give the same record, row number and carbon/flops."""
    from carbon_callbacks._run.step_flops import BatchPass

    records = []
    for quiet in (False, True):
        session = make(tmp_path / str(quiet))
        session.start()
        for step in range(5):
            passes = [BatchPass(flops(model=1e9 * (step + 1)))]
            if quiet:
                session.add_step((passes, 1, step))
            else:
                session.step_end(batches=passes, step=step, close=False)
        metrics = session.step_end(num_steps=0, loss=1.5, step=4, close=True)  # a log row closes the interval
        assert metrics["carbon/flops"] == 5e9
        session.add_step(([BatchPass(flops(model=7e9))], 1, 5))
        assert session.metrics["carbon/flops"] == 7e9
        records.append(session.finish()["steps"])
    assert records[0] == records[1] == 6
    rows = [read_run(tmp_path / str(quiet))[1] for quiet in (False, True)]
    assert [(r["step"], r["num_steps"], r["model_flops"]) for r in rows[0]] == [(4, 5, 15e9), (5, 1, 7e9)]
    assert [(r["step"], r["num_steps"], r["model_flops"]) for r in rows[1]] == [(4, 5, 15e9), (5, 1, 7e9)]


def test_flop_sources_in_order_given_attribute_analytic_trace(tmp_path):
    trace_calls = []

    def trace():
        trace_calls.append(1)
        return carbon_callbacks.FlopCount(total=7_000, executed=7_000, method="traced:fake", framework="x",
                                          includes_backward=True)

    def first_step(session, model):
        session.start(model=model)
        return session.count(("shape",), trace, lambda: (2, 8))

    given = first_step(make(tmp_path / "a", flops=5e9), Model(TINY, flops_per_batch=3.0))
    assert (given.model_flops, given.method, given.tokens) == (5e9, "given", 16.0) and not trace_calls
    attribute = first_step(make(tmp_path / "b"), Model(TINY, flops_per_batch=3.0))
    assert (attribute.model_flops, attribute.method) == (3.0, "given: Model.flops_per_batch") and not trace_calls
    analytic = transformer_flops(TINY)
    session = make(tmp_path / "c")
    counted = first_step(session, Model(TINY))
    assert counted.model_flops == analytic.model_flops and counted.hardware_flops == 7_000
    info = session.summary()["info"]
    assert info["percent_active"] == pytest.approx(analytic.percent_active)
    assert info["flops_by_layer_kind"]["model"] == analytic.breakdown
    traced = first_step(make(tmp_path / "d"), Model())
    assert (traced.model_flops, traced.hardware_flops, traced.method) == (7_000, 7_000, "traced:fake")
    assert len(trace_calls) == 2


def test_each_batch_shape_is_counted_once(tmp_path):
    calls = []
    session = make(tmp_path)
    session.start(model=Model(TINY))
    for seq in (8, 8, 16, 8, 16):
        figures = session.count(seq, None, lambda seq=seq: calls.append(seq) or (2, seq))
        assert figures.model_flops == transformer_flops(TINY.__class__(**{**TINY.__dict__, "seq_len": seq})).model_flops
    assert calls == [8, 16]


def test_a_bad_flops_per_batch_warns_once_and_counts_instead(tmp_path):
    session = make(tmp_path)
    with pytest.warns(CarbonCallbacksWarning, match="flops_per_batch must be a number"):
        session.start(model=Model(TINY, flops_per_batch="lots"))
    figures = session.count("k", None, lambda: (2, 8))
    assert figures.model_flops == transformer_flops(TINY).model_flops


def test_a_failing_trace_warns_once_and_is_not_retried(tmp_path):
    calls = []

    def trace():
        calls.append(1)
        raise RuntimeError("tracer exploded")

    session = make(tmp_path)
    session.start(model=Model())
    with pytest.warns(CarbonCallbacksWarning, match="tracer exploded"):
        assert session.count("k", trace, lambda: None) is None
    assert session.count("k", trace, lambda: None) is None
    assert calls == [1]


def test_sensor_failure_warns_once_and_falls_back(tmp_path):
    session = make(tmp_path, log_every_n_steps=1, meter=step_meter(fail_after=1), chip="v100")
    session.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            session.step_end()
    assert sum("reading was unusable (read raised" in str(w.message) for w in caught) == 1
    summary = session.finish()
    assert summary["steps"] == 3
    # The first window was measured; the two that raised continue at its average power, labelled.
    assert summary["energy_methods"]["gpu"] == "measured:nvml+modeled:last-avg-power"
    estimated_s = summary["wall_time_s"] - 2.0  # the two estimated windows, timed by the wall clock
    assert summary["it_energy_kwh"] * 3.6e6 == pytest.approx(100.0 + 50.0 * estimated_s)  # 100 J / 2 s = 50 W
    assert summary["meter_faults"]["seconds"] == pytest.approx(estimated_s)
    assert summary["meter_faults"]["windows"] == 2 and summary["meter_faults"]["reasons"] == {"read raised": 2}


def test_a_sensor_that_fails_from_the_start_is_modeled_from_the_chip(tmp_path):
    session = make(tmp_path, log_every_n_steps=1, meter=step_meter(fail_after=0), chip="v100")
    session.start()
    with pytest.warns(CarbonCallbacksWarning, match="read raised"):
        session.step_end()
    summary = session.finish()
    assert summary["energy_methods"]["gpu"] == "modeled:tdp-fallback(v100)"
    assert summary["it_energy_kwh"] * 3.6e6 == pytest.approx(300.0 * summary["wall_time_s"])  # V100 TDP x time


def test_an_unwritable_output_dir_warns_once_and_keeps_the_run_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    meter = step_meter()
    session = make(blocker / "run", log_every_n_steps=1, meter=meter)
    with pytest.warns(CarbonCallbacksWarning, match="cannot write the run files") as caught:
        session.start()
        for _ in range(3):
            assert session.step_end(flops=flops()) is not None
        summary = session.finish()
    assert len([w for w in caught if "cannot write" in str(w.message)]) == 1
    assert session.run_dir is None and summary["steps"] == 3
    assert summary["energy_methods"] == {"gpu": "measured:nvml"}  # the meter is untouched: no TDP fallback
    assert session.metrics["carbon/energy_kwh"] == pytest.approx(3 * 100 * 1.2 / 3.6e6)


def test_state_dict_resume_continues(tmp_path):
    first = make(tmp_path / "a", log_every_n_steps=2)
    first.start()
    for _ in range(4):
        first.step_end(flops=flops(1.0))
    state = first.state_dict()
    resumed = make(tmp_path / "b", log_every_n_steps=2)
    resumed.load_state_dict(state)
    resumed.start()
    for _ in range(4):
        resumed.step_end(flops=flops(1.0))
    summary = resumed.finish()
    assert summary["steps"] == 8
    assert summary["total_model_flops"] == 8.0
    assert summary["it_energy_kwh"] == pytest.approx(4 * 100 / 3.6e6)


def test_resume_state_under_ranks_holds_an_equal_share_of_the_global_totals(tmp_path):
    session = make(tmp_path, log_every_n_steps=1)
    session.start(world_size=2, reduce_sum=lambda values: [v + 2 * v for v in values])  # the other rank did 2x
    session.step_end(flops=flops(3.0))
    state = session.state_dict()
    assert state["model_flops"] == pytest.approx(4.5) and state["energy_j"]["gpu"] == pytest.approx(150.0)


def test_every_interval_and_a_finished_end_sum_over_ranks_with_the_collective(tmp_path):
    calls = []

    def twice(values):
        calls.append(len(values))
        return [2 * v for v in values]

    session = make(tmp_path, log_every_n_steps=1)
    session.start(world_size=2, reduce_sum=twice)
    assert session.step_end(flops=flops(3.0))["carbon/energy_kwh"] == pytest.approx(200 * 1.2 / 3.6e6)
    summary = session.finish()
    assert len(calls) == 2  # the interval, then the end
    assert summary["world_size"] == 2 and summary["num_chips"] == 2
    assert summary["total_model_flops"] == 6.0
    assert summary["it_energy_kwh"] == pytest.approx(200 / 3.6e6)


def test_a_failed_end_adds_this_ranks_work_to_the_last_global_totals_without_a_collective(tmp_path):
    calls = []
    session = make(tmp_path, log_every_n_steps=1)
    session.start(world_size=2, reduce_sum=lambda values: calls.append(1) or [2 * v for v in values])
    session.step_end(flops=flops(3.0))  # both ranks: 6 FLOPs
    session.step_end(flops=flops(1.0), close=False)
    summary = session.finish("failed")  # the other rank may be gone
    assert summary["status"] == "failed" and summary["total_model_flops"] == 7.0 and calls == [1]


def test_non_zero_rank_writes_nothing(tmp_path, capsys):
    session = make(tmp_path / "run", log_every_n_steps=1)
    session.start(rank=1, world_size=2)
    session.step_end()
    session.finish()
    assert not (tmp_path / "run").exists()
    assert capsys.readouterr().out == ""


def test_the_report_is_printed_once_by_rank_0(tmp_path, capsys):
    session = make(tmp_path, log_every_n_steps=1)
    session.start()
    session.step_end()
    session.finish()
    assert session.finish() is None  # a second finish has no run to close
    assert capsys.readouterr().out.count("carbon-callbacks: 1 steps, status finished") == 1


def test_state_loaded_after_a_finished_run_applies_to_the_next(tmp_path):
    session = make(tmp_path, log_every_n_steps=1)
    session.start()
    session.step_end()
    state = session.state_dict()
    session.finish()
    session.load_state_dict(state)  # e.g. a reused callback restored from a checkpoint before its next fit
    session.start()
    session.step_end()
    assert session.finish()["steps"] == 2


def test_summary_mid_run_covers_every_completed_step(tmp_path):
    session = make(tmp_path, log_every_n_steps=10)
    session.start()
    for _ in range(3):
        session.step_end(flops=flops())
    assert session.summary()["steps"] == 3 and session.running


@pytest.mark.parametrize(
    ("exception", "status"),
    [(None, "finished"), (KeyboardInterrupt(), "interrupted"), (RuntimeError("x"), "failed"),
     (ValueError("nan"), "failed")],
)
def test_status_for_an_ending(exception, status):
    assert status_for(exception) == status


def test_a_meter_the_session_made_is_closed_and_replaced_each_run(tmp_path):
    made = []

    def factory(**options):
        made.append(step_meter())
        return made[-1]

    session = RunSession(**SITE, output_dir=tmp_path, log_every_n_steps=1)
    for _ in range(2):
        session.start(meter_factory=factory)
        session.step_end()
        session.finish()
    assert len(made) == 2 and all(meter.closed for meter in made)


def test_a_meter_passed_in_stays_open_for_its_owner(tmp_path):
    meter = step_meter()
    session = make(tmp_path, meter=meter, log_every_n_steps=1)
    for _ in range(2):  # a second run reads the same, still open, meter
        session.start()
        session.step_end()
        assert session.finish()["it_energy_kwh"] == pytest.approx(100 / 3.6e6)
    assert not meter.closed


def test_a_failing_hook_warns_once_and_returns_none(tmp_path, monkeypatch):
    monkeypatch.delenv(STRICT_ENV)  # as users run: a warning, and training goes on

    class Adapter:
        session = make(tmp_path)

        @guarded
        def on_batch_end(self):
            raise ZeroDivisionError("oops")

    adapter = Adapter()
    with pytest.warns(CarbonCallbacksWarning, match="on_batch_end failed") as caught:
        assert adapter.on_batch_end() is None
        assert adapter.on_batch_end() is None
    assert len(caught) == 1


def test_the_old_tracker_name_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="use carbon_callbacks.RunSession"):
        assert carbon_callbacks.Tracker is RunSession


def test_a_second_run_of_the_same_model_keeps_its_counts_and_facts(tmp_path):
    calls = []

    def trace():
        calls.append(1)
        return carbon_callbacks.FlopCount(total=7_000, executed=7_000, method="traced:fake", framework="x",
                                          includes_backward=True)

    session, model = make(tmp_path), Model(TINY)
    for _ in range(2):
        session.start(model=model)
        assert session.count("k", trace, lambda: (2, 8)).hardware_flops == 7_000
        session.step_end()
        info = session.finish()["info"]
        assert info["flops_method"].startswith("model: analytic") and info["percent_active"] < 100
    assert len(calls) == 1
    model.flops_per_batch = 5.0  # a new source: counts start again
    session.start(model=model)
    assert session.count("k", trace, lambda: (2, 8)).model_flops == 5.0


def test_in_strict_mode_a_failing_hook_raises(tmp_path):
    class Adapter:
        session = make(tmp_path)

        @guarded
        def on_batch_end(self):
            raise ZeroDivisionError("oops")

    with pytest.raises(ZeroDivisionError, match="oops"):
        Adapter().on_batch_end()


def test_reading_the_run_never_splits_an_interval(tmp_path):
    session = make(tmp_path, log_every_n_steps=5)
    session.start()
    for i in range(1, 13):
        session.step_end(flops=flops(1.0))
        if i % 2 == 0:  # a checkpoint every 2 steps: its state and a summary both cover every step so far
            assert session.state_dict()["steps"] == i and session.summary()["steps"] == i
    session.finish()
    _, records = read_run(tmp_path)
    assert [r["num_steps"] for r in records] == [5, 5, 2]


def test_the_metric_keys_are_fixed_at_the_start(tmp_path):
    session = make(tmp_path, log_every_n_steps=2, chip="v100", dtype="fp16")
    session.start(model=Model(flops_per_batch=10.0))
    assert list(session.metrics) == list(METRIC_KEYS)
    assert all(math.isnan(v) for v in session.metrics.values())  # nothing measured yet
    session.step_end(flops=flops(10.0))
    assert session.metrics["carbon/flops"] == 10.0 and math.isnan(session.metrics["carbon/energy_kwh"])
    assert not any(math.isnan(v) for v in session.step_end(flops=flops(10.0)).values())
    no_flops = make(tmp_path / "b")
    no_flops.start(model=Model(), traceable=False, untraceable_reason="test;")
    assert "carbon/flops" not in no_flops.metrics and "carbon/mfu" not in no_flops.metrics


def test_the_final_metrics_equal_run_json(tmp_path):
    session = make(tmp_path, log_every_n_steps=4)
    session.start()
    for _ in range(6):
        session.step_end(flops=flops())
    summary = session.finish()
    final = session.metrics
    assert final["carbon/energy_kwh"] == summary["energy_kwh"]
    assert final["carbon/co2e_kg"] == summary["gross_co2e_kg"]
    assert final["carbon/co2e_net_kg"] == summary["net_co2e_kg"]


def test_a_folder_holding_a_run_gets_a_new_subfolder_and_one_line(tmp_path, capsys):
    first = make(tmp_path)
    first.start()
    first.step_end()
    first.finish()
    second = make(tmp_path)
    second.start()
    assert second.run_dir.parent == tmp_path and second.run_dir != tmp_path
    assert f"{tmp_path} already holds a run; this run is written to {second.run_dir}" in capsys.readouterr().out
    assert read_run(tmp_path)[0]["status"] == "finished"  # the first run is untouched


def test_a_resumed_run_continues_in_its_own_folder(tmp_path):
    first = make(tmp_path / "a", log_every_n_steps=2)
    first.start()
    for _ in range(3):
        first.step_end(flops=flops(1.0))
    state = first.state_dict()
    assert state["run_dir"] == str(tmp_path / "a")
    first.finish("failed")  # the process that wrote it is gone (it ended at the checkpoint's step)
    resumed = RunSession(**SITE, meter=step_meter(), log_every_n_steps=2)
    resumed.load_state_dict(state)
    resumed.start(default_dir=tmp_path / "elsewhere")
    resumed.step_end(flops=flops(1.0))
    assert resumed.run_dir == tmp_path / "a" and resumed.finish()["steps"] == 4


def test_continue_runs_carries_the_totals_into_the_next_run(tmp_path):
    session = make(tmp_path, log_every_n_steps=1, continue_runs=True)
    for _ in range(2):
        session.start()
        session.step_end(flops=flops(1.0))
        summary = session.finish()
    assert summary["steps"] == 2 and session.run_dir == tmp_path
    fresh = make(tmp_path / "b", log_every_n_steps=1)
    for _ in range(2):
        fresh.start()
        fresh.step_end(flops=flops(1.0))
        assert fresh.finish()["steps"] == 1


def test_a_mask_gives_the_real_tokens_and_the_padding_beside_them(tmp_path):
    session = make(tmp_path, log_every_n_steps=2)
    session.start()
    session.step_end(flops=flops(tokens=16.0), real_tokens=11)
    session.step_end(flops=flops(tokens=16.0), real_tokens=FakeDeviceScalar(9.0))  # read when the interval closes
    summary = session.finish()
    assert summary["tokens"] == 20.0 and summary["padding_tokens"] == 12.0
    assert summary["energy_j_per_token"] == pytest.approx(summary["energy_kwh"] * 3.6e6 / 20.0)


class FakeDeviceScalar:
    """A device scalar: converted to a float only when read."""

    def __init__(self, value):
        self.value, self.read = value, False

    def __float__(self):
        self.read = True
        return self.value


def test_the_run_folder_holds_the_report_and_params_name_the_facts(tmp_path):
    session = make(tmp_path, log_every_n_steps=1, chip="v100", training_type="fine-tuning")
    session.start()
    session.step_end(flops=flops())
    params = session.params()
    assert params["carbon/chip"] == "v100" and "carbon/energy_method" not in params  # not final yet
    assert params["carbon/pue"] == 1.2 and params["carbon/version"] == carbon_callbacks.__version__
    summary = session.finish()
    final = session.params()
    assert final["carbon/energy_method"] == "measured:nvml" and final["carbon/flops_method"] == "not counted"
    assert {k: v for k, v in final.items() if k in params} == params  # the facts logged first do not change
    assert summary["info"]["training_type"] == "fine-tuning"
    assert "co2_eq_emissions:" in (tmp_path / "report.md").read_text()


def test_the_session_asks_the_meter_factory_for_the_chosen_sensors(tmp_path):
    asked = []
    session = RunSession(**SITE, output_dir=tmp_path, rapl=False, chip="v100")
    session.start(meter_factory=lambda **options: asked.append(options) or step_meter())
    (options,) = asked
    assert options["chip"] == "v100" and options["nvml"] and not options["rapl"]
    assert options["host"].leader and options["host"].world == 1
