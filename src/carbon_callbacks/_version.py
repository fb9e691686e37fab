"""The package version, read by setuptools at build time (pyproject.toml: `dynamic = ["version"]`).

A literal, so that `import carbon_callbacks` never reads installed metadata for it.
"""

__version__ = "0.1.0"
