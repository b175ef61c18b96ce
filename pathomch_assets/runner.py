"""Materialize the asset graph in-process, stage by stage, on a persistent Dagster instance.

A Dagster run holds assets of one partitioning, so the graph is walked in batches: assets
that are ready and share a partitions definition run together, once per partition key (the
slide partitions as one range run, which tiles slides in a worker pool).  Runs land in the
instance at ``$DAGSTER_HOME`` (default ``<data_dir>/dagster_home``), so ``dagster dev`` with
the same home shows them.  A batch whose upstream failed (a blocking check, say) is skipped, as
Dagster skips downstream steps within a run.  This is what ``dagster asset materialize`` does for one asset,
for the whole graph; a deployment with a daemon launches the same runs as backfills.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from .config import PathomchConfig
from .partitions import SLIDES
from .sensors import discover_all

DAGSTER_YAML = """\
# written by pathomch: local instance for the demo and `pathomch materialize`
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
nux:
  enabled: false
"""


#: progress and results at INFO; Dagster's per-step DEBUG events stay in the run's event log (UI)
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def instance_for(cfg: PathomchConfig) -> dg.DagsterInstance:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(cfg.data_dir / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists() or "nux:" not in (home / "dagster.yaml").read_text():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return dg.DagsterInstance.get()


def sync_slide_partitions(cfg: PathomchConfig, instance: dg.DagsterInstance) -> list[str]:
    """Add every slide on disk as a partition (what the sensor does on a tick)."""
    known = set(instance.get_dynamic_partitions(SLIDES.name))
    new = [k for k in discover_all(cfg) if k not in known]
    if new:
        instance.add_dynamic_partitions(SLIDES.name, new)
    return new


def plan_batches(defs: dg.Definitions, selection: set[dg.AssetKey] | None = None):
    """Topological batches of asset keys that share a partitions definition."""
    graph = defs.resolve_asset_graph()
    keys = set(graph.get_all_asset_keys()) if selection is None else set(selection)
    parents = {k: {p for p in graph.get(k).parent_keys if p in keys} for k in keys}
    done: set = set()
    batches = []
    while len(done) < len(keys):
        ready = sorted((k for k in keys - done if parents[k] <= done), key=lambda k: k.to_user_string())
        if not ready:
            raise RuntimeError("cycle in the asset graph")
        pdef = graph.get(ready[0]).partitions_def
        batch = [k for k in ready if graph.get(k).partitions_def == pdef]
        batches.append((pdef, batch))
        done.update(batch)
    return batches


@dataclass
class RunSummary:
    runs: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    already: int = 0  # partitions left alone by missing_only
    seconds: float = 0.0


def materialize_all(defs: dg.Definitions, cfg: PathomchConfig, selection: str | None = None,
                    partitions: list[str] | None = None, log=print, missing_only: bool = False) -> RunSummary:
    """Materialize the selected assets (all by default) for every partition, in order.

    ``missing_only`` skips partitions every asset of the batch already has (resume after a
    killed run); slide partitions always run as one range, which reuses finished slides.
    """
    t0 = time.perf_counter()
    instance = instance_for(cfg)
    new = sync_slide_partitions(cfg, instance)
    if new:
        log(f"added {len(new)} slide partitions")
    graph = defs.resolve_asset_graph()
    keys = parse_selection(selection).resolve(graph) if selection else None
    all_assets = list(defs.assets or []) + list(defs.asset_checks or [])
    resources = defs.resources
    summary = RunSummary()
    failed_keys: set = set()
    for pdef, batch in plan_batches(defs, keys):
        names = ", ".join(k.to_user_string() for k in batch)
        blocked = [k for k in batch if _upstream(graph, k) & failed_keys]
        if blocked:
            failed_keys.update(batch)
            summary.skipped.append(names)
            log(f"skipping {names}: an upstream asset failed")
            continue
        done = None
        if missing_only and not isinstance(pdef, dg.DynamicPartitionsDefinition):
            done = set.intersection(*(set(instance.get_materialized_partitions(k)) for k in batch))
        for label, kwargs in _partition_runs(pdef, instance, partitions):
            if done is not None and label in done:
                summary.already += 1
                continue
            log(f"materializing {names} [{label}]")
            result = dg.materialize(all_assets, selection=batch, instance=instance, resources=resources,
                                    raise_on_error=False, run_config=RUN_CONFIG, **kwargs)
            summary.runs += 1
            if not result.success:
                failed_keys.update(batch)
                summary.failed.append(f"{names} [{label}] (run {result.run_id})")
                log(f"  FAILED: {names} [{label}]; see `dagster dev` run {result.run_id}")
    summary.seconds = time.perf_counter() - t0
    return summary


def _upstream(graph, key) -> set:
    """Every asset ``key`` depends on, transitively."""
    seen, todo = set(), list(graph.get(key).parent_keys)
    while todo:
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            todo.extend(graph.get(k).parent_keys)
    return seen


def parse_selection(text: str) -> dg.AssetSelection:
    """Dagster's selection syntax (``key:labels+``), or plain comma-separated names (``labels,splits+``)."""
    if ":" not in text:
        text = " or ".join(_key_clause(t.strip()) for t in text.split(",") if t.strip())
    return dg.AssetSelection.from_string(text)


def _key_clause(token: str) -> str:
    up = "+" if token.startswith("+") else ""
    down = "+" if token.endswith("+") else ""
    return f"{up}key:{token.strip('+')}{down}"


def _partition_runs(pdef, instance, only: list[str] | None):
    """(label, materialize kwargs) for each run needed to cover ``pdef``'s partitions."""
    if pdef is None:
        yield "unpartitioned", {}
        return
    if isinstance(pdef, dg.DynamicPartitionsDefinition):
        keys = instance.get_dynamic_partitions(pdef.name)
        if only:
            keys = [k for k in keys if k in only]
        if not keys:
            return
        if only or len(keys) == 1:
            for k in keys:
                yield k, {"partition_key": k}
            return
        yield f"{len(keys)} partitions", {"tags": {"dagster/asset_partition_range_start": keys[0],
                                                   "dagster/asset_partition_range_end": keys[-1]}}
        return
    for k in pdef.get_partition_keys(dynamic_partitions_store=instance):
        if only and str(k) not in only and not any(part in only for part in str(k).split("|")):
            continue
        yield str(k), {"partition_key": k}
