"""The Dagster ``Definitions`` of a deployment, built from its configuration."""

from __future__ import annotations

import dagster as dg

from . import checks, sensors
from .assets import cartography, ingest, models, molecular, outcomes
from .config import PathomchConfig, load_config
from .resources import AcceleratorResource, PathomchResource


def build_definitions(cfg: PathomchConfig | None = None, config_path: str | None = None) -> dg.Definitions:
    cfg = cfg or load_config(config_path, check_files=False)
    path = config_path or (str(cfg.source) if cfg.source else None)
    mol = molecular.build(cfg)
    expression, labels, splits, clinical = mol
    model_assets = models.build(cfg, labels, splits)
    carto_assets, carto_checks = cartography.build(cfg, model_assets[1])
    survival_assets, survival_checks = outcomes.build(cfg, carto_assets[0], clinical)
    assets = [ingest.slide_tiles, *mol, *model_assets, *carto_assets, *survival_assets]
    asset_checks = [*checks.build(splits, labels), *carto_checks, *survival_checks]
    tiling_job = dg.define_asset_job("tile_new_slides", selection=[ingest.slide_tiles], partitions_def=None)
    return dg.Definitions(
        assets=assets,
        asset_checks=asset_checks,
        jobs=[tiling_job],
        sensors=[sensors.build(cfg, tiling_job)],
        resources={"pathomch": PathomchResource(config_path=path), "accelerator": AcceleratorResource()},
    )


defs = build_definitions()
