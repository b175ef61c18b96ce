"""Code versions and data versions: how Dagster knows what is stale.

Dagster marks an asset partition stale when its code version changed since it was materialized,
or when a *direct* parent partition has a new data version; it does not follow staleness through
a parent it has not re-materialized yet, and it ignores a parent edge whose child partition has 100
or more parent partitions (``SKIP_PARTITION_DATA_VERSION_DEPENDENCY_THRESHOLD``).  So:

- each asset's code version is a hash of the settings its definition names (``CODE_REVISION`` is bumped
  when the code changes its results): a changed setting marks the assets that name it stale, and their
  children once those re-run with new data versions.  A setting an asset reads without naming it (a gate
  decided upstream, ``maps.include_invalid`` read by the maps through ``trait_validity``) reaches it only
  through its parent's data version;
- of the tiling settings only those that change results count (``tiling.result_settings``, the rule
  ``TilingParams.digest`` also follows): they enter the code version of ``slide_tiles``, of ``trait_model``
  and of everything downstream of either (``with_tiling_version``), so a new ``tile_px`` marks the whole
  subgraph that reads tiles stale at once, while ``tiling.workers`` or ``threads_per_slide`` mark nothing;
- ``trait_model`` and ``ensemble`` report data versions of what they made (the saved model, the
  members and their predictions), and every result a model feeds (slide predictions, maps and
  HTI, evaluation, survival) depends on them directly, through few partitions (targets x rounds:
  75 at the paper's scale), so a retrained model marks all of them stale at once;
- cohort-level results read every slide (more than 100 partitions), an edge Dagster does not
  version; new slides reach them through eager automation instead (``AutomationCondition.eager``);
- every asset is built per cohort, with its cohort's partitions (``partitions``), so all of the above
  stays within a cohort: a retrained brca model marks no luad result stale.
"""

from __future__ import annotations

import hashlib
import json

import dagster as dg

#: bump when a code change alters results (all assets then show a new code version)
CODE_REVISION = "2"


def code_version(*settings) -> str:
    """A short code version from the code revision and the settings an asset uses (pydantic models or plain data)."""
    parts = [s.model_dump(mode="json") if hasattr(s, "model_dump") else s for s in settings]
    text = json.dumps([CODE_REVISION, parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def tiling_version(cfg) -> dict:
    """The tiling settings of ``cfg`` that change results (``tiling.result_settings``), for a code version."""
    from .tiling import result_settings

    return result_settings(cfg.tiling.model_dump(mode="json"))


#: the assets that read tiles (in every cohort): these, and everything downstream of them, carry ``tiling_version`` in
#: their code version
TILE_READERS = ("slide_tiles", "trait_model")


def with_tiling_version(assets: list, cfg) -> list:
    """``assets`` with ``tiling_version(cfg)`` folded into the code version of :data:`TILE_READERS` and of every
    asset downstream of them (the others unchanged)."""
    tile_readers = [k for a in assets for k in a.keys if k.path[-1] in TILE_READERS]  # of every cohort
    readers = dg.AssetSelection.assets(*tile_readers).downstream().resolve(assets)
    tiling = tiling_version(cfg)

    def fold(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key not in readers:
            return spec
        return spec.replace_attributes(code_version=code_version(spec.code_version, {"tiling": tiling}))

    return list(dg.map_asset_specs(fold, assets))


def data_version(*chunks: bytes | str) -> dg.DataVersion:
    """A data version from the bytes that make a result what it is."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return dg.DataVersion(h.hexdigest()[:16])


def file_version(path) -> dg.DataVersion:
    """The data version of a file's content."""
    from .files import as_path

    h = hashlib.sha256()
    with as_path(path).open("rb") as fh:
        while block := fh.read(8 * 1024 * 1024):
            h.update(block)
    return dg.DataVersion(h.hexdigest()[:16])


def refresh_on_new_slides(cohort: str) -> dg.AutomationCondition:
    """Eager refresh of a cohort-level result of ``cohort`` when its slides' results update, not when a model is
    retrained.

    A retraining is deliberate and reaches every result through staleness; refreshing evaluation and
    survival as soon as one model finished would compute them with a stale ensemble, once per model.
    """
    models = dg.AssetSelection.assets(dg.AssetKey([cohort, "trait_model"]), dg.AssetKey([cohort, "ensemble"]))
    return dg.AutomationCondition.eager().ignore(models)
