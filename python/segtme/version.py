"""The package version (a leaf: import it from here, not from the package root)."""

__version__ = "0.1.0"
