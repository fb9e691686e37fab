"""Public names that were renamed: each still resolves, with a warning naming its replacement and the date of
its removal."""

from __future__ import annotations

import warnings
from collections.abc import Callable

#: old name -> (new name, the release date after which the old one goes).
RENAMED = {
    "Tracker": ("RunSession", "2027-06-01"),
}


def renamed(name: str, resolve: Callable[[str], object]):
    """The object `name` was renamed to, looked up with `resolve`, with a `DeprecationWarning`; else
    `AttributeError`."""
    if name not in RENAMED:
        raise AttributeError(f"module 'carbon_callbacks' has no attribute {name!r}")
    new, removal = RENAMED[name]
    warnings.warn(f"carbon_callbacks.{name} is deprecated and will be removed after {removal}; use "
                  f"carbon_callbacks.{new}.", DeprecationWarning, stacklevel=3)
    return resolve(new)
