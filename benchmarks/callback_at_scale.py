"""The Lightning callback on models of 100M+ parameters: peak memory with and without it, and a dynamic-length fit.

Run: `python benchmarks/callback_at_scale.py [--markdown]` (about fifteen minutes on 2 CPU cores).

1. Peak memory: Hugging Face GPT-2 small (124M parameters, built from its config, no download), fp32, SGD, batch 2 x
   128 tokens, `--steps` Lightning steps, with and without `CarbonCallback` (which counts the step once, on fake
   tensors). Each fit runs in its own subprocess, so `ru_maxrss` (the process's peak resident memory) is that fit's
   alone; `--repeats` pairs.
2. Dynamic lengths: a medium Llama (about 40M parameters) fit on batches of 4 whose sequence length changes at
   every step (dynamic padding, lengths 64 to 256), with and without the callback, in one process, in alternating
   order; the callback counts 5 lengths on fake tensors and predicts the rest. Reported: the median ratio of fit
   times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings


def lit(model):
    import pytorch_lightning as pl
    import torch

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            return self.model(**batch, labels=batch["input_ids"]).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    return Lit()


def fit(module, batches, callback) -> float:
    import pytorch_lightning as pl
    import torch

    trainer = pl.Trainer(max_steps=len(batches), accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[callback] if callback else [], default_root_dir=tempfile.mkdtemp())
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    return time.perf_counter() - start


def callback():
    from carbon_callbacks.lightning import CarbonCallback

    return CarbonCallback(intensity=0.4, rapl=False, output_dir=tempfile.mkdtemp(), log_every_n_steps=5)


def memory_child(with_callback: bool, steps: int) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    batches = [{"input_ids": torch.randint(0, 50257, (2, 128))} for _ in range(steps)]
    seconds = fit(lit(model), batches, callback() if with_callback else None)
    return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds,
            "params": sum(p.numel() for p in model.parameters())}


def lengths_run(repeats: int, steps: int) -> dict:
    import torch
    import transformers

    config = transformers.LlamaConfig(num_hidden_layers=6, hidden_size=512, intermediate_size=1408,
                                      num_attention_heads=8, num_key_value_heads=8, vocab_size=32000,
                                      max_position_embeddings=512)
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(64, 257, (steps,), generator=generator).tolist()
    batches = []
    for n in lengths:
        mask = torch.ones(4, n, dtype=torch.long)
        mask[1:, n - n // 8:] = 0
        batches.append({"input_ids": torch.randint(0, 32000, (4, n), generator=generator), "attention_mask": mask})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    fit(lit(model), batches[:2], None)  # warm-up
    ratios, bare_s, tracked_s = [], [], []
    for repeat in range(repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        times = {}
        for tracked in order:
            times[tracked] = fit(lit(model), batches, callback() if tracked else None)
        bare_s.append(times[False])
        tracked_s.append(times[True])
        ratios.append(times[True] / times[False])
    return {"params": params, "steps": steps, "distinct_lengths": len(set(lengths)), "bare_s": bare_s,
            "tracked_s": tracked_s, "ratio_median": statistics.median(ratios), "ratios": ratios}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--length-steps", type=int, default=30)
    parser.add_argument("--child", choices=["with", "without"])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(memory_child(args.child == "with", args.steps)))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    memory = {"with": [], "without": []}
    for repeat in range(args.repeats):
        for label in (("without", "with") if repeat % 2 == 0 else ("with", "without")):
            out = subprocess.run([sys.executable, __file__, "--child", label, "--steps", str(args.steps)],
                                 capture_output=True, text=True, env=env, check=True).stdout
            memory[label].append(json.loads(out.split("RESULT ", 1)[1]))
    peak = {k: statistics.median(r["peak_mb"] for r in v) for k, v in memory.items()}
    lengths = lengths_run(args.repeats, args.length_steps)
    load = os.getloadavg()[0]
    if args.markdown:
        print("| measurement | without | with | ratio |\n|---|---:|---:|---:|")
        print(f"| peak memory, GPT-2 {memory['with'][0]['params'] / 1e6:.0f}M fp32, {args.steps} steps (MB) | "
              f"{peak['without']:.0f} | {peak['with']:.0f} | {peak['with'] / peak['without']:.3f} |")
        print(f"| dynamic-length fit, Llama {lengths['params'] / 1e6:.0f}M, {lengths['steps']} steps, "
              f"{lengths['distinct_lengths']} lengths (s, median) | {statistics.median(lengths['bare_s']):.1f} | "
              f"{statistics.median(lengths['tracked_s']):.1f} | {lengths['ratio_median']:.3f} |")
        ratios = [round(r, 3) for r in lengths["ratios"]]
        print(f"\nload average {load:.1f}; pairs: {args.repeats}; fit ratios {ratios}")
    else:
        print(json.dumps({"memory": memory, "peak_ratio": peak["with"] / peak["without"], "lengths": lengths,
                          "load": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
