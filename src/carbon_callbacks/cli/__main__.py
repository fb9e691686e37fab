"""`python -m carbon_callbacks.cli`: the same as the `carbon-callbacks` command."""

import sys

from carbon_callbacks.cli import main

sys.exit(main())
