"""The Hugging Face `Trainer` with `callbacks=[CarbonCallback(...)]`: real `train()` runs of a GPT-2 and a Llama built
from configs (no download), on token batches made here.

What users read is read back with its own client: TensorBoard's events (`report_to=["tensorboard"]`),
`trainer.state.log_history` and the `trainer_state.json` the Trainer saves. FLOPs are checked against torch's
`FlopCounterMode` over the steps that really ran (the micro-batches a forward pre-hook of the test saw, run again).
"""

from __future__ import annotations

import json
import shutil

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
import torch  # noqa: E402

from carbon_callbacks import TransformerConfig, read_run  # noqa: E402
from carbon_callbacks.flops import transformer_flops  # noqa: E402
from carbon_callbacks.meters import ReplayMeter  # noqa: E402
from carbon_callbacks.transformers import STATE_FILE, CarbonCallback  # noqa: E402

from readers import tensorboard_scalars  # noqa: E402

torch.set_num_threads(1)  # tiny models on a shared 2-core machine
pytestmark = pytest.mark.slow

SITE = {"intensity": 0.5, "net_intensity": 0.2, "pue": 1.2}
J_PER_KWH = 3.6e6
VOCAB, BATCH = 128, 4
#: Every logging interval: 10 J over 1 s, whatever the machine's speed.
JOULES = 10.0
TOTALS = {"carbon/energy_kwh": "energy_kwh", "carbon/co2e_kg": "gross_co2e_kg", "carbon/co2e_net_kg": "net_co2e_kg"}


def gpt2():
    return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0,
                                   eos_token_id=0)


def llama():
    return transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)


def rows(count: int, lengths=(16,), seed: int = 0) -> list[dict]:
    """`count` examples of token ids, their lengths cycling through `lengths`."""
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, VOCAB, (lengths[i % len(lengths)],), generator=generator)}
            for i in range(count)]


def pad(examples: list[dict]) -> dict:
    """A collator with dynamic padding, as `DataCollatorWithPadding` makes batches: right-padded ids, the mask of
    real tokens, labels ignored on the padding."""
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros(len(examples), length, dtype=torch.long)
    mask = torch.zeros(len(examples), length, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e["input_ids"])] = e["input_ids"]
        mask[i, :len(e["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def make_trainer(out, config, data, callback, wrap=None, **arguments):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model = wrap(model) if wrap is not None else model
    args = transformers.TrainingArguments(**{
        "output_dir": str(out), "max_steps": 5, "per_device_train_batch_size": BATCH, "logging_steps": 2,
        "report_to": "none", "save_strategy": "no", "disable_tqdm": True, "use_cpu": True, "seed": 0, **arguments})
    return transformers.Trainer(model=model, args=args, train_dataset=data, data_collator=pad, callbacks=[callback])


def train_seeing_batches(trainer, **kwargs) -> list[dict]:
    """Trains; returns the training micro-batches the model received, in order (a forward pre-hook of the test;
    the callback's count runs the forward on meta or fake tensors, which are not a step)."""
    from carbon_callbacks._compat.torch import is_fake

    batches: list[dict] = []

    def hook(module, args, kwargs):
        if module.training and not (is_fake(kwargs["input_ids"]) or kwargs["input_ids"].is_meta):
            batches.append(dict(kwargs))

    handle = trainer.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        trainer.train(**kwargs)
    finally:
        handle.remove()
    return batches


def real_flops(model, batch) -> int:
    """FlopCounterMode (with the library's formulas for what it misses) over the step as it ran: forward, loss,
    backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from carbon_callbacks.flops._torch import formulas

    with FlopCounterMode(display=False, custom_mapping=formulas()) as counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def callback(**kwargs) -> CarbonCallback:
    return CarbonCallback(**{**SITE, "meter": ReplayMeter(energy_j=JOULES, seconds=1.0), **kwargs})


@pytest.fixture(scope="module", params=[gpt2, llama], ids=["gpt2", "llama"])
def tensorboard_run(request, tmp_path_factory):
    """5 steps logged every 2 with `report_to=["tensorboard"]`: rows at steps 2 and 4, then the closing row."""
    out = tmp_path_factory.mktemp(request.param.__name__)
    carbon = callback()
    trainer = make_trainer(out, request.param(), rows(5 * BATCH), carbon, report_to=["tensorboard"])
    batches = train_seeing_batches(trainer)
    trainer.save_state()  # trainer_state.json in output_dir, as in every checkpoint
    summary, records = read_run(carbon.session.run_dir)
    return {"out": out, "trainer": trainer, "summary": summary, "records": records, "batches": batches}


def test_the_run_folder_is_inside_output_dir(tensorboard_run):
    summary, out = tensorboard_run["summary"], tensorboard_run["out"]
    (folder,) = (out / "carbon").iterdir()
    assert read_run(folder)[0] == summary
    assert summary["steps"] == 5 and summary["status"] == "finished"
    assert summary["info"]["framework"] == f"transformers {transformers.__version__}"


def test_carbon_tags_are_in_tensorboard_next_to_the_loss(tensorboard_run):
    summary, records = tensorboard_run["summary"], tensorboard_run["records"]
    scalars = tensorboard_scalars(tensorboard_run["out"] / "runs")
    assert [step for step, _ in scalars["train/loss"]] == [2, 4]
    energy = scalars["train/carbon/energy_kwh"]  # the Trainer's integrations prefix training rows with train/
    assert [step for step, _ in energy] == [2, 4, 5] == [r["step"] for r in records]
    for (_, value), record in zip(energy, records):
        assert value == pytest.approx(record["energy_kwh"], rel=1e-6)  # float32 events
    for key, field in TOTALS.items():
        assert scalars[f"train/{key}"][-1] == (5, pytest.approx(summary[field], rel=1e-6))
    assert {"train/carbon/flops", "train/carbon/step_time_s", "train/carbon/co2e_net_kg"} <= set(scalars)


def test_the_last_log_history_row_is_run_json(tensorboard_run):
    summary, trainer = tensorboard_run["summary"], tensorboard_run["trainer"]
    saved = json.loads((tensorboard_run["out"] / "trainer_state.json").read_text())["log_history"]
    assert saved == trainer.state.log_history
    last = saved[-1]
    assert "train_runtime" in last and last["step"] == 5
    for key, field in TOTALS.items():
        assert last[key] == summary[field]
    assert summary["energy_kwh"] == pytest.approx(3 * JOULES * SITE["pue"] / J_PER_KWH, rel=1e-12)
    assert [r["step"] for r in saved if "carbon/energy_kwh" in r] == [2, 4, 5]
    assert not [r for r in saved if "loss" in r and "carbon/energy_kwh" not in r]


def test_model_flops_equal_the_flop_counter_over_the_real_steps(tensorboard_run):
    trainer, summary = tensorboard_run["trainer"], tensorboard_run["summary"]
    batches = tensorboard_run["batches"]
    assert len(batches) == 5
    real = [real_flops(trainer.model, batch) for batch in batches]
    assert summary["total_model_flops"] == pytest.approx(sum(real), rel=0.01)
    assert trainer.state.log_history[-1]["carbon/flops"] == pytest.approx(real[-1], rel=0.01)
    assert summary["tokens"] == 5 * BATCH * 16 and summary["padding_tokens"] == 0
    assert summary["info"]["flops_method"].startswith("model: analytic")


@pytest.fixture(scope="module")
def accumulated_run(tmp_path_factory):
    """A Llama on padded batches of several lengths, 2 micro-batches per optimizer step, a row every step."""
    out = tmp_path_factory.mktemp("accumulated")
    carbon = callback()
    data = rows(6 * 2, lengths=(9, 16, 24, 12, 20, 7))
    trainer = make_trainer(out, llama(), data, carbon, max_steps=3, per_device_train_batch_size=2,
                           gradient_accumulation_steps=2, logging_steps=1)
    batches = train_seeing_batches(trainer)
    summary, records = read_run(carbon.session.run_dir)
    return {"trainer": trainer, "summary": summary, "records": records, "batches": batches}


def test_padded_batches_count_their_real_tokens(accumulated_run):
    summary, records, batches = (accumulated_run[k] for k in ("summary", "records", "batches"))
    assert len(batches) == 6 and len({b["input_ids"].shape[1] for b in batches}) > 1
    real = [int(b["attention_mask"].sum()) for b in batches]
    positions = [b["input_ids"].numel() for b in batches]
    assert [r["tokens"] for r in records] == [real[i] + real[i + 1] for i in (0, 2, 4)]
    assert [r["padding_tokens"] for r in records] == [positions[i] + positions[i + 1] - real[i] - real[i + 1]
                                                      for i in (0, 2, 4)]
    assert summary["tokens"] == sum(real) < sum(positions)


def test_an_optimizer_step_sums_its_micro_batches(accumulated_run):
    trainer, records, batches = (accumulated_run[k] for k in ("trainer", "records", "batches"))
    assert [(r["step"], r["num_steps"]) for r in records] == [(1, 1), (2, 1), (3, 1)]
    # Model FLOPs: each sequence's on its real tokens (padding is not the model's math); hardware: what ran.
    analytic = [sum(transformer_flops(TransformerConfig.from_hf(llama(), batch_size=1, seq_len=n)).model_flops
                    for n in b["attention_mask"].sum(1).tolist()) for b in batches]
    assert [r["model_flops"] for r in records] == [analytic[i] + analytic[i + 1] for i in (0, 2, 4)]
    real = [real_flops(trainer.model, b) for b in batches]
    assert [r["hardware_flops"] for r in records] == [real[i] + real[i + 1] for i in (0, 2, 4)]


def test_lora_gives_the_flops_of_the_step_that_runs(tmp_path):
    peft = pytest.importorskip("peft")
    carbon = callback()
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    trainer = make_trainer(tmp_path, llama(), rows(3 * BATCH), carbon, wrap=lambda m: peft.get_peft_model(m, lora),
                           max_steps=3, logging_steps=1)
    batches = train_seeing_batches(trainer)
    summary, records = read_run(carbon.session.run_dir)
    real = [real_flops(trainer.model, b) for b in batches]
    assert [r["model_flops"] for r in records] == pytest.approx(real, rel=0.01)
    full = transformer_flops(TransformerConfig.from_hf(llama(), batch_size=BATCH, seq_len=16)).model_flops
    assert records[0]["model_flops"] < 0.8 * full  # the model config's count assumes every weight trains
    assert "of parameters train" in summary["info"]["flops_method"]
    assert summary["info"]["percent_trainable"] < 5


def test_a_resumed_run_continues_its_totals_and_its_folder(tmp_path, monkeypatch):
    # transformers 4.46 (the hf floor) loads its own rng_state.pth (numpy arrays) with torch.load's default, which
    # torch 2.6 made weights-only; this checkpoint is the test's own.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    first = callback()
    trainer = make_trainer(tmp_path / "first", gpt2(), rows(6 * BATCH), first, max_steps=4, save_strategy="steps",
                           save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "first" / "checkpoint-4"
    saved = json.loads((checkpoint / STATE_FILE).read_text())
    assert saved["steps"] == 4 and saved["run_dir"] == str(first.session.run_dir)

    moved = tmp_path / "elsewhere"  # a checkpoint outside output_dir: resumed from where it is
    shutil.copytree(checkpoint, moved)
    second = callback()
    trainer = make_trainer(tmp_path / "first", gpt2(), rows(6 * BATCH), second, max_steps=6)
    trainer.train(resume_from_checkpoint=str(moved))
    summary, records = read_run(second.session.run_dir)
    assert second.session.run_dir == first.session.run_dir  # the same output_dir: the run goes on in its folder
    assert summary["steps"] == 6 and summary["status"] == "finished"
    assert summary["energy_kwh"] == pytest.approx(3 * JOULES * SITE["pue"] / J_PER_KWH, rel=1e-12)
    per_step = transformer_flops(TransformerConfig.from_hf(gpt2(), batch_size=BATCH, seq_len=16)).model_flops
    assert summary["total_model_flops"] == 6 * per_step
    assert [r["step"] for r in records] == [2, 4, 6]
    last = trainer.state.log_history[-1]
    for key, field in TOTALS.items():
        assert last[key] == summary[field]


def test_each_train_call_is_a_run_of_its_own(tmp_path):
    carbon = callback()
    trainer = make_trainer(tmp_path, gpt2(), rows(2 * BATCH), carbon, max_steps=2)
    folders = []
    for _ in range(2):
        trainer.train()
        folders.append(carbon.session.run_dir)
    assert folders[0] != folders[1] and {f.parent for f in folders} == {tmp_path / "carbon"}
    for folder in folders:  # the second run's forward hook replaced the first's: nothing is counted twice
        summary, _ = read_run(folder)
        assert summary["steps"] == 2 and summary["tokens"] == 2 * BATCH * 16


def test_it_runs_before_the_integrations_wherever_it_is_listed(tmp_path):
    carbon = callback()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    handler = transformers.trainer_callback.CallbackHandler(
        [transformers.DefaultFlowCallback(), transformers.PrinterCallback(), carbon], None, None, None, None)
    handler.on_init_end(args, transformers.TrainerState(), transformers.TrainerControl())
    assert [type(c).__name__ for c in handler.callbacks] == ["CarbonCallback", "DefaultFlowCallback",
                                                              "PrinterCallback"]


FACTS = {"carbon/region": "none (intensity given)", "carbon/pue": 1.2, "carbon/gross_kg_per_kwh": 0.5,
         "carbon/net_kg_per_kwh": 0.2, "carbon/num_chips": 1, "carbon/energy_method": "given"}


def test_mlflow_and_wandb_end_on_the_totals_and_hold_the_facts_and_files(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    wandb = pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient

    from readers import wandb_records

    monkeypatch.chdir(tmp_path)  # MLflow's artifacts (./mlruns) and W&B's files stay in the test's folder
    for name, value in {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "MLFLOW_EXPERIMENT_NAME": "carbon",
                        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    carbon = callback()
    trainer = make_trainer(tmp_path / "out", gpt2(), rows(5 * BATCH), carbon, report_to=["mlflow", "wandb"])
    trainer.train()
    wandb_id = wandb.run.id
    wandb.finish()
    summary, _ = read_run(carbon.session.run_dir)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("carbon").experiment_id])
    for key, field in TOTALS.items():
        assert run.data.metrics[key] == pytest.approx(summary[field], rel=1e-12)  # the run table: the last value
    assert [m.step for m in client.get_metric_history(run.info.run_id, "carbon/energy_kwh")] == [2, 4, 5]
    assert {k: str(v) for k, v in FACTS.items()}.items() <= run.data.params.items()
    assert run.data.params["carbon/flops_method"].startswith("model: analytic")
    assert {a.path for a in client.list_artifacts(run.info.run_id, "carbon")} == {"carbon/run.json",
                                                                                   "carbon/report.md"}

    recorded = wandb_records(tmp_path, wandb_id)
    for key, field in TOTALS.items():
        assert recorded["summary"][f"train/{key}"] == pytest.approx(summary[field], rel=1e-12)
    assert [h["train/global_step"] for h in recorded["history"] if "train/carbon/energy_kwh" in h] == [2, 4, 5]
    assert FACTS.items() <= recorded["config"].items()
    assert {"carbon/run.json", "carbon/report.md"} <= set(recorded["files"])
