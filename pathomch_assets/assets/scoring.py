"""Ensemble tile calls and slide scores for every slide, new slides included (SPEC 3.5-3.6, 4)."""

import dagster as dg

from ..config import PathomchConfig
from ..partitions import configured_by_cohort, model_deps, slides
from ..predictions import score_slides
from ..resources import AcceleratorResource, PathomchResource
from ..versions import code_version


def build(cfg: PathomchConfig, cohort: str, slide_tiles, trait_model_asset, ensemble_asset):
    """``cohort``'s ``slide_predictions`` (key ``<cohort>/slide_predictions``)."""

    @dg.asset(
        partitions_def=slides(cohort),
        backfill_policy=dg.BackfillPolicy.single_run(),
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"tensorflow", "parquet"},
        code_version=code_version(cfg.ensemble, cfg.training.input_px),
        deps=[*model_deps(trait_model_asset, ensemble_asset), slide_tiles],
        description="Per slide: ensemble tile calls of every trait (2 of 3 members) and the `ensemble` rows of "
        "`slide_scores`. Slides the members already scored reuse their stored predictions; slides that arrived "
        "after training are scored by the existing ensemble models, never retrained. A trait without a usable "
        "ensemble (its `ensemble` partition failed) is left out, named in the metadata and the log.",
    )
    def slide_predictions(
        context: dg.AssetExecutionContext, pathomch: PathomchResource, accelerator: AcceleratorResource
    ) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        groups, skipped = configured_by_cohort(context.partition_keys, cfg, context.log.warning)
        run = score_slides(cfg, store, groups, context.log.warning, context.log.info)
        return dg.MaterializeResult(
            metadata={
                "slides_scored": run.scored,
                "scored_by_running_models": run.ran_models,
                "slides_without_tiles": skipped + run.skipped,
                **({"traits_without_ensemble": "; ".join(run.left_out.values())} if run.left_out else {}),
            }
        )

    return slide_predictions
