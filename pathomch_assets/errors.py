"""Errors shared by the configuration and the modules that read its inputs (no heavy imports: a tiling
worker imports this, not the configuration's pydantic models)."""


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid."""
