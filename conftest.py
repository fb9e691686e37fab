"""The whole suite (tests/ and integrations/) runs in strict mode: a failure inside a guarded hook raises.

Users get a warning and training goes on; the team must see the failure. A test of the warning path turns strict
mode off for itself (`monkeypatch.delenv(STRICT_ENV)`). Subprocesses the tests start inherit the setting.
"""

import os

from carbon_callbacks._warnings import STRICT_ENV

os.environ[STRICT_ENV] = "1"
