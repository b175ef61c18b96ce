"""The Dagster ``Definitions`` of a deployment, built from its configuration."""

from __future__ import annotations

import dagster as dg

from . import checks, maps, sensors
from .assets import cartography, ingest, models, molecular, outcomes, scoring, validity
from .config import PathomchConfig, load_config
from .deployment import executor_from_env
from .resources import AcceleratorResource, PathomchResource
from .versions import with_tiling_version

#: shown on every asset in the UI; a deployment may replace it
OWNERS = ["team:computational-pathology"]


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates the assets' automation conditions (eager refresh of evaluation and survival when new
    slides are processed).  Running by default: `dagster dev`'s daemon acts on it without a click."""
    return dg.AutomationConditionSensorDefinition(
        "pathomch_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Refreshes model_evaluation, site_effects and survival_analysis (eager) after new slides are "
        "scored and mapped.",
    )


def build_definitions(cfg: PathomchConfig | None = None, config_path: str | None = None) -> dg.Definitions:
    cfg = cfg or load_config(config_path, check_files=False)
    path = config_path or (str(cfg.source) if cfg.source else None)
    mol = molecular.build(cfg)
    expression, labels, splits, clinical = mol
    trait_model, ensemble = models.build(cfg, labels, splits)
    slide_predictions = scoring.build(cfg, trait_model, ensemble)
    model_evaluation = models.build_evaluation(cfg, slide_predictions, trait_model, ensemble)
    trait_validity = validity.build(cfg, trait_model, ensemble)
    site_effects = validity.build_site_effects(cfg, slide_predictions, trait_model, ensemble)
    slide_cartography = cartography.build(cfg, slide_predictions, trait_model, ensemble, trait_validity)
    survival_analysis = outcomes.build(cfg, slide_cartography, clinical, trait_model, ensemble, trait_validity)
    assets = [
        ingest.slide_tiles,
        *mol,
        trait_model,
        ensemble,
        slide_predictions,
        model_evaluation,
        trait_validity,
        site_effects,
        slide_cartography,
        survival_analysis,
    ]
    asset_checks = [
        *checks.build(splits),
        *checks.build_slide_and_model_checks(ingest.slide_tiles, trait_model),
        checks.build_selection_check(ensemble),
        *checks.build_cartography_checks(slide_cartography),
        checks.build_survival_check(survival_analysis, maps.analysis_sets),
    ]
    slide_job = dg.define_asset_job(
        "process_slides",
        selection=[ingest.slide_tiles, slide_predictions, slide_cartography],
        description="Tile a slide, score it with the existing ensembles, map it and compute its HTI.",
    )
    return dg.Definitions(
        assets=dg.map_asset_specs(
            lambda spec: spec.replace_attributes(owners=OWNERS), with_tiling_version(assets, cfg)
        ),
        asset_checks=asset_checks,
        jobs=[slide_job],
        sensors=[sensors.build(cfg, slide_job), automation_sensor()],
        # one configuration per run: the resource refuses a file that no longer says what built this graph
        resources={"pathomch": PathomchResource.pinned(cfg, path), "accelerator": AcceleratorResource()},
        executor=executor_from_env(),
    )


defs = build_definitions()
