"""The training function test_ray_train.py hands to Ray Train: a Lightning fit with CarbonCallback and no logger, in
each of the run's workers (which import it by name: the test puts this folder on their PYTHONPATH). Ray's Lightning
helpers take the unified `lightning` package."""

from __future__ import annotations


def train_loop(config):
    import lightning.pytorch as pl
    import torch
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback

    from carbon_callbacks.lightning import CarbonCallback

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(16, 4)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.set_num_threads(1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 16))
    trainer = pl.Trainer(max_steps=6, log_every_n_steps=2, accelerator="cpu", devices="auto",
                         strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()], logger=False,
                         callbacks=[CarbonCallback(intensity=0.5, nvml=False), RayTrainReportCallback()],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Model(), torch.utils.data.DataLoader(data, batch_size=4))


def trainer_loop(config):
    import torch
    import transformers
    from ray.train.huggingface.transformers import RayTrainReportCallback

    from carbon_callbacks.transformers import CarbonCallback

    torch.set_num_threads(1)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32,
                                                                 n_positions=16))
    ids = torch.randint(0, 32, (64, 8), generator=torch.Generator().manual_seed(0))
    args = transformers.TrainingArguments(output_dir=config["output_dir"], max_steps=6, logging_steps=2,
                                          per_device_train_batch_size=2, report_to="none", save_strategy="steps",
                                          save_steps=6, disable_tqdm=True, use_cpu=True, ddp_backend="gloo")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=[{"input_ids": i, "labels": i} for i in ids],
                                   callbacks=[CarbonCallback(intensity=0.5, nvml=False), RayTrainReportCallback()])
    trainer.train()
