"""Partitions.  Slides arrive over time (dynamic); cohorts, ``cohort/trait`` targets and
training rounds come from the configuration (static).  Dagster's multi-partitions take exactly
two dimensions, so a model partition is ``target`` x ``round``."""

from __future__ import annotations

import dagster as dg

from .config import PathomchConfig

#: the slides' dynamic partitions (a name, for the instance calls that take one)
SLIDES_NAME = "slides"
SLIDES = dg.DynamicPartitionsDefinition(name=SLIDES_NAME)

#: a child partition reads every partition of the parent (a cohort's models, every slide)
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


def cohorts(cfg: PathomchConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(list(cfg.cohorts))


def targets(cfg: PathomchConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(cfg.targets())


def target_rounds(cfg: PathomchConfig) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {"target": targets(cfg), "round": dg.StaticPartitionsDefinition(cfg.round_names())}
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
