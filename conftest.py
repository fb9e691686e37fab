"""The whole suite (tests/ and integrations/) runs in strict mode: a failure inside a guarded hook raises.

Users get a warning and training goes on; the team must see the failure. A test of the warning path turns strict
mode off for itself (`monkeypatch.delenv(STRICT_ENV)`). Subprocesses the tests start inherit the setting.

A run a test leaves open is detached after it, so the interpreter's exit does not end it (as it would a user's).
"""

import os

import pytest

from carbon_callbacks._run import lifecycle
from carbon_callbacks._warnings import STRICT_ENV

os.environ[STRICT_ENV] = "1"


@pytest.fixture(autouse=True)
def _no_run_left_attached():
    yield
    lifecycle.reset()
