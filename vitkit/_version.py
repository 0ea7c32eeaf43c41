"""The package version, in a module of its own so that anything may read it without importing ``vitkit``."""

__version__ = "0.1.0"
