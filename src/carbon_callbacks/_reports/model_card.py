"""The Hugging Face model card's `co2_eq_emissions` block: built from a run, written into a card's YAML header.

The block follows https://huggingface.co/docs/hub/model-cards-co2: `emissions` in grams of CO2e (gross,
operational), `source`, `training_type`, `geographical_location` (a place name) and `hardware_used`; the chips'
manufacturing share goes in a separate `embodied_emissions`. `write_model_card` puts the block into a card
(`README.md`) and never damages it: a header that is not valid YAML is refused (naming the line and column) and the
card left as it was; an existing block is replaced only when asked (`replace`), or kept beside this run's (`add`:
pre-training plus fine-tuning); every other byte (line endings, a byte-order mark, comments) stays as it was; the
write is atomic (a temporary file, then a rename), and a card that is a symbolic link is written where it points,
and said so. The card's YAML is read with PyYAML (the `reports` extra), which `huggingface_hub` uses too.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
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


#: The key that keeps each run's block when blocks are added up (`add`).
PARTS_KEY = "co2_eq_emissions_parts"


@dataclass(frozen=True)
class CardWrite:
    """What `write_model_card` did: the file written, whether a block was `"added"`, `"replaced"`, `"combined"` with
    the one there, and a note for the user (a card that is a link), if any."""

    path: Path
    how: str
    note: str = ""


def write_model_card(path: str | os.PathLike, block: dict, *, replace: bool = False, add: bool = False) -> CardWrite:
    """Writes `block` as the `co2_eq_emissions` key of the card at `path` (a new card if there is none).

    The card's YAML header (between its first two `---` lines) keeps every other key, comment and byte as it was;
    the block goes at the end of the header, or where the old one was. A card without a header gets one.

    Args:
        path: the card (`README.md`); a symbolic link is followed, and the result says so.
        block: the run's `co2_eq_emissions` (see `hf_co2_block`).
        replace: replace a block the card already has. Defaults to `False`.
        add: keep the card's block and add this run's to it: `emissions` (and `embodied_emissions`) become the
            sums, and each run's block is kept under `co2_eq_emissions_parts`. Defaults to `False`.

    Returns:
        What was written.

    Raises:
        InvalidInputError: a path that is a folder, in a missing folder, or not a UTF-8 text file; a header that is
            not valid YAML (its line and column named); a card that already has a block, with neither `replace` nor
            `add` (the old and the new block shown). The card is unchanged in every case.
    """
    card, note = Path(path), ""
    if card.is_symlink():
        card = card.resolve()
        note = f"{path} is a symbolic link: the card written is {card}"
    if card.is_dir():
        raise InvalidInputError(f"model card {str(path)!r} is a folder, not a file.")
    if not card.parent.is_dir():
        raise InvalidInputError(f"model card {str(path)!r}: its folder {str(card.parent)!r} does not exist.")
    raw = card.read_bytes() if card.exists() else b""
    bom = b"\xef\xbb\xbf" if raw.startswith(b"\xef\xbb\xbf") else b""
    try:
        text = raw[len(bom):].decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise InvalidInputError(f"model card {str(path)!r} is not a UTF-8 text file.")
    newline = "\r\n" if text.split("\n", 1)[0].endswith("\r") else "\n"
    lines = text.splitlines(keepends=True)
    yaml = _yaml()
    end = None
    if lines and lines[0].rstrip("\r\n") == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].rstrip("\r\n") == "---"), None)
        if end is None:
            raise InvalidInputError(f"{card}: the YAML header opened by its first '---' line is never closed.")
    if end is None:  # no header: one is added above the body
        header, how = _lines(hf_yaml(block, comments=False), newline), "added"
        content = f"---{newline}" + "".join(header) + f"---{newline}" + text
    else:
        header = lines[1:end]
        data = _load_header(yaml, "".join(header), card)
        old = data.get(CARD_KEY) if isinstance(data, dict) else None
        if old is not None and not (replace or add):
            raise InvalidInputError(
                f"{card} already has a {CARD_KEY} block; pass --replace to replace it, or --add to keep it and add "
                f"this run's (pre-training plus fine-tuning). The card is unchanged.\nold:\n"
                f"{yaml.safe_dump({CARD_KEY: old}, sort_keys=False).rstrip()}\nnew:\n{hf_yaml(block, comments=False)}"
            )
        if old is not None and add:
            parts = data.get(PARTS_KEY) if isinstance(data.get(PARTS_KEY), list) else [old]
            parts = [*parts, block]
            header = _put(header, CARD_KEY, _lines(hf_yaml(_combined(parts), comments=False), newline))
            header, how = _put(header, PARTS_KEY, _lines(_parts_yaml(parts), newline)), "combined"
        else:
            header = _put(header, CARD_KEY, _lines(hf_yaml(block, comments=False), newline))
            how = "added" if old is None else "replaced"
        content = "".join([lines[0], *header, *lines[end:]])
    _load_header(yaml, "".join(header), card)  # what is written reads back
    _replace_atomically(card, bom + content.encode("utf-8"))
    return CardWrite(card, how, note)


def _yaml():
    try:
        import yaml
    except ImportError:
        raise InvalidInputError("writing a model card needs PyYAML to check its header: pip install "
                                "'carbon-callbacks[reports]' (or pyyaml).") from None
    return yaml


def _load_header(yaml, header: str, card: Path):
    """The header's YAML, or an error naming the line and column (in the card) where it goes wrong."""
    try:
        return yaml.safe_load(header)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 2}, column {mark.column + 1}" if mark is not None else "its header"
        problem = getattr(err, "problem", None) or str(err)
        raise InvalidInputError(f"{card}: the YAML header is not valid at {where} ({problem}); the card is "
                                "unchanged.") from None


def _lines(yaml_text: str, newline: str) -> list[str]:
    return [line + newline for line in yaml_text.split("\n")]


def _put(header: list[str], key: str, new: list[str]) -> list[str]:
    """`header` with the top-level `key`'s lines (everything indented or listed under it) replaced by `new`, where
    they stood; `new` at the end when the key is not there. Blank lines before the next key stay."""
    start = next((i for i, line in enumerate(header) if line.split(":", 1)[0] == key), None)
    if start is None:
        return header + new
    stop = start + 1
    while stop < len(header) and (header[stop].startswith((" ", "\t", "-")) or not header[stop].strip()):
        stop += 1
    while stop > start + 1 and not header[stop - 1].strip():
        stop -= 1
    return header[:start] + new + header[stop:]


def _combined(parts: list[dict]) -> dict:
    """One block for several runs: the sums, and each part's figures named in `source`."""
    block: dict = {"emissions": float(f"{sum(_grams(p, 'emissions') for p in parts):.6g}")}
    if any("embodied_emissions" in p for p in parts):
        block["embodied_emissions"] = float(f"{sum(_grams(p, 'embodied_emissions') for p in parts):.6g}")
    kinds = [str(p.get("training_type") or "unnamed") for p in parts]
    block["source"] = "sum of " + ", ".join(f"{kind} {p.get('emissions')} g" for kind, p in zip(kinds, parts)) + \
        f"; each part in {PARTS_KEY}"
    block["training_type"] = " + ".join(kinds)
    for key in ("geographical_location", "hardware_used"):
        values = list(dict.fromkeys(str(p[key]) for p in parts if p.get(key)))
        if values:
            block[key] = "; ".join(values)
    return block


def _grams(part: dict, key: str) -> float:
    value = part.get(key)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"the card's {CARD_KEY} {key} is not a number of grams ({value!r}); fix it or pass "
                                "--replace.")
    return float(value)


def _parts_yaml(parts: list[dict]) -> str:
    out = [f"{PARTS_KEY}:"]
    for part in parts:
        items = [(k, part[k]) for k in FIELDS if isinstance(part.get(k), (str, int, float))]
        for i, (key, value) in enumerate(items):
            shown = json.dumps(value) if isinstance(value, str) else yaml_float(float(value))
            out.append(f"{'- ' if i == 0 else '  '}{key}: {shown}")
    return "\n".join(out)


def _replace_atomically(path: Path, data: bytes) -> None:
    """Writes `path` through a temporary file in its folder and a rename, keeping its permissions."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InvalidInputError(f"cannot write the model card {str(path)!r}: {err}.") from None
