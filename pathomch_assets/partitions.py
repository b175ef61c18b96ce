"""Partitions, per cohort.  Every asset is built once per cohort (asset keys ``<cohort>/<name>``, see
``definitions``), each with its cohort's partitions: slides arrive over time (a dynamic set per cohort,
:func:`slides_name`); the cohort itself, its ``cohort/trait`` targets and the training rounds come from the
configuration (static).  Dagster's multi-partitions take exactly two dimensions, so a model partition is
``target`` x ``round``.  The partition keys name their cohort as they always did (``brca/TCGA-...``,
``brca``, ``brca/MKI67``, ``round_0|brca/MKI67``); a mapping that reads every partition of a parent
(:data:`ALL`) reads every partition of its own cohort only, so staleness never crosses cohorts."""

from __future__ import annotations

import dagster as dg

from .config import PathomchConfig


def slides_name(cohort: str) -> str:
    """The name of ``cohort``'s dynamic slide partitions (for the instance calls that take one): ``brca_slides``."""
    return f"{cohort}_slides"


def slides(cohort: str) -> dg.DynamicPartitionsDefinition:
    """``cohort``'s slides, partition keys ``cohort/slide_id`` (added by the sensor and ``pathomch materialize``)."""
    return dg.DynamicPartitionsDefinition(name=slides_name(cohort))


def slide_job_name(cohort: str) -> str:
    """The job that tiles, scores and maps one new slide of ``cohort`` (requested by the sensor)."""
    return f"{cohort}_process_slides"


def cohort_of(partition_key: str) -> str:
    """The cohort a slide, cohort, target or model partition key names (``round_0|brca/MKI67`` -> ``brca``)."""
    return partition_key.rpartition("|")[2].partition("/")[0]


#: a child partition reads every partition of the parent of its cohort (its models, every slide)
ALL = dg.AllPartitionMapping()

#: tags of an asset whose failed partition stops only the partitions that map to it: an asset that reads
#: all of its partitions (``ALL``) still runs on the others and leaves out what is missing (a trait without
#: a usable ensemble is skipped by scoring, cartography, evaluation and survival).  ``runner`` reads it.
FAILS_ALONE_TAG = "pathomch/fails_alone"
FAILS_ALONE = {FAILS_ALONE_TAG: "partition"}


def model_deps(trait_model_asset, ensemble_asset) -> list[dg.AssetDep]:
    """Direct dependencies on every model and ensemble (few partitions): a retrained model marks the
    results it feeds stale at once (see ``versions``)."""
    return [dg.AssetDep(trait_model_asset, partition_mapping=ALL), dg.AssetDep(ensemble_asset, partition_mapping=ALL)]


def cohorts(cohort: str) -> dg.StaticPartitionsDefinition:
    """The one partition ``cohort`` of a cohort-level asset."""
    return dg.StaticPartitionsDefinition([cohort])


def targets(cfg: PathomchConfig, cohort: str) -> dg.StaticPartitionsDefinition:
    """``cohort``'s targets ``cohort/trait``."""
    return dg.StaticPartitionsDefinition([t for t in cfg.targets() if cohort_of(t) == cohort])


def target_rounds(cfg: PathomchConfig, cohort: str) -> dg.MultiPartitionsDefinition:
    """``cohort``'s models: its targets x the training rounds."""
    return dg.MultiPartitionsDefinition(
        {"target": targets(cfg, cohort), "round": dg.StaticPartitionsDefinition(cfg.round_names())}
    )


def model_key(target: str, round_name: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"target": target, "round": round_name})


def configured_by_cohort(slide_keys, cfg: PathomchConfig, warn) -> tuple[dict[str, list[str]], int]:
    """:func:`by_cohort` for the cohorts ``cfg`` names, and how many slides of other cohorts were left out
    (partitions of a cohort the configuration no longer names; each such cohort is passed to ``warn``)."""
    groups, left_out = by_cohort(slide_keys), 0
    for cohort in [c for c in groups if c not in cfg.cohorts]:
        sids = groups.pop(cohort)
        warn(f"{len(sids)} slides of cohort {cohort!r}, not in {cfg.source}: skipped")
        left_out += len(sids)
    return groups, left_out


def by_cohort(slide_keys) -> dict[str, list[str]]:
    """Slide partition keys ``cohort/slide_id`` grouped by cohort."""
    out: dict[str, list[str]] = {}
    for key in slide_keys:
        cohort, _, sid = key.partition("/")
        out.setdefault(cohort, []).append(sid)
    return out
