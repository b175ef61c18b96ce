"""The Dagster ``Definitions`` of a deployment, built from its configuration."""

from __future__ import annotations

import warnings

import dagster as dg

from . import checks, maps, sensors
from .assets import cartography, ingest, models, molecular, outcomes, scoring, validity
from .config import PathomchConfig, load_config
from .deployment import executor_from_env
from .partitions import slide_job_name
from .resources import AcceleratorResource, PathomchResource
from .versions import with_tiling_version

#: shown on every asset in the UI; a deployment may replace it
OWNERS = ["team:computational-pathology"]


def automation_sensor(interval_s: int = 30) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the assets' automation conditions (eager refresh of evaluation and survival when new
    slides are processed).  Running by default: `dagster dev`'s daemon acts on it without a click."""
    return dg.AutomationConditionSensorDefinition(
        "pathomch_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_s,
        description="Refreshes model_evaluation, site_effects and survival_analysis (eager) after new slides are "
        "scored and mapped.",
    )


def cohort_assets(cfg: PathomchConfig, cohort: str) -> tuple[list, list, dg.UnresolvedAssetJobDefinition]:
    """Every asset of ``cohort`` (keys ``<cohort>/<name>``, group ``<cohort>``, its own partitions), its asset
    checks and its one-slide job.  Each cohort's graph stands alone: no dependency crosses cohorts, so a
    retrained model of one cohort marks nothing of another stale."""
    slide_tiles = ingest.build(cohort)
    mol = molecular.build(cfg, cohort, slide_tiles)
    expression, labels, splits, clinical = mol
    trait_model, ensemble = models.build(cfg, cohort, labels, splits)
    slide_predictions = scoring.build(cfg, cohort, slide_tiles, trait_model, ensemble)
    model_evaluation = models.build_evaluation(cfg, cohort, slide_predictions, trait_model, ensemble)
    trait_validity = validity.build(cfg, cohort, trait_model, ensemble)
    site_effects = validity.build_site_effects(cfg, cohort, slide_predictions, trait_model, ensemble)
    slide_cartography = cartography.build(cfg, cohort, slide_predictions, trait_model, ensemble, trait_validity)
    survival_analysis = outcomes.build(cfg, cohort, slide_cartography, clinical, trait_model, ensemble, trait_validity)
    assets = [
        slide_tiles,
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
        *checks.build(cohort, splits),
        *checks.build_slide_and_model_checks(cohort, slide_tiles, trait_model),
        checks.build_selection_check(cohort, ensemble),
        *checks.build_cartography_checks(cohort, slide_cartography),
        checks.build_survival_check(cohort, survival_analysis, maps.analysis_sets),
    ]
    slide_job = dg.define_asset_job(
        slide_job_name(cohort),
        selection=[slide_tiles, slide_predictions, slide_cartography],
        description=f"Tile a slide of {cohort}, score it with the existing ensembles, map it and compute its HTI.",
    )
    return assets, asset_checks, slide_job


def build_definitions(cfg: PathomchConfig | None = None, config_path: str | None = None) -> dg.Definitions:
    cfg = cfg or load_config(config_path, check_files=False)
    path = config_path or (str(cfg.source) if cfg.source else None)
    assets: list = []
    asset_checks: list = []
    slide_jobs = {}
    for cohort in cfg.cohorts:
        # Dagster calls two of the APIs this graph is built on beta (BackfillPolicy.single_run: a slide backfill is
        # one run; MultiToSingleDimensionPartitionMapping: an ensemble reads its trait's rounds); chosen on purpose
        # and tested with the Dagster release pyproject.toml requires; unfiltered, every command and step process
        # printed 8 warnings per cohort
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)
            cohort_defs, cohort_checks, slide_jobs[cohort] = cohort_assets(cfg, cohort)
        assets += cohort_defs
        asset_checks += cohort_checks
    return dg.Definitions(
        assets=dg.map_asset_specs(
            lambda spec: spec.replace_attributes(owners=OWNERS), with_tiling_version(assets, cfg)
        ),
        asset_checks=asset_checks,
        jobs=list(slide_jobs.values()),
        sensors=[sensors.build(cfg, slide_jobs), automation_sensor(cfg.sensor.automation_interval_s)],
        # one configuration per run: the resource refuses a file that no longer says what built this graph
        resources={"pathomch": PathomchResource.pinned(cfg, path), "accelerator": AcceleratorResource()},
        executor=executor_from_env(),
    )


defs = build_definitions()
