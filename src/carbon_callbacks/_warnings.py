"""One way to warn once, pointed at the user's line, and the strict mode in which a guarded failure raises.

Every warning of the library goes through `warn_once`: a run's session, a meter and the process each keep one
registry (a set of keys), so a message is shown once per run, per meter or per process as the caller chooses.
The warning points at the first frame outside this library and the frameworks that call it (the user's
`trainer.fit(...)`, `model.fit(...)` or `step(state, batch)` line); a message from a framework hook names the hook.

Strict mode (`CARBON_CALLBACKS_STRICT=1`, which the test suite sets) makes a failure inside a guarded hook raise
instead of warning, so the team sees what users would only see as a warning.
"""

from __future__ import annotations

import os
import sys
import warnings

#: The environment variable that turns strict mode on (`1`, `true`, `yes`).
STRICT_ENV = "CARBON_CALLBACKS_STRICT"
#: Packages whose frames stand between the user's code and ours: a warning points past them.
_NOT_THE_USER = (
    "carbon_callbacks", "pytorch_lightning", "lightning", "lightning_fabric", "keras", "tensorflow", "tf_keras",
    "torch", "jax", "jaxlib", "flax", "optax", "transformers", "accelerate", "trl", "peft", "threading",
    "concurrent", "contextlib", "functools", "warnings", "runpy", "importlib",
)
#: Keys of the warnings already shown in this process (the registry of `warn_once(..., seen=None)`).
_SHOWN_IN_PROCESS: set[str] = set()


class CarbonCallbacksWarning(UserWarning):
    """A warning of carbon-callbacks: something the user should act on (a missing sensor, an unknown count)."""


def strict() -> bool:
    """Whether strict mode is on: a failure inside a guarded hook raises instead of warning."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes")


def _is_library(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in _NOT_THE_USER)


def user_stacklevel() -> int:
    """The `stacklevel` that makes a `warnings.warn` called from the caller point at the user's code.

    Counts the caller's frames up to the first one outside this library and the frameworks around it; with no
    such frame (a framework's worker thread), the caller's caller.
    """
    frame = sys._getframe(2)  # the caller of warnings.warn's caller
    level = 2
    while frame is not None:
        if not _is_library(frame.f_globals.get("__name__", "")):
            return level
        frame, level = frame.f_back, level + 1
    return 2


def warn_once(
    key: str,
    message: str,
    *,
    seen: set[str] | None = None,
    category: type[Warning] = CarbonCallbacksWarning,
) -> bool:
    """Shows `message` the first time `key` is in `seen` (default: this process), at the user's line.

    Args:
        key: what makes two warnings the same one.
        message: the text; it says what happened and what to pass to change it.
        seen: the registry of keys already shown (a run's, a meter's). Defaults to `None`: the process's.
        category: the warning class. Defaults to `CarbonCallbacksWarning`.

    Returns:
        Whether the warning was shown now.
    """
    registry = _SHOWN_IN_PROCESS if seen is None else seen
    if key in registry:
        return False
    registry.add(key)
    warnings.warn(message, category, stacklevel=user_stacklevel())
    return True


def reset_process_registry() -> None:
    """Forgets the process's shown warnings (for tests that check a warning is shown once)."""
    _SHOWN_IN_PROCESS.clear()
