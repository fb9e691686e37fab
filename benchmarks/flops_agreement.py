"""Agreement of the FLOP counters on the reference GPTs and CNN, and how long counting takes relative to one step.

Run: `KERAS_BACKEND=tensorflow python benchmarks/flops_agreement.py` (about two minutes on 2 CPU cores).

Prints, per model: the analytic model and hardware FLOPs per training step, the traced counts of torch, JAX (Flax)
and Keras (TensorFlow graph) as ratios to the analytic hardware FLOPs, the two stock counters this package
corrects (torch FlopCounterMode alone, XLA cost_analysis), and the time to count vs the median time of one
training step. Counting happens once per distinct input shape, never per step. Then the reference CNN's count on
each Keras backend (one subprocess per backend: Keras picks its backend at import), and a real architecture: the
Hugging Face GPT-2 small built from its config (`transformers`, no download), traced in torch against
`TransformerConfig.from_hf` (skipped without `transformers`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from carbon_callbacks._reports.format import text_table  # noqa: E402
from carbon_callbacks.flops import TransformerConfig, count, transformer_flops  # noqa: E402
from carbon_callbacks.flops._jax import xla_flops  # noqa: E402
from carbon_callbacks.models import flax_cnn, flax_gpt, keras_cnn, keras_gpt, torch_cnn, torch_gpt  # noqa: E402
from carbon_callbacks.models.cnn_config import CNN, cnn_flops  # noqa: E402
from carbon_callbacks.models.config import VARIANTS  # noqa: E402

CASES = VARIANTS


def timed(fn, repeats: int = 1):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def torch_numbers(cfg):
    torch.manual_seed(0)
    model = torch_gpt.GPT(cfg)
    tokens, targets = torch_gpt.random_batch(cfg)
    result, count_s = timed(lambda: count(model, tokens))
    with FlopCounterMode(display=False) as stock:
        torch_gpt.loss_fn(model(tokens), targets).backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch_gpt.train_step(model, opt, tokens, targets)
    _, step_s = timed(lambda: torch_gpt.train_step(model, opt, tokens, targets), repeats=9)
    return result.total, stock.get_total_flops(), count_s, step_s


def jax_numbers(cfg):
    model, params = flax_gpt.init(cfg)
    tokens, targets = flax_gpt.random_batch(cfg)
    step = flax_gpt.make_train_step(model)
    result, count_s = timed(lambda: count(step, params, tokens, targets))
    xla = xla_flops(step, params, tokens, targets)
    jax.block_until_ready(step(params, tokens, targets))
    _, step_s = timed(lambda: jax.block_until_ready(step(params, tokens, targets)), repeats=9)
    return result.total, xla, count_s, step_s


def keras_numbers(cfg):
    model = keras_gpt.build_gpt(cfg)
    tokens, targets = keras_gpt.random_batch(cfg)
    result, count_s = timed(lambda: count(model, tokens))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras_gpt.loss_fn())
    model.train_on_batch(tokens, targets)
    _, step_s = timed(lambda: model.train_on_batch(tokens, targets), repeats=9)
    return result.total, count_s, step_s


def cnn_numbers():
    """The CNN's row: the same columns as the GPTs' (its analytic model FLOPs = hardware FLOPs)."""
    torch.manual_seed(0)
    model = torch_cnn.CNN(CNN)
    images = torch_cnn.random_batch(CNN)
    t_result, t_count = timed(lambda: count(model, images))
    with FlopCounterMode(display=False) as stock:
        torch_cnn.loss_fn(model(images), images).backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch_cnn.train_step(model, opt, images)
    _, t_step = timed(lambda: torch_cnn.train_step(model, opt, images), repeats=9)

    fmodel, params = flax_cnn.init(CNN)
    fimages = flax_cnn.random_batch(CNN)
    step = flax_cnn.make_train_step(fmodel)
    j_result, j_count = timed(lambda: count(step, params, fimages))
    xla = xla_flops(step, params, fimages)
    jax.block_until_ready(step(params, fimages))
    _, j_step = timed(lambda: jax.block_until_ready(step(params, fimages)), repeats=9)

    k_total, k_count, k_step = keras_cnn_numbers()
    return (t_result.total, stock.get_total_flops(), t_count, t_step), (j_result.total, xla, j_count, j_step), (
        k_total, k_count, k_step)


def jax_cnn_dilated_input_formula() -> int:
    """The Flax CNN counted with the formula this package used before: output elements x window x input features,
    which charges the zeros `lhs_dilation` inserts (transposed convolutions, strided convolutions' gradients)."""
    from carbon_callbacks.flops import _jax

    def dilated_input(eqn, producers, backward):
        rhs, dims = _jax._shape(eqn.invars[1]), eqn.params["dimension_numbers"]
        window = 1
        for i in dims.rhs_spec[2:]:
            window *= rhs[i]
        out = 1
        for size in _jax._shape(eqn.outvars[0]):
            out *= size
        return 2 * out * rhs[dims.rhs_spec[1]] * window

    fmodel, params = flax_cnn.init(CNN)
    exact = _jax._FORMULAS["conv_general_dilated"]
    _jax._FORMULAS["conv_general_dilated"] = dilated_input
    try:
        return count(flax_cnn.make_train_step(fmodel), params, flax_cnn.random_batch(CNN)).total
    finally:
        _jax._FORMULAS["conv_general_dilated"] = exact


def keras_cnn_numbers():
    kmodel = keras_cnn.build_cnn(CNN)
    kimages = keras_cnn.random_batch(CNN)
    k_result, k_count = timed(lambda: count(kmodel, kimages))
    kmodel.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras_cnn.loss_fn())
    kmodel.train_on_batch(kimages, kimages)
    _, k_step = timed(lambda: kmodel.train_on_batch(kimages, kimages), repeats=9)
    return k_result.total, k_count, k_step


def keras_cnn_on(backend: str) -> dict:
    """The Keras CNN's count on `backend`, in a subprocess running this file with `--keras-cnn`."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, __file__, "--keras-cnn"], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


HF_ROW = "hf gpt2 small"


def hf_gpt2_row():
    """GPT-2 small from `transformers.GPT2Config()` (its defaults are GPT-2 small), batch 2 x 128 tokens."""
    try:
        import transformers
    except ImportError:
        return None
    config = transformers.GPT2Config()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, config.vocab_size, (2, 128))
    analytic = transformer_flops(TransformerConfig.from_hf(config, seq_len=128, batch_size=2))
    result, count_s = timed(lambda: count(model, ids))
    with FlopCounterMode(display=False) as stock:
        model(ids, labels=ids).loss.backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        opt.step()

    step()
    _, step_s = timed(step, repeats=3)  # 3 steps of a 124M model; the others take 9
    hw = analytic.hardware_flops
    params = sum(p.numel() for p in model.parameters())
    print(f"hf gpt2 small: {params} parameters in the transformers module, {analytic.params_total} from "
          "TransformerConfig.from_hf; batch 2 x 128 tokens")
    return ([HF_ROW, analytic.model_flops, hw, round(result.total / hw, 4), None, None,
             round(stock.get_total_flops() / hw, 4), None],
            [HF_ROW, round(count_s / step_s, 1), None, None, round(step_s * 1e3, 2), None, None])


def main() -> None:
    agreement, timing = [], []
    for name, cfg in CASES.items():
        analytic = transformer_flops(cfg)
        hw = analytic.hardware_flops
        t_total, t_stock, t_count, t_step = torch_numbers(cfg)
        j_total, j_xla, j_count, j_step = jax_numbers(cfg)
        k_total, k_count, k_step = keras_numbers(cfg)
        agreement.append([
            name, analytic.model_flops, hw, round(t_total / hw, 4), round(j_total / hw, 4), round(k_total / hw, 4),
            round(t_stock / hw, 4), round(j_xla / hw, 4) if j_xla else None,
        ])
        timing.append([
            name, round(t_count / t_step, 1), round(j_count / j_step, 1), round(k_count / k_step, 1),
            round(t_step * 1e3, 2), round(j_step * 1e3, 2), round(k_step * 1e3, 2),
        ])
    hw = cnn_flops(CNN).model_flops
    (t_total, t_stock, t_count, t_step), (j_total, j_xla, j_count, j_step), (k_total, k_count, k_step) = cnn_numbers()
    agreement.append([
        "cnn (U-Net)", hw, hw, round(t_total / hw, 4), round(j_total / hw, 4), round(k_total / hw, 4),
        round(t_stock / hw, 4), round(j_xla / hw, 4) if j_xla else None,
    ])
    timing.append([
        "cnn (U-Net)", round(t_count / t_step, 1), round(j_count / j_step, 1), round(k_count / k_step, 1),
        round(t_step * 1e3, 2), round(j_step * 1e3, 2), round(k_step * 1e3, 2),
    ])
    hf = hf_gpt2_row()
    if hf is not None:
        agreement.append(hf[0])
        timing.append(hf[1])
    backends = [[b, *(lambda r: (r["total"], round(r["total"] / hw, 4)))(keras_cnn_on(b))]
                for b in ("tensorflow", "jax", "torch")]
    print(f"torch {torch.__version__}, jax {jax.__version__}, keras {keras.__version__} ({keras.backend.backend()}), "
          f"tensorflow {tf.__version__}; {os.cpu_count()} CPUs")
    print("\nTraced / analytic hardware FLOPs per training step (1.0 = exact)")
    print(text_table(["model", "analytic model", "analytic hardware", "torch", "jax", "keras-tf",
                      "stock torch", "xla cost"], agreement))
    print("\nCounting time / one training step (median of 9 steps), and the step times in ms")
    print(text_table(["model", "torch", "jax", "keras-tf", "torch step ms", "jax step ms", "keras step ms"],
                     timing))
    print(f"\nThe reference CNN (models/cnn_config.py) on each Keras backend; analytic: {hw} FLOPs per step")
    print(text_table(["keras backend", "traced FLOPs/step", "traced / analytic"], backends))
    before = jax_cnn_dilated_input_formula()
    print(f"Flax CNN with the former JAX formula (every position of an lhs-dilated input): {before} "
          f"({before / hw:.4f} x analytic); torch FlopCounterMode alone: {t_stock / hw:.4f} x (its weight-gradient "
          "formula counts a grouped convolution's groups times)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--keras-cnn"]:
        total, _, step_s = keras_cnn_numbers()
        print(json.dumps({"backend": keras.backend.backend(), "total": total, "step_s": step_s}))
    else:
        main()
