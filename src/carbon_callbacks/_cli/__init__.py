"""Subcommands of the `carbon-callbacks` CLI, one module each (see `carbon_callbacks.cli`)."""
