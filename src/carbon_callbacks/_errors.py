"""The library's exceptions and input checks.

Every user error names the field, the value received and what was expected, so the CLI can print it without a
traceback (exit code 2) and an adapter can refuse a bad argument at construction time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class CarbonCallbacksError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidInputError(CarbonCallbacksError, ValueError):
    """A number or option that cannot be used: negative, NaN, infinite, zero where impossible, wrong unit."""


class UnknownNameError(CarbonCallbacksError, KeyError):
    """A chip, region or provider name that is not in the bundled tables."""

    def __str__(self) -> str:  # KeyError would quote the message.
        return str(self.args[0]) if self.args else ""


def unknown_name(field: str, value: str, known: Iterable[str], hint: str = "") -> UnknownNameError:
    """Builds the error for a name missing from a table, listing the closest known names."""
    import difflib  # here, on the error path: at module level it costs milliseconds of every import

    known = sorted(known)
    closest = difflib.get_close_matches(str(value).lower(), [k.lower() for k in known], n=5, cutoff=0.4)
    by_lower = {k.lower(): k for k in known}
    suggestion = ", ".join(by_lower[c] for c in closest) if closest else ", ".join(known[:8]) + ", ..."
    message = f"Unknown {field} {value!r}. Closest known: {suggestion}."
    if hint:
        message += f" {hint}"
    return UnknownNameError(message)


def check_number(
    field: str,
    value: object,
    *,
    positive: bool = False,
    non_negative: bool = False,
    at_least: float | None = None,
    at_most: float | None = None,
) -> float:
    """Returns `value` as a float, or raises `InvalidInputError` naming `field` if it is unusable.

    Args:
        field: the name the user knows the value by (an argument or a CLI flag).
        value: what was received.
        positive: require `value > 0`. Defaults to `False`.
        non_negative: require `value >= 0`. Defaults to `False`.
        at_least: require `value >= at_least`. Defaults to `None`.
        at_most: require `value <= at_most`. Defaults to `None`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            number = float(value)  # numpy scalars, strings from a CLI or a CSV.
        except (TypeError, ValueError):
            raise InvalidInputError(f"{field} must be a number, got {value!r}.") from None
    else:
        number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise InvalidInputError(f"{field} must be a finite number, got {value!r}.")
    if positive and number <= 0:
        raise InvalidInputError(f"{field} must be greater than 0, got {value!r}.")
    if non_negative and number < 0:
        raise InvalidInputError(f"{field} must not be negative, got {value!r}.")
    if at_least is not None and number < at_least:
        raise InvalidInputError(f"{field} must be at least {at_least}, got {value!r}.")
    if at_most is not None and number > at_most:
        raise InvalidInputError(f"{field} must be at most {at_most}, got {value!r}.")
    return number


def check_count(field: str, value: object, *, minimum: int = 1) -> int:
    """Returns `value` as an int of at least `minimum`, or raises `InvalidInputError` naming `field`."""
    number = check_number(field, value, at_least=minimum)
    if number != int(number):
        raise InvalidInputError(f"{field} must be a whole number, got {value!r}.")
    return int(number)


def check_intensity(field: str, value: object) -> float:
    """A carbon intensity in kg CO2e/kWh, refused above `MAX_KG_PER_KWH` with the likely mistake named (g/kWh)."""
    from carbon_callbacks._constants import MAX_KG_PER_KWH

    number = check_number(field, value, non_negative=True)
    if number > MAX_KG_PER_KWH:
        raise InvalidInputError(
            f"{field} must be in kg CO2e/kWh, at most {MAX_KG_PER_KWH:g} (the dirtiest grids average about 1.1), got "
            f"{value!r}: that looks like g CO2e/kWh; pass {number / 1000:g}."
        )
    return number


def check_pue(value: object, field: str = "pue") -> float:
    """A PUE (facility energy / IT energy): at least 1, at most `MAX_PUE`."""
    from carbon_callbacks._constants import MAX_PUE

    number = check_number(field, value, at_least=1.0)
    if number > MAX_PUE:
        hint = f"; a percentage? pass {number / 100:g}" if 100 <= number <= 100 * MAX_PUE else ""
        raise InvalidInputError(
            f"{field} must be between 1 and {MAX_PUE:g} (surveyed datacentres average about 1.5), got {value!r}{hint}."
        )
    return number


def check_watts(field: str, value: object, *, positive: bool = True) -> float:
    """An average power per chip in W, at most `MAX_W_PER_CHIP`."""
    from carbon_callbacks._constants import MAX_W_PER_CHIP

    number = check_number(field, value, positive=positive, non_negative=not positive)
    if number > MAX_W_PER_CHIP:
        hint = f": that looks like mW; pass {number / 1000:g}" if number > 1000 * 100 else ""
        raise InvalidInputError(
            f"{field} must be watts per chip, at most {MAX_W_PER_CHIP:g} (the densest module, a GB200 superchip, is "
            f"rated 2.7 kW), got {value!r}{hint}."
        )
    return number
