"""Training FLOPs from an architecture and a token count, and the bundled shapes of the paper's five models.

total model FLOPs = tokens x model FLOPs per token, where the FLOPs per token are the exact per-layer matmul count
of one training sequence (`transformer_flops`: forward + backward, only the top-k experts a token is routed to)
divided by the tokens that sequence holds. Tokens are counted the way the model papers count them: the sequence
(decoder-only) or the input, encoder, tokens (encoder-decoder: one input sequence of `seq_len` tokens comes with
one target of `decoder_seq_len`). Decoder self-attention is counted causal (lower triangle) unless told otherwise.
The rule of thumb 6 x N_active x tokens is computed beside it, never instead of it.

`data/paper_models.csv` holds the shapes and token counts of T5-11B, Meena, GShard-600B, Switch-C and GPT-3 with
the source of each row and, where a paper leaves a number out, the assumption made in its place.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
from dataclasses import asdict, dataclass
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError, check_count, check_number, unknown_name
from carbon_callbacks._site.tables import normalize_name
from carbon_callbacks.flops.analytic import TransformerConfig, transformer_flops

#: The bundled tables (a plain path: `importlib.resources` costs milliseconds of every import).
_DATA = Path(__file__).resolve().parents[1] / "data"

_INT_FIELDS = (
    "num_layers", "num_decoder_layers", "d_model", "num_heads", "head_dim", "d_ff", "vocab_size", "seq_len",
    "decoder_seq_len", "num_experts", "top_k", "moe_every", "relative_attention_buckets",
)
_BOOL_FIELDS = ("gated_ffn", "tied_embeddings", "learned_positions", "bias")


@dataclass(frozen=True)
class PaperModel:
    """One bundled architecture, with its training tokens and where each number comes from.

    Attributes:
        name: canonical id, e.g. `"gpt3"`.
        table4_model: the model's name in Patterson et al. 2021 Table 4.
        config: its shape, for `transformer_flops` (batch size 1: FLOPs per token do not depend on it).
        params_published: the parameter count its paper gives.
        tokens: the training tokens its paper gives (input tokens for an encoder-decoder).
        tokens_source: where `tokens` comes from.
        source: the papers and configs the shape comes from (URLs).
        assumptions: what the papers leave out and what was used instead; empty when nothing was.
        note: what the row describes.
    """

    name: str
    table4_model: str
    config: TransformerConfig
    params_published: float
    tokens: float
    tokens_source: str
    source: str
    assumptions: str
    note: str


@dataclass(frozen=True)
class ArchitectureFlops:
    """A run's training FLOPs from its architecture and token count.

    Attributes:
        total_model_flops: tokens x `model_flops_per_token`.
        model_flops_per_token: model FLOPs of one training token (forward + backward, activated experts only).
        six_n_flops: the rule of thumb 6 x `params_active_per_token` x tokens, for comparison.
        params_total: all parameters.
        params_active_per_token: parameters one token passes through.
        tokens: training tokens.
        causal: whether decoder self-attention was counted on the lower triangle only.
        flops_method: how `total_model_flops` was computed, in words.
    """

    total_model_flops: float
    model_flops_per_token: float
    six_n_flops: float
    params_total: int
    params_active_per_token: int
    tokens: float
    causal: bool
    flops_method: str

    def to_dict(self) -> dict:
        return asdict(self)


def _parse(row: dict[str, str]) -> PaperModel:
    values: dict[str, object] = {}
    for name in _INT_FIELDS:
        text = (row.get(name) or "").strip()
        if text:
            values[name] = check_count(f"paper_models.csv {row['name']} {name}", int(text), minimum=0)
    for name in _BOOL_FIELDS:
        values[name] = (row.get(name) or "").strip().lower() == "true"
    values["norm"] = row["norm"].strip()
    config = TransformerConfig(batch_size=1, **values)  # type: ignore[arg-type]
    return PaperModel(
        name=normalize_name(row["name"]),
        table4_model=row["table4_model"].strip(),
        config=config,
        params_published=float(row["params_published_b"]) * 1e9,
        tokens=float(row["tokens"]),
        tokens_source=row["tokens_source"].strip(),
        source=row["source"].strip(),
        assumptions=(row.get("assumptions") or "").strip(),
        note=(row.get("note") or "").strip(),
    )


@functools.cache
def _models() -> tuple[dict[str, PaperModel], dict[str, PaperModel]]:
    text = _DATA.joinpath("paper_models.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    models, index = {}, {}
    for row in rows:
        for column in ("source", "tokens_source"):
            if not (row.get(column) or "").strip():
                raise InvalidInputError(f"paper_models.csv: row {row.get('name')!r} has no {column}.")
        model = _parse(row)
        models[model.name] = model
        for key in [row["name"], *(row.get("aliases") or "").split()]:
            index.setdefault(normalize_name(key), model)
    return models, index


def paper_models() -> dict[str, PaperModel]:
    """The bundled architectures of the paper's five models, by canonical name."""
    return dict(_models()[0])


def get_paper_model(name: str) -> PaperModel:
    """The bundled model called `name` or one of its aliases; raises `UnknownNameError` listing close names."""
    models, index = _models()
    try:
        return index[normalize_name(name)]
    except KeyError:
        raise unknown_name(
            "model", name, models, "Bundled: the five models of Patterson et al. 2021 Table 4; or pass --hf-config."
        ) from None


def with_lengths(config: TransformerConfig, seq_len: int | None = None,
                 decoder_seq_len: int | None = None) -> TransformerConfig:
    """`config` with another (input) sequence length and, for an encoder-decoder, target length."""
    changes: dict[str, int] = {}
    if seq_len is not None:
        changes["seq_len"] = check_count("seq_len", seq_len)
    if decoder_seq_len is not None:
        if not config.encoder_decoder:
            raise InvalidInputError(
                "decoder_seq_len applies to an encoder-decoder model only; this one is decoder-only."
            )
        changes["decoder_seq_len"] = check_count("decoder_seq_len", decoder_seq_len)
    return dataclasses.replace(config, **changes) if changes else config


def architecture_flops(config: TransformerConfig, tokens: float, *, causal: bool = True) -> ArchitectureFlops:
    """Training FLOPs of `tokens` tokens through the architecture `config`.

    Args:
        config: the model's shape (`TransformerConfig`, `get_paper_model(name).config` or
            `TransformerConfig.from_hf(...)`); its `seq_len` (and `decoder_seq_len`) are the training lengths.
        tokens: training tokens (the input tokens of an encoder-decoder).
        causal: count decoder self-attention on the lower triangle only. Defaults to `True`.

    Returns:
        An `ArchitectureFlops`; its `flops_method` states the formula.

    Raises:
        InvalidInputError: for a non-positive or non-finite token count.

    Example:
        >>> gpt3 = get_paper_model("gpt3")
        >>> f"{architecture_flops(gpt3.config, 300e9).total_model_flops:.3g}"
        '3.19e+23'
    """
    tokens = check_number("tokens", tokens, positive=True)
    per_step = transformer_flops(config, causal=causal)
    step_tokens = config.batch_size * config.seq_len
    per_token = per_step.model_flops / step_tokens
    if config.encoder_decoder:
        target = config.decoder_seq_len or config.seq_len
        shape = f"encoder-decoder, per {config.seq_len}-token input with its {target}-token target, per input token"
    else:
        shape = f"decoder-only, per token of {config.seq_len}-token sequences"
    experts = "activated (top-k) experts only, no capacity padding" if config.num_experts else "dense"
    attention = "causal decoder self-attention" if causal else "full S x S attention"
    method = (
        f"analytic: tokens x exact per-layer matmul FLOPs per token (transformer_flops, forward + backward = 3 x "
        f"forward; {shape}; {attention}; {experts}) = {tokens:.4g} x {per_token:.4g}"
    )
    return ArchitectureFlops(
        total_model_flops=per_token * tokens,
        model_flops_per_token=per_token,
        six_n_flops=6.0 * per_step.params_active_per_token * tokens,
        params_total=per_step.params_total,
        params_active_per_token=per_step.params_active_per_token,
        tokens=tokens,
        causal=causal,
        flops_method=method,
    )
