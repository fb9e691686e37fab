"""The result of a traced count, and the map from module names to layer kinds. Pure Python."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from carbon_callbacks._errors import CarbonCallbacksError
from carbon_callbacks.flops.analytic import LAYER_KINDS

#: Name fragments that mark a module's layer kind, checked from the deepest path component up. `moe` alone (the
#: MoE block's own body, outside its router and experts) holds the dispatch/combine products. A shared expert
#: (Qwen2-MoE `shared_expert`) runs on every token: `dense_ffn`, as in the analytic count; its gate is a router.
#: `gate_proj` (a SwiGLU matrix in Llama-style FFNs and experts) names no kind, so its parent decides.
_KIND_PATTERNS = (
    ("router", re.compile(r"router|^gate$|shared_expert_gate")),
    ("dense_ffn", re.compile(r"shared_expert")),
    ("moe_experts", re.compile(r"expert")),
    ("moe_dispatch", re.compile(r"dispatch|combine|^moe|_moe$|switch")),
    ("attention", re.compile(r"attn|attention|self_att|cross_att|mha")),
    ("dense_ffn", re.compile(r"mlp|ffn|feed_?forward|dense_relu")),
    ("embeddings_logits", re.compile(r"head|logit|embed|wte|wpe|unembed|vocab")),
)


def classify_module(path: str) -> str | None:
    """The layer kind (`LAYER_KINDS`) of a module path such as `blocks.1.moe.router`, or `None` if unknown.

    The deepest component that names a kind decides: `blocks.1.moe.experts` is `moe_experts`, `blocks.1.moe` is
    `moe_dispatch` (the products the MoE block runs itself), `blocks.0.attn.qkv` is `attention`.
    """
    parts = [p for p in re.split(r"[./]", path.lower()) if p]
    for part in reversed(parts):
        for kind, pattern in _KIND_PATTERNS:
            if pattern.search(part):
                return kind
    return None


def breakdown_from_leaves(own_flops: dict[str, int], scale: int = 1) -> dict[str, int]:
    """Sums FLOPs counted at each module path (excluding its children) into `LAYER_KINDS` plus `other`."""
    out = dict.fromkeys(LAYER_KINDS, 0)
    out["other"] = 0
    for path, flops in own_flops.items():
        out[classify_module(path) or "other"] += flops * scale
    return out


class FakeCountError(CarbonCallbacksError, RuntimeError):
    """A training step could not be counted with fake tensors, and `count_step(..., fallback=None)` forbade running
    it for real. The cause is chained."""


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one training step, counted by tracing the code that runs it.

    Attributes:
        total: FLOPs of one training step: what was traced if it held a backward pass, else 3 x the traced
            forward (the `method` says which).
        executed: FLOPs of exactly what was traced.
        method: how they were counted, e.g. `traced:torch-flop-counter(meta; forward+backward)`.
        framework: `torch`, `jax` or `tensorflow`.
        includes_backward: whether the traced code held a backward pass.
        breakdown: `total` split by layer kind (`LAYER_KINDS` plus `other`), from the module names the
            framework reports; empty where it reports none. An estimate for apportioning energy, not a measure.
        warnings: what could not be counted exactly (ops counted as zero, loops of unknown trip count).
        recomputed: the part of `total` that activation checkpointing re-ran in the backward pass (torch step
            counts); `total - recomputed` is the step without recompute (`without_recompute`).
        other_gradients: whether the backward computed gradients that no trainable parameter needs (an input
            made to require one); a count with `backward="parameters"` leaves them out.
    """

    total: int
    executed: int
    method: str
    framework: str
    includes_backward: bool
    breakdown: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    recomputed: int = 0
    other_gradients: bool = False

    @property
    def without_recompute(self) -> int:
        """FLOPs of the step with each forward counted once: the model FLOPs of a traced step."""
        return self.total - self.recomputed

    def to_dict(self) -> dict:
        return asdict(self)


def finish(
    executed: int,
    *,
    framework: str,
    method: str,
    includes_backward: bool,
    own_flops: dict[str, int] | None = None,
    warnings: list[str] | tuple[str, ...] = (),
    recomputed: int = 0,
) -> FlopCount:
    """Builds a `FlopCount`, scaling a forward-only trace by 3 and saying so in `method`."""
    scale = 1 if includes_backward else 3
    if not includes_backward:
        method += "; forward only, x3 for forward+backward"
    breakdown = breakdown_from_leaves(own_flops, scale) if own_flops else {}
    return FlopCount(
        total=int(executed) * scale,
        executed=int(executed),
        method=method,
        framework=framework,
        includes_backward=includes_backward,
        breakdown=breakdown,
        warnings=tuple(warnings),
        recomputed=int(recomputed) if includes_backward else 0,
    )
