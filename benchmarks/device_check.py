"""GPU check: NVML counter energy vs the sampled power integral vs the modeled estimate, under a known matmul load.

Run on a machine with an NVIDIA GPU and a CUDA build of torch:
    python benchmarks/device_check.py [--seconds 20] [--size 8192] [--chip h200]
It prints a clear message and exits 0 where there is no GPU. On a recent data-centre GPU it takes well under a minute.

What it does, on CUDA device 0 only:
1. idle window (2 s), then a bf16 matmul loop for `--seconds`, with three meters open on the same window:
   the NVML total-energy counter, the NVML power sampler (the pre-Volta path, forced), and the chips-table model
   (system power where the table has it, else TDP x 1.0);
2. the same load cut into short per-step windows (~20 ms) whose sum is compared with one run-long window,
   to check the short-window attribution;
3. the per-window cost of the NVML counter meter;
4. `--fsdp`: a Lightning fit of a Llama built from its config (about 110M parameters, bf16-mixed) under
   `strategy="fsdp"` on this one GPU, with and without the callback: the callback must not trace the sharded step
   (FLOPs from the model config), must add no GPU memory (peak ratio), and its energy must be `measured:nvml`;
   then one fake-tensor count of the same model's step (`count_step`) timed against one real step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from unittest import mock


def _chip_for(name: str, override: str | None):
    from carbon_callbacks import get_chip
    from carbon_callbacks._site.tables import normalize_name

    candidates = [override] if override else []
    words = normalize_name(name).replace("nvidia-", "").split("-")
    candidates += ["-".join(words), "-".join(words[:2]), words[0]]
    for candidate in candidates:
        try:
            return get_chip(candidate)
        except Exception:  # noqa: BLE001 - try the next spelling
            continue
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description="NVML counter vs sampled vs modeled energy under a matmul load")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration, s")
    parser.add_argument("--size", type=int, default=8192, help="square matrix size")
    parser.add_argument("--chip", help="chips-table name for the modeled estimate (default: from the GPU name)")
    parser.add_argument("--fsdp", action="store_true", help="also the Lightning FSDP check (needs transformers)")
    args = parser.parse_args()

    try:
        import torch
    except ImportError:
        print("device_check: torch is not installed; nothing to check (needs an NVIDIA GPU). Exiting 0.")
        return 0
    if not torch.cuda.is_available():
        print("device_check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing to check. Exiting 0.")
        return 0

    import pynvml

    from carbon_callbacks.meters import ModeledAcceleratorMeter, NvmlMeter, SensorUnavailableError

    try:
        counter = NvmlMeter(devices=[0])
    except SensorUnavailableError as err:
        print(f"device_check: NVML unavailable ({err}); nothing to check. Exiting 0.")
        return 0
    with mock.patch.object(
        pynvml, "nvmlDeviceGetTotalEnergyConsumption", autospec=True,
        side_effect=pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED),
    ):
        sampled = NvmlMeter(devices=[0], sample_s=0.1)  # forced onto the power-sampling path
    gpu_name = counter._gpus["gpu:0"].name
    chip = _chip_for(gpu_name, args.chip)
    modeled = ModeledAcceleratorMeter(chip) if chip is not None else None
    print(f"device: {gpu_name}; torch {torch.__version__}; chip row: {chip.name if chip else 'none found'}")
    for note in counter.notes + sampled.notes + (modeled.notes if modeled else []):
        print(f"  {note}")

    meters = {"nvml counter": counter, "nvml sampled": sampled}
    if modeled is not None:
        meters["modeled"] = modeled
    a = torch.randn(args.size, args.size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(args.size, args.size, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()

    def window(label: str, seconds: float, load: bool) -> None:
        for m in meters.values():
            m.begin_window(label)
        start, matmuls = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            if load:
                for _ in range(10):
                    torch.matmul(a, b)
                matmuls += 10
                torch.cuda.synchronize()
            else:
                time.sleep(0.05)
        results = {name: m.end_window(label) for name, m in meters.items()}
        wall = results["nvml counter"].seconds
        tflops = 2 * args.size**3 * matmuls / wall / 1e12
        print(f"\n[{label}] {wall:.2f} s" + (f", {tflops:.0f} TFLOP/s bf16" if load else ""))
        for name, r in results.items():
            joules = r.energy_j.get("gpu", float("nan"))
            print(f"  {name:13s} {joules:10.1f} J  {joules / wall:7.1f} W  {r.methods.get('gpu')}")
        ref = results["nvml counter"].energy_j["gpu"]
        for name in ("nvml sampled", "modeled"):
            if name in results and ref > 0:
                print(f"  {name} / counter = {results[name].energy_j['gpu'] / ref:.3f}")

    window("idle", 2.0, load=False)
    window("matmul load", args.seconds, load=True)

    # Short windows: sum of ~20 ms step windows vs one window around them.
    counter.begin_window("outer")
    steps = []
    start = time.perf_counter()
    while time.perf_counter() - start < 5.0:
        counter.begin_window("step")
        torch.matmul(a, b)
        torch.cuda.synchronize()
        steps.append(counter.end_window("step"))
    outer = counter.end_window("outer")
    step_sum = sum(s.energy_j["gpu"] for s in steps)
    print(
        f"\n[short windows] {len(steps)} steps of {statistics.median(s.seconds for s in steps) * 1e3:.1f} ms median: "
        f"sum {step_sum:.1f} J vs run-long window {outer.energy_j['gpu']:.1f} J "
        f"(ratio {step_sum / outer.energy_j['gpu']:.3f}); zero-energy steps: "
        f"{sum(1 for s in steps if s.energy_j['gpu'] == 0)}"
    )

    costs = []
    for _ in range(2000):
        t = time.perf_counter()
        counter.begin_window("cost")
        counter.end_window("cost")
        costs.append(time.perf_counter() - t)
    print(f"\nNvmlMeter per-window cost (begin + end, 1 GPU): {statistics.median(costs) * 1e6:.1f} us median")
    for m in meters.values():
        m.close()
    if args.fsdp:
        fsdp_check(chip.name if chip else None)
    return 0


def fsdp_check(chip: str | None, steps: int = 20) -> None:
    """The callback under Lightning's FSDP strategy on one GPU: no trace, no extra memory, measured energy."""
    import pytorch_lightning as pl
    import torch
    import transformers

    from carbon_callbacks import TransformerConfig, transformer_flops
    from carbon_callbacks.flops import count_step
    from carbon_callbacks.lightning import CarbonCallback

    config = transformers.LlamaConfig(num_hidden_layers=8, hidden_size=768, intermediate_size=2048,
                                      num_attention_heads=12, num_key_value_heads=4, vocab_size=32000,
                                      max_position_embeddings=1024)
    batch, seq = 8, 512

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = transformers.LlamaForCausalLM(config)

        def training_step(self, tokens, batch_idx):
            return self.model(input_ids=tokens, labels=tokens).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    data = torch.randint(0, config.vocab_size, (steps * batch, seq))
    peaks = {}
    runs = (("without", []), ("with", [CarbonCallback(intensity=0.4, chip=chip, log_every_n_steps=5)]))
    for label, callbacks in runs:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        trainer = pl.Trainer(accelerator="cuda", devices=1, strategy="fsdp", precision="bf16-mixed", max_steps=steps,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=callbacks)
        trainer.fit(Lit(), torch.utils.data.DataLoader(data, batch_size=batch))
        peaks[label] = torch.cuda.max_memory_allocated()
        if callbacks:
            summary = callbacks[0].summary
            expected = steps * transformer_flops(TransformerConfig.from_hf(config, seq_len=seq,
                                                                           batch_size=batch)).model_flops
            print(f"\n[fsdp] flops method: {summary['info'].get('flops_method')}; total model FLOPs "
                  f"{summary['total_model_flops']:.4g} (analytic {expected:.4g}); energy {summary['energy_method']}; "
                  f"MFU {summary['mfu']}")
    print(f"[fsdp] peak GPU memory with / without the callback: {peaks['with'] / peaks['without']:.4f} "
          f"({peaks['with'] / 2**30:.2f} / {peaks['without'] / 2**30:.2f} GiB)")

    module = Lit().cuda()
    tokens = data[:batch].cuda()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    times = []
    for _ in range(4):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            module.training_step(tokens, 0).backward()
        optimizer.step()
        optimizer.zero_grad()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    counted = count_step(module, module.training_step, tokens, 0)
    count_s = time.perf_counter() - start
    step_s = statistics.median(times[1:])
    print(f"[count] one fake count {count_s * 1e3:.0f} ms = {count_s / step_s:.2f} of a {step_s * 1e3:.0f} ms step "
          f"({counted.method}; {counted.total:.4g} FLOPs)")


if __name__ == "__main__":
    sys.exit(main())
