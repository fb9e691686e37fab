"""What a run folder holds, field by field, and the checks every reader applies to it.

The step log is a CSV table (`steps.csv`): one header line naming the columns, then one line per logging interval.
A table of numbers is what the step log is, and CSV is what every tool reads fast (`pandas.read_csv` takes a
million records in under a second where a JSON line each takes fifteen). Logs of versions before it are JSON lines
(`steps.jsonl`) and are still read. `run.json` stays JSON. Every value read is checked against its field's kind: a
number must be finite (and not negative where the field cannot be), a count whole, a label text, so that no report,
plot or what-if ever computes with a string, NaN or infinity.
"""

from __future__ import annotations

import json
import math

from carbon_callbacks._errors import InvalidInputError

#: Kinds of field: a whole number >= 0, a finite number >= 0, a finite number of any sign, text.
COUNT, AMOUNT, SIGNED, TEXT = "count", "amount", "signed", "text"

#: The step log's columns, in the order they are written. `epoch` is empty where the framework logs no epochs, and
#: an `energy_j_<component>` is empty where the run has no such component.
STEP_COLUMNS: dict[str, str] = {
    "step": COUNT, "num_steps": COUNT, "cum_steps": COUNT, "epoch": COUNT, "time": AMOUNT, "seconds": AMOUNT,
    "model_flops": AMOUNT, "hardware_flops": AMOUNT, "tokens": AMOUNT, "padding_tokens": AMOUNT, "loss": SIGNED,
    "it_energy_j": AMOUNT, "energy_j_gpu": AMOUNT, "energy_j_tpu": AMOUNT, "energy_j_cpu": AMOUNT,
    "energy_j_dram": AMOUNT, "energy_j_host": AMOUNT, "energy_method": TEXT, "step_energy_kwh": AMOUNT,
    "step_co2e_kg": AMOUNT, "energy_kwh": AMOUNT, "co2e_kg": AMOUNT, "co2e_net_kg": AMOUNT, "mfu": AMOUNT,
}
HEADER = ",".join(STEP_COLUMNS) + "\n"

#: `run.json`'s fields that readers compute with, and their kinds (`null` is allowed for each).
RUN_FIELDS: dict[str, str] = {
    "schema_version": COUNT, "steps": COUNT, "num_chips": COUNT, "world_size": COUNT, "status": TEXT,
    "started_at": TEXT, "updated_at": TEXT, "region": TEXT, "chip": TEXT, "dtype": TEXT, "energy_method": TEXT,
    "run_id": TEXT, "wall_time_s": AMOUNT, "energy_kwh": AMOUNT, "it_energy_kwh": AMOUNT, "pue": AMOUNT,
    "gross_kg_per_kwh": AMOUNT, "net_kg_per_kwh": AMOUNT, "gross_co2e_kg": AMOUNT, "net_co2e_kg": AMOUNT,
    "peak_flops_per_chip": AMOUNT, "total_model_flops": AMOUNT, "total_hardware_flops": AMOUNT, "tokens": AMOUNT,
    "padding_tokens": AMOUNT, "total_generation_flops": AMOUNT, "generation_tokens": AMOUNT, "mfu": AMOUNT,
    "mfu_covers": TEXT, "achieved_flops_per_chip": AMOUNT, "avg_power_w_per_chip": AMOUNT,
    "energy_j_per_token": AMOUNT, "embodied_co2e_kg": AMOUNT, "embodied_kgco2e_per_chip": AMOUNT,
    "lifetime_years": AMOUNT,
}
#: `run.json`'s fields that hold objects.
RUN_OBJECTS = ("info", "sources", "energy_methods", "energy_kwh_by_component", "parent", "step_log", "meter_faults")
#: How deep `run.json` may nest (the deepest the library writes is 4: info.projection, info.flops_by_layer_kind).
MAX_DEPTH = 16


def value_problem(kind: str, value: object) -> str | None:
    """Why `value` is not of `kind` (`None` when it is, or is null)."""
    if value is None:
        return None
    if kind == TEXT:
        return None if isinstance(value, str) else f"expected text, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a number, got {value!r}"
    if not math.isfinite(value):
        return f"expected a finite number, got {value!r}"
    if kind == COUNT and (value < 0 or value != int(value)):
        return f"expected a whole number >= 0, got {value!r}"
    if kind == AMOUNT and value < 0:
        return f"expected a number >= 0, got {value!r}"
    return None


def parse_value(kind: str, text: str) -> object:
    """A CSV cell as its field's kind (`""` is null).

    Raises:
        ValueError: saying what was expected, when the cell is not of the kind.
    """
    if text == "":
        return None
    if kind == TEXT:
        return text
    try:
        value = int(text) if kind == COUNT else float(text)
    except ValueError:
        raise ValueError(f"expected {'a whole number' if kind == COUNT else 'a number'}, got {text!r}") from None
    problem = value_problem(kind, value)
    if problem is not None:
        raise ValueError(problem)
    return value


def csv_cell(value: object) -> str:
    """A value as a CSV cell: empty for null, the shortest exact form of a number, quoted text where needed (on one
    line: a record is a line)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, str):
        value = value.replace("\r", " ").replace("\n", " ")
        return '"' + value.replace('"', '""') + '"' if "," in value or '"' in value else value
    return str(value)


def step_line(record: dict) -> str:
    """A step record as one line of the step log (every column, in order; a key outside them is not kept)."""
    return ",".join(csv_cell(record.get(column)) for column in STEP_COLUMNS) + "\n"


def _finite(value):
    """`value` with every non-finite float replaced by `None`."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def strict_json(value, **options) -> str:
    """`value` as strict JSON (`json.dumps` options apply): a non-finite number is written as `null`, since JSON has
    no NaN or Infinity (Python's own writer would print them, and other readers reject the file)."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False, **options)


def check_summary(summary: object, where: str) -> dict:
    """`run.json`'s content, checked: an object, nested at most `MAX_DEPTH` deep, each known field of its kind.

    Raises:
        InvalidInputError: one line naming the file and the field.
    """
    if not isinstance(summary, dict):
        kind = "an array" if isinstance(summary, list) else type(summary).__name__
        raise InvalidInputError(f"{where}: expected a JSON object (the run summary), got {kind}.")
    if _depth(summary) > MAX_DEPTH:
        raise InvalidInputError(f"{where}: nested more than {MAX_DEPTH} levels deep; not a run summary.")
    for field, kind in RUN_FIELDS.items():
        problem = value_problem(kind, summary.get(field))
        if problem is not None:
            raise InvalidInputError(f"{where}: field {field!r}: {problem}.")
    for field in RUN_OBJECTS:
        value = summary.get(field)
        if value is not None and not isinstance(value, dict):
            raise InvalidInputError(f"{where}: field {field!r}: expected an object, got {value!r}.")
    _check_numbers(summary, where, "")
    return summary


def _depth(value: object, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _check_numbers(value: object, where: str, path: str) -> None:
    """No NaN or infinity anywhere (JSON has neither; Python's reader takes them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{where}: field {path!r}: expected a finite number, got {value!r}.")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, where, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_numbers(item, where, f"{path}[{index}]")
