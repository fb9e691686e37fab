"""One home per framework for what carbon-callbacks reads from inside it.

Each module here (`lightning`, `keras`, `jax`, `torch`, `tensorflow`, `transformers`) holds every private or
internal API of its framework that the library uses, each with the releases it was checked against. Adapters
and tracers import these functions instead of reaching into the framework themselves, so the next release's
breakage shows in one file (and in `make test-latest`).

When an internal API is missing, `missing` warns once and loudly, naming what is lost, and the caller takes the
documented fallback; in strict mode (`CARBON_CALLBACKS_STRICT=1`) it raises `InternalApiMissing` instead.
"""

from __future__ import annotations

from carbon_callbacks._errors import CarbonCallbacksError
from carbon_callbacks._warnings import strict, warn_once


class InternalApiMissing(CarbonCallbacksError):
    """A framework internal this library relies on is not there (a release newer than the ones checked)."""


class InternalApiWarning(RuntimeWarning):
    """A framework internal is missing; the message says what carbon-callbacks does without it."""


def missing(framework: str, api: str, checked: str, consequence: str) -> None:
    """Reports once that `framework`'s internal `api` (checked on `checked`) is missing, and what that costs.

    Raises:
        InternalApiMissing: in strict mode, instead of warning.
    """
    message = (
        f"carbon-callbacks: {framework} has no {api} (checked on {checked}); {consequence} Please report this with "
        f"your {framework} version."
    )
    if strict():
        raise InternalApiMissing(message)
    warn_once(f"compat:{framework}:{api}", message, category=InternalApiWarning)
