"""Dagster resources: the deployment configuration and the result store."""

from __future__ import annotations

import dagster as dg

from .config import PathomchConfig, load_config
from .storage import TableStore


class PathomchResource(dg.ConfigurableResource):
    """The YAML configuration (``config_path``, else ``$PATHOMCH_CONFIG``, else the demo)
    and the result tables it names."""

    config_path: str | None = None

    def get_config(self) -> PathomchConfig:
        return load_config(self.config_path)

    def get_store(self) -> TableStore:
        cfg = self.get_config()
        return TableStore(cfg.tables_dir, cfg.duckdb_path)
