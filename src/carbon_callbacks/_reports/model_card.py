"""The Hugging Face model card's `co2_eq_emissions` block: built from a run, written into a card's YAML header.

The block follows https://huggingface.co/docs/hub/model-cards-co2: `emissions` in grams of CO2e (gross,
operational), `source`, `training_type`, `geographical_location` (a place name) and `hardware_used`; the chips'
manufacturing share goes in a separate `embodied_emissions`. `write_model_card` puts the block into a card
(`README.md`) and keeps every other line of the card as it was, so no YAML library is needed and nothing else
changes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError, UnknownNameError
from carbon_callbacks._site.tables import get_region

#: The card's metadata key, and the order of the block's fields.
CARD_KEY = "co2_eq_emissions"
FIELDS = ("emissions", "embodied_emissions", "source", "training_type", "geographical_location", "hardware_used")


def place_name(region: str | None) -> str | None:
    """The place a regions-table entry is in (`fr` -> `France`), for `geographical_location`; `None` if unknown."""
    if not region:
        return None
    try:
        return get_region(region).location or None
    except UnknownNameError:
        return None


def hf_co2_block(summary: dict, *, training_type: str | None = None, location: str | None = None) -> dict:
    """The model-card `co2_eq_emissions` metadata of a run (https://huggingface.co/docs/hub/model-cards-co2).

    `emissions` is the gross operational CO2e in grams (the field has room for one number; the source names the
    net one). The chips' manufacturing share, when the chip has a published footprint, goes in a separate
    `embodied_emissions` (grams), never into `emissions`. Fields the run does not know (training type, a location
    when only an intensity was given, the chip) are left out rather than guessed; pass `training_type` /
    `location` to fill them. `geographical_location` is the region's place name from the regions table.
    """
    info = summary.get("info") or {}
    gross, net = summary.get("gross_co2e_kg"), summary.get("net_co2e_kg")
    block: dict = {}
    if gross is not None:
        block["emissions"] = float(f"{gross * 1000.0:.6g}")  # grams, 6 significant figures
    source = "carbon-callbacks (Patterson et al. 2021 method): gross CO2e = facility energy x grid intensity"
    if summary.get("energy_method"):
        source += f"; energy {summary['energy_method']}"
    if net is not None:
        source += f"; net CO2e {net * 1000.0:.6g} g"
    embodied = summary.get("embodied_co2e_kg")
    if embodied is not None:
        block["embodied_emissions"] = float(f"{embodied * 1000.0:.6g}")  # grams, 6 significant figures
        life = summary.get("lifetime_years")
        life_text = f"{life:g}-year" if isinstance(life, (int, float)) else "the assumed"
        source += (
            f"; embodied_emissions: the chips' manufacturing share (footprint x chips x hours / {life_text} service "
            "life), reported separately and not included in emissions"
        )
    block["source"] = source
    training_type = training_type or info.get("training_type")
    if training_type:
        block["training_type"] = training_type
    location = location or place_name(summary.get("region"))
    if location:
        block["geographical_location"] = location
    if summary.get("chip"):
        block["hardware_used"] = f"{summary.get('num_chips') or 1} x {summary['chip']}"
    return block


def yaml_float(value: float) -> str:
    """`value` as a YAML float every reader takes as one: a decimal point, and a signed exponent if any.

    YAML 1.1 (PyYAML, which `huggingface_hub` uses) reads `2e-05` as a string; `2.0e-05` is a float.
    """
    if math.isnan(value) or math.isinf(value):
        raise InvalidInputError(f"{CARD_KEY} values must be finite numbers, got {value!r}.")
    text = repr(float(value))
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent and exponent[0] not in "+-":
        exponent = "+" + exponent
    return f"{mantissa}e{exponent}" if exponent else mantissa


def hf_yaml(block: dict, *, comments: bool = True) -> str:
    """The `co2_eq_emissions` block as model-card YAML; with `comments`, a line naming each field left out."""
    lines = [f"{CARD_KEY}:"]
    for key in FIELDS:
        if key in block:
            value = block[key]
            lines.append(f"  {key}: {json.dumps(value) if isinstance(value, str) else yaml_float(value)}")
        elif comments and key != "embodied_emissions":  # optional: only for a chip with a published footprint
            lines.append(f"  # {key}: not recorded by this run")
    return "\n".join(lines)


def write_model_card(path: str | os.PathLike, block: dict) -> Path:
    """Writes `block` as the `co2_eq_emissions` key of the card at `path` (a new card if there is none).

    The card's YAML header (between its first two `---` lines) keeps every other key, comment and line as it was:
    an existing `co2_eq_emissions` key is replaced (with everything indented under it), else the block is added at
    the end of the header. A card without a header gets one. The body is left as it was.

    Returns:
        The card's path.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = text.splitlines(keepends=True)
    new = [line + "\n" for line in hf_yaml(block, comments=False).split("\n")]
    if not lines or lines[0].rstrip("\r\n") != "---":
        path.write_text("---\n" + "".join(new) + "---\n" + text, encoding="utf-8")
        return path
    end = next((i for i in range(1, len(lines)) if lines[i].rstrip("\r\n") == "---"), None)
    if end is None:
        raise InvalidInputError(f"{path}: the YAML header opened by its first '---' line is never closed.")
    header = lines[1:end]
    start = next((i for i, line in enumerate(header) if line.split(":", 1)[0] == CARD_KEY), None)
    if start is None:
        header += new
    else:
        stop = start + 1
        while stop < len(header) and (header[stop].startswith((" ", "\t")) or not header[stop].strip()):
            stop += 1
        while stop > start + 1 and not header[stop - 1].strip():  # blank lines before the next key stay
            stop -= 1
        header[start:stop] = new
    path.write_text("".join([lines[0], *header, *lines[end:]]), encoding="utf-8")
    return path
