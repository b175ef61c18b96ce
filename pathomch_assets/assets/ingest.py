"""Slides to labelled tiles: QC and tiling per slide (dynamic partitions)."""

from typing import TYPE_CHECKING

import dagster as dg

from ..deployment import TILING_STEP
from ..ingest import tile_partitions
from ..partitions import slides
from ..reporting import md_table
from ..resources import PathomchResource
from ..slides import SLIDE_TAG

if TYPE_CHECKING:  # Dagster's type of a metadata value (ints, strings, MetadataValue); not exported by `dagster`
    from dagster._core.definitions.metadata import RawMetadataValue


def build(cohort: str):
    """``cohort``'s ``slide_tiles`` (key ``<cohort>/slide_tiles``)."""
    return dg.asset(
        name="slide_tiles",
        key_prefix=[cohort],
        partitions_def=slides(cohort),
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=cohort,
        kinds={"openslide", "tensorflow"},
        op_tags=TILING_STEP,
        description="QC and tiling of each slide (SPEC 3.3): non-overlapping tiles at the target "
        "magnification from the closest pyramid level, background tiles dropped, JPEG tiles in a "
        "TFRecord per slide. A slide OpenSlide cannot open or read is recorded in `slides` with its "
        "error and skipped (and tried again on the next run). A slide whose file changes while it is read is "
        "tiled again; an earlier result is reused only for the same content (fingerprint) and settings. Each "
        "slide's rows of the `slides` and `tiles` tables are written as it finishes, so an interrupted run keeps "
        "the slides it finished.",
    )(slide_tiles)


def slide_tiles(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
    cfg = pathomch.get_config()

    def progress(done, total, res):
        if res.status != "ok":
            context.log.warning(f"{res.cohort}/{res.slide_id}: {res.status}: {res.error}")
        if done == total or done % max(1, total // 20) == 0:
            context.log.info(f"tiled {done}/{total} slides")

    keys = list(context.partition_keys)
    tag = context.run.tags.get(SLIDE_TAG) if len(keys) == 1 else None  # the sensor's slide: no folder listing
    out = tile_partitions(cfg, pathomch.get_store(), keys, context.log, progress, slide_tag=tag)
    meta: dict[str, RawMetadataValue] = {**out.counts()}
    if out.reused:
        context.log.info(f"{out.reused} slides already tiled with the same content and settings: reused")
    problems = out.problems()
    if not problems.empty:
        meta["problems"] = md_table(problems)
    if out.unrecorded:
        meta["rows_not_written"] = md_table(out.not_written())
    meta.update(out.one_slide())
    return dg.MaterializeResult(metadata=meta)
