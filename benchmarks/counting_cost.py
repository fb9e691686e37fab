"""What counting one torch training step costs: fake tensors (`count_step`) against the former real replay.

Run: `python benchmarks/counting_cost.py` (Hugging Face GPT-2 small, 124M parameters, built from its config with
no download; fp32 weights, SGD, batch 2 x 128 tokens; about ten minutes on 2 CPU cores). `--model llama` uses a
220M-parameter Llama built from a config instead; `--steps`, `--batch`, `--seq` change the workload.
`--interleave N` times the counts alone instead, N rounds in one process (see `interleaved`): the way to compare
counters on a machine whose load moves.

Each configuration trains `--steps` steps in its own subprocess (so that `ru_maxrss`, the peak resident memory of
the process, belongs to that configuration alone), in fp32 and under bf16 autocast:
- `bare`: training only;
- `fake`: one `count_step` after the first step (as an adapter counts at a batch end, gradients still held);
- `fake-stock`: the same with `FlopCounterMode` as the counter (what `count_step` used before its own dispatch
  mode, and still uses where torch lacks `TorchDispatchMode`);
- `fake-floor`: the step and its backward on the same fake tensors with no counter at all: what fake tensors
  cost by themselves, the least any count on them can cost;
- `module`, `module-stock`: `flops.count(model, batch)` (forward and backward of the outputs' sum, on the meta
  device) with the library's counter and with `FlopCounterMode`;
- `replay`: the former count instead (`_StepRunner` of the Lightning adapter until now: the real step and
  `loss.backward()` under `FlopCounterMode`, the gradients set aside and put back, the RNG state forked);
- `fallback`: `count_step`'s real-step fallback (the step and `autograd.grad`, no `.grad` written).
It prints, per configuration, the median time of one training step, the time of the count (the first one in the
process, and for the fake and module counts a second one of the same shape), their ratio, the counted FLOPs and
the peak memory; then the ratios of peak memory to `bare`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = ("bare", "fake", "fake-stock", "fake-floor", "module", "module-stock", "replay", "fallback")
#: The configurations counted twice in their process (the second count finds torch's fake-tensor cache warm).
TWICE = ("fake", "fake-stock", "fake-floor", "module", "module-stock")
PRECISIONS = ("fp32", "bf16")


def build(name: str):
    import transformers

    if name == "gpt2":
        config = transformers.GPT2Config()  # GPT-2 small: 12 layers, d_model 768, vocab 50257
        return transformers.GPT2LMHeadModel(config), config.vocab_size
    config = transformers.LlamaConfig(  # about 220M parameters
        num_hidden_layers=12, hidden_size=1024, num_attention_heads=16, num_key_value_heads=16,
        intermediate_size=2816, vocab_size=32000, max_position_embeddings=2048,
    )
    return transformers.LlamaForCausalLM(config), config.vocab_size


def replay(model, step, batch):
    """The former count: the step for real with its backward under the counter, no lasting effect."""
    import torch

    from carbon_callbacks.flops import count

    def run():
        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad for p in params]
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        try:
            for p in params:
                p.grad = None
            with torch.random.fork_rng(devices=[]):
                step(batch).backward()
        finally:
            for p, g in zip(params, grads):
                p.grad = g
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])

    return count(run, framework="torch")


def fallback(model, step, batch):
    """`count_step`'s real-step fallback, reached the way a custom op without a fake kernel reaches it."""
    from carbon_callbacks._compat import torch as torch_compat
    from carbon_callbacks.flops._torch_step import count_step

    original = torch_compat.fake_tensor_mode
    torch_compat.fake_tensor_mode = lambda: None  # as if torch had no fake tensors: the step runs for real
    try:
        return count_step(model, step, batch)
    finally:
        torch_compat.fake_tensor_mode = original


@contextlib.contextmanager
def stock_counter():
    """`FlopCounterMode` as the counter: the fallback taken where torch has no `TorchDispatchMode`."""
    from carbon_callbacks._compat import torch as torch_compat
    from carbon_callbacks.flops import _torch

    original = torch_compat.dispatch_mode_base
    torch_compat.dispatch_mode_base = lambda: None
    _torch._mode_class.cache_clear()
    try:
        yield
    finally:
        torch_compat.dispatch_mode_base = original
        _torch._mode_class.cache_clear()


def fake_floor(model, step, batch):
    """The step and `loss.backward()` on fake copies of the parameters and the batch, no counter: what fake
    tensors cost by themselves. Returns `None` (nothing is counted)."""
    from carbon_callbacks._compat import torch as torch_compat
    from carbon_callbacks.flops._torch_step import _map_tensors

    mode = torch_compat.fake_tensor_mode()
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    fakes = {name: mode.from_tensor(t) for name, t in tensors.items()}
    fake_batch = _map_tensors(batch, mode.from_tensor)
    with torch_compat.reparametrized(model, fakes), mode:
        step(fake_batch).backward()


def _setup(args):
    """The model, its training step and the counts of each configuration, as `child` and `interleaved` use them."""
    import torch

    from carbon_callbacks.flops import count
    from carbon_callbacks.flops._torch_step import count_step

    torch.manual_seed(0)
    model, vocab = build(args.model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (args.batch, args.seq))
    batch = {"input_ids": ids, "labels": ids}
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" \
        else contextlib.nullcontext

    def step(b):
        with autocast():
            return model(**b).loss

    def train_step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step(batch).backward()
        optimizer.step()
        return time.perf_counter() - start

    def with_stock(fn):
        def run():
            with stock_counter():
                return fn()
        return run

    counters = {"fake": lambda: count_step(model, step, batch), "replay": lambda: replay(model, step, batch),
                "fake-stock": with_stock(lambda: count_step(model, step, batch)),
                "fake-floor": lambda: fake_floor(model, step, batch),
                "module": lambda: count(model, **batch),
                "module-stock": with_stock(lambda: count(model, **batch)),
                "fallback": lambda: fallback(model, step, batch)}
    return model, train_step, counters


def _timed(run):
    start, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, time.perf_counter() - start, time.process_time() - cpu


def child(args) -> None:
    model, train_step, counters = _setup(args)
    step_times, count_times, count_cpu, flops, method = [], [], [], None, None
    for i in range(args.steps):
        step_times.append(train_step())
        if i == 0 and args.config != "bare":  # at the first batch end, with the step's gradients still held
            for _ in range(2 if args.config in TWICE else 1):
                result, wall, cpu = _timed(counters[args.config])
                count_times.append(wall)
                count_cpu.append(cpu)
            flops, method = (result.total, result.method) if result is not None else (None, None)
    print(json.dumps({
        "config": args.config, "precision": args.precision,
        "params": sum(p.numel() for p in model.parameters()),
        "step_s": statistics.median(step_times[1:]) if len(step_times) > 1 else step_times[0],
        "count_s": count_times, "count_cpu_s": count_cpu, "flops": flops, "method": method,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "load": os.getloadavg()[0],
    }))


def interleaved(args) -> None:
    """`--interleave N`: after one training step, N rounds of the counts of `--configs` in one process, the order
    rotating each round, no more training. Prints each count's first run in the process (round 1) and the medians
    of rounds 2 to N, wall and CPU time (of this process: other processes' load does not count), with the load
    average, and the ratios of the CPU medians to `fake-floor`'s (fake tensors with no counter)."""
    model, train_step, counters = _setup(args)
    configs = [c for c in args.configs.split(",") if c in counters]
    print(f"one training step: {train_step() * 1000:.0f} ms; load {os.getloadavg()[0]:.1f}", flush=True)
    times: dict[str, list[tuple[float, float]]] = {c: [] for c in configs}
    for r in range(args.interleave):
        for config in configs[r % len(configs):] + configs[:r % len(configs)]:
            result, wall, cpu = _timed(counters[config])
            times[config].append((wall, cpu))
            print(json.dumps({"round": r + 1, "config": config, "wall_s": wall, "cpu_s": cpu,
                              "flops": getattr(result, "total", None), "load": os.getloadavg()[0]}), flush=True)
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    floor = statistics.median(t[1] for t in times["fake-floor"][1:]) if "fake-floor" in times else None
    print("config | 1st ms (wall, CPU) | median of rounds 2-N ms (wall, CPU) | min CPU ms | CPU median / fake-floor")
    for config, runs in times.items():
        wall, cpu = statistics.median(t[0] for t in runs[1:]), statistics.median(t[1] for t in runs[1:])
        ratio = f"{cpu / floor:.2f}" if floor else "-"
        print(f"{config} | {runs[0][0] * 1000:.0f}, {runs[0][1] * 1000:.0f} | {wall * 1000:.0f}, {cpu * 1000:.0f} | "
              f"{min(t[1] for t in runs[1:]) * 1000:.0f} | {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--interleave", type=int, default=0,
                        help="N rounds of the counts alone, in one process (see `interleaved`)")
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.config:
        child(args)
        return
    if args.interleave:
        args.precision = args.precisions.split(",")[0]
        interleaved(args)
        return
    import platform

    import torch
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads; model {args.model}, batch {args.batch} x {args.seq} tokens, "
          f"{args.steps} steps per configuration, SGD")
    rows = []
    for precision in args.precisions.split(","):
        for config in args.configs.split(","):
            cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--batch",
                   str(args.batch), "--seq", str(args.seq), "--config", config, "--precision", precision]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nparameters: {rows[0]['params']}")
    header = ("precision", "config", "step ms", "count ms (1st, 2nd)", "count CPU ms (1st, 2nd)",
              "count / step (1st, 2nd)", "FLOPs", "peak MB", "peak / bare", "load")
    print(" | ".join(header))
    bare = {r["precision"]: r["maxrss_mb"] for r in rows if r["config"] == "bare"}
    for r in rows:
        counts = ", ".join(f"{t * 1000:.0f}" for t in r["count_s"]) or "-"
        cpu = ", ".join(f"{t * 1000:.0f}" for t in r["count_cpu_s"]) or "-"
        ratio = ", ".join(f"{t / r['step_s']:.3f}" for t in r["count_s"]) or "-"
        peak = f"{r['maxrss_mb'] / bare[r['precision']]:.3f}" if r["precision"] in bare else "-"
        print(" | ".join((r["precision"], r["config"], f"{r['step_s'] * 1000:.0f}", counts, cpu, ratio,
                          str(r["flops"] or "-"), f"{r['maxrss_mb']:.0f}", peak, f"{r['load']:.1f}")))


if __name__ == "__main__":
    main()
