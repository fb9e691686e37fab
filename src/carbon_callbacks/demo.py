"""The main job (`make demo`, `carbon-callbacks demo`): a dense transformer and its Switch twin, side by side.

Both reference GPTs (`carbon_callbacks.models`) train on CPU with the Lightning callback, on a text that ships
with Python itself (the source of the standard library's `argparse` module), tokenized byte by byte (vocabulary
256). The Switch twin replaces every second FFN with 4 experts of the same width, routed top-1: the same
activated parameters per token (plus a small router), 2.5x the parameters. The demo prints each run's report
card (the callback does, at the end of `fit`), then the dense-vs-sparse comparison and a what-if, and writes the
plot. The region and PUE it assumes are printed first.

Imports torch and Lightning (extra `lightning`) and matplotlib (extra `plot`); only the `demo` command imports it.
"""

from __future__ import annotations

import argparse as _argparse_module
import logging
import time
import warnings
from pathlib import Path

from carbon_callbacks._errors import check_count
from carbon_callbacks._reports.format import text_table
from carbon_callbacks._site.site import resolve_site

#: The demo's assumptions, printed before training.
REGION = "us-average"
STEPS = 240
LOG_EVERY = 10
SEED = 0
LEARNING_RATE = 3e-3


def corpus() -> tuple[bytes, str]:
    """The training text and where it comes from: the `argparse` module's source, shipped with Python."""
    path = Path(_argparse_module.__file__)
    try:
        return path.read_bytes(), f"{path.name} from the Python standard library ({len(path.read_bytes())} bytes)"
    except OSError as err:  # a Python without its .py sources: say so instead of training on something else
        raise RuntimeError(f"the demo trains on {path}, which cannot be read here: {err}") from None


def _configs():
    from carbon_callbacks.models import GPTConfig

    dense = GPTConfig(num_layers=2, d_model=64, num_heads=4, seq_len=64, batch_size=16, d_ff=256)
    return {"dense": dense, "switch": dense.with_(num_experts=4, top_k=1, moe_every=2)}


def _module(config, lr: float):
    import pytorch_lightning as pl
    import torch

    from carbon_callbacks.models.torch_gpt import GPT, loss_fn

    class LitGPT(pl.LightningModule):
        """The reference GPT trained with AdamW on next-byte prediction."""

        def __init__(self) -> None:
            super().__init__()
            self.model = GPT(config)
            self.config = config

        def training_step(self, batch, batch_idx):
            tokens, targets = batch
            loss = loss_fn(self.model(tokens), targets)
            self.log("train_loss", loss, on_step=True, prog_bar=False)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=lr)

    return LitGPT()


def _loader(data: bytes, config, steps: int):
    import torch

    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    generator = torch.Generator().manual_seed(SEED)
    starts = torch.randint(0, len(tokens) - config.seq_len - 1, (steps * config.batch_size,), generator=generator)
    windows = torch.stack([tokens[s : s + config.seq_len + 1] for s in starts.tolist()])
    dataset = torch.utils.data.TensorDataset(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())
    return torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=False)


def train(name: str, config, data: bytes, out: Path, *, region: str, pue: float | None, steps: int,
          twin=None) -> dict:
    """Trains one model with the Lightning callback; returns its summary (`run.json`) and its run folder (a new
    subfolder when an earlier demo's run is there)."""
    import pytorch_lightning as pl
    import torch

    from carbon_callbacks.flops import transformer_flops
    from carbon_callbacks.lightning import CarbonCallback

    torch.manual_seed(SEED)
    flops = transformer_flops(config)
    callback = CarbonCallback(region=region, pue=pue, dtype="fp32", output_dir=out / name,
                              log_every_n_steps=LOG_EVERY)
    info = {"model": f"reference GPT ({name})", "training_type": "pre-training"}
    if twin is not None:
        twin_flops = transformer_flops(twin)
        info["moe_twin"] = {"name": "switch", "model_flops_per_step": twin_flops.model_flops,
                            "hardware_flops_per_step": twin_flops.hardware_flops}
    callback.session.annotate(**info)
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=LOG_EVERY, default_root_dir=str(out),
    )
    print(f"\n=== {name}: {flops.params_total:,} parameters, {flops.percent_active:.1f}% activated per token, "
          f"{steps} steps of {config.batch_size} x {config.seq_len} bytes ===", flush=True)
    trainer.fit(_module(config, LEARNING_RATE), _loader(data, config, steps))
    if callback.summary is None or callback.session.run_dir is None:
        raise RuntimeError(f"the {name} run produced no summary (see the warnings above).")
    return callback.summary, callback.session.run_dir


def _per_step_gflops(summary: dict, kind: str) -> float | None:
    total = summary.get(f"total_{kind}_flops")
    return total / summary["steps"] / 1e9 if total else None


def _comparison(summaries: dict[str, dict], records: dict[str, list[dict]], tokens: int) -> str:
    rows = []
    names = list(summaries)
    for label, get in (
        ("parameters", lambda s, r: s["info"].get("params_total")),
        ("% activated per token", lambda s, r: s["info"].get("percent_active")),
        ("model GFLOPs per step", lambda s, r: _per_step_gflops(s, "model")),
        ("hardware GFLOPs per step", lambda s, r: _per_step_gflops(s, "hardware")),
        ("training time (s)", lambda s, r: s["wall_time_s"]),
        ("final loss", lambda s, r: next((x["loss"] for x in reversed(r) if x.get("loss") is not None), None)),
        ("energy (Wh, facility)", lambda s, r: s["energy_kwh"] * 1000.0),
        ("gross g CO2e", lambda s, r: s["gross_co2e_kg"] * 1000.0),
        ("net g CO2e", lambda s, r: s["net_co2e_kg"] * 1000.0),
        ("mJ per token (facility)", lambda s, r: s["energy_kwh"] * 3.6e9 / tokens),
    ):
        values = [get(summaries[n], records[n]) for n in names]
        ratio = values[1] / values[0] if all(isinstance(v, (int, float)) and v for v in values) else None
        rows.append([label, *values, f"x{ratio:.3g}" if ratio is not None else "-"])
    return text_table(["", *names, f"{names[1]} / {names[0]}"], rows)


def main(*, output_dir: str | Path = "demo-output", region: str = REGION, pue: float | None = None,
         steps: int | None = None) -> int:
    """Runs the demo; returns the exit code."""
    import pytorch_lightning  # noqa: F401  (sets its loggers' levels on import; quieted below)
    import torch

    from carbon_callbacks._record.reader import read_run
    from carbon_callbacks._reports.plot import plot_runs
    from carbon_callbacks._reports.whatif import format_whatif, whatif

    # One intra-op thread: these matmuls are tiny, and spare threads spin-waiting on a busy machine cost 10x.
    torch.set_num_threads(1)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    steps = check_count("steps", steps) if steps is not None else STEPS
    out = Path(output_dir)
    site = resolve_site(region=region, pue=pue)
    data, source = corpus()
    print("carbon-callbacks demo: a dense transformer and its Switch (MoE) twin, trained on CPU with Lightning")
    print(f"  region assumed: {site.region} ({site.gross_kg_per_kwh} kg CO2e/kWh gross, "
          f"{site.net_kg_per_kwh} net; {site.gross_source.split(' ; ')[0]})")
    print(f"  PUE assumed:    {site.pue} ({site.pue_source.split(' ; ')[0]})")
    print(f"  text:           {source}, byte-level (vocabulary 256)")
    print("  energy:         metered on this machine; each figure says how (measured or modeled)")
    configs = _configs()
    started = time.perf_counter()
    runs = {
        "dense": train("dense", configs["dense"], data, out, region=region, pue=pue, steps=steps,
                       twin=configs["switch"]),
        "switch": train("switch", configs["switch"], data, out, region=region, pue=pue, steps=steps),
    }
    summaries = {name: summary for name, (summary, _) in runs.items()}
    folders = {name: folder for name, (_, folder) in runs.items()}
    records = {name: read_run(folder)[1] for name, folder in folders.items()}
    print(f"\n=== dense vs sparse ({time.perf_counter() - started:.0f} s of training in all) ===")
    dense = configs["dense"]
    print(_comparison(summaries, records, steps * dense.batch_size * dense.seq_len))
    scenarios = whatif(summaries["dense"], regions=["fr", "pl"], pues=["google"])
    print("\n=== what-if for the dense run (moe-twin: estimated from its Switch twin's FLOPs) ===")
    print(format_whatif(scenarios))
    twin = next((s for s in scenarios if s.model == "moe-twin" and s.pue == summaries["dense"]["pue"]
                 and s.region == summaries["dense"]["region"]), None)
    if twin is not None:
        measured = summaries["switch"]["energy_kwh"] / summaries["dense"]["energy_kwh"]
        print(f"\nthe Switch twin, estimated from FLOPs before training it: energy x{twin.factor:.3g} of the dense "
              f"run; measured: x{measured:.3g}")
    plot = plot_runs([folders["dense"], folders["switch"]], out / "demo.png", labels=["dense", "switch"],
                     scenarios=scenarios, title="dense vs Switch: loss against carbon")
    print(f"\nrun directories: {folders['dense']}, {folders['switch']}  (carbon-callbacks report DIR [--markdown])")
    print(f"plot: {plot}")
    return 0
