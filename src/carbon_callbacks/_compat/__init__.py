"""One home per framework for what carbon-callbacks reads from inside it.

Each module here (`lightning`, `keras`, `jax`, `torch`, `tensorflow`, `transformers`) holds every private or
internal API of its framework that the library uses, each with the releases it was checked against. Adapters
and tracers import these functions instead of reaching into the framework themselves, so the next release's
breakage shows in one file (and in `make test-latest`).

When an internal API is missing, `missing` warns once and loudly, naming what is lost, and the caller takes the
documented fallback; in strict mode (`CARBON_CALLBACKS_STRICT=1`) it raises `InternalApiMissing` instead.
"""

from __future__ import annotations

import sys

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


def calling_list(callback, list_type: type, depth: int = 2, frames: int = 8):
    """The `list_type` object (Keras's `CallbackList`, the Trainer's `CallbackHandler`) whose call of a hook led here,
    found among the callers' frames (`depth` is the frame of the hook's caller, counted from here), or `None` when
    no such list holding `callback` is calling (a hook called by hand, or a release that no longer calls hooks from
    its list)."""
    frame = sys._getframe(depth)
    for _ in range(frames):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        callbacks = getattr(owner, "callbacks", None)
        if isinstance(owner, list_type) and isinstance(callbacks, list) and callback in callbacks:
            return owner
        frame = frame.f_back
    return None


def move_to_front(callback, owner) -> list[str]:
    """Moves `callback` to the front of `owner.callbacks` (see `calling_list`), keeping every other callback's order.

    Keras's `CallbackList` and the Trainer's `CallbackHandler` hand one logs dict to their callbacks in list order,
    so the callback first in the list adds its keys before the loggers after it write.

    Returns:
        The class names of the callbacks that were before it (empty if none).
    """
    callbacks = owner.callbacks
    index = callbacks.index(callback)
    before = [type(c).__name__ for c in callbacks[:index]]
    if index:
        callbacks.insert(0, callbacks.pop(index))
    return before
