"""Tensor molecular cartography and HTI per slide (SPEC 3.8-3.9)."""

from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd

from .. import layout
from ..cartography import maps_gallery, stats_summary
from ..config import PathomchConfig
from ..maps import analysis_settings, hti_settings, map_slides
from ..partitions import ALL, configured_by_cohort, model_deps, slides
from ..reporting import figure_file, md_table
from ..resources import PathomchResource
from ..versions import code_version

if TYPE_CHECKING:  # Dagster's type of a metadata value (ints, strings, MetadataValue); not exported by `dagster`
    from dagster._core.definitions.metadata import RawMetadataValue


def build(
    cfg: PathomchConfig, cohort: str, slide_predictions_asset, trait_model_asset, ensemble_asset, trait_validity_asset
):
    """``cohort``'s ``slide_cartography`` (key ``<cohort>/slide_cartography``)."""

    @dg.asset(
        partitions_def=slides(cohort),
        backfill_policy=dg.BackfillPolicy.single_run(),
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"numpy", "geojson"},
        code_version=code_version(cfg.tiling.tile_px, analysis_settings(cfg, cohort), hti_settings(cfg)),
        deps=[
            slide_predictions_asset,
            dg.AssetDep(trait_validity_asset, partition_mapping=ALL),
            *model_deps(trait_model_asset, ensemble_asset),
        ],
        description="Per slide: the tensor molecular cartography (traits x rows x cols ensemble tile calls "
        "with a tissue mask, .npz, with a `feeds` flag per trait), a heterogeneity map (.png, with a legend of "
        "trait combinations), a QuPath "
        "GeoJSON of the tile calls, and the HTI of each analysed trait set (`hti` table). Beside the paper's HTI "
        "(`hti_stats`): a block-bootstrap 95% CI, a spatial p-value against random placement of the same calls "
        "(`p_spatial`, after the authors' hta package), the HTI normalised by combinations present as hta does, "
        "and a robust HTI where unsure tile calls are decided by their neighbours; the share of each trait "
        "combination per slide (`hti_combinations`). Maps of a sample of slides are shown here. Only traits that "
        "pass the validity gate (`trait_validity`) are drawn, exported and enter an HTI; with maps.include_invalid "
        "the others do too, flagged in every `hti` row (`valid`, `invalid_traits`).",
    )
    def slide_cartography(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        groups, skipped = configured_by_cohort(context.partition_keys, cfg, context.log.warning)
        run = map_slides(cfg, store, groups, context.log.warning)
        hti = pd.DataFrame(run.rows)
        meta: dict[str, RawMetadataValue] = {
            "slides_mapped": int(hti["slide_id"].nunique()) if len(hti) else 0,
            "slides_without_calls": skipped + run.skipped,
        }
        if run.notes:
            meta["left_out"] = "\n".join(run.notes)
        if len(hti):
            meta["hti_summary"] = md_table(hti.groupby(["cohort", "traits"])["hti"].describe().reset_index())
            meta["hti_stats_summary"] = md_table(stats_summary(pd.DataFrame(run.stats)))
            meta["dagster/row_count"] = len(hti)
        if run.gallery:
            maps_file = layout.maps_gallery_file(cfg, context.run.run_id)
            meta.update(figure_file(maps_gallery(run.gallery), maps_file, "heterogeneity_maps", cfg.output_root))
        if len(hti) and hti["slide_id"].nunique() == 1:
            cohort, sid = hti["cohort"].iloc[0], hti["slide_id"].iloc[0]
            meta["map"] = dg.MetadataValue.path(str(layout.cartography_file(cfg, cohort, sid, "png")))
            meta["hti_stats"] = md_table(pd.DataFrame(run.stats).drop(columns=["cohort", "slide_id", "patient_id"]))
        return dg.MaterializeResult(metadata=meta)

    return slide_cartography
