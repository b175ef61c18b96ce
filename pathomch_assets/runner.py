"""Materialize the asset graph in-process, stage by stage, on a persistent Dagster instance.

Why this module exists: Dagster's own way to run a whole partitioned graph is a backfill, and
backfills are launched by the daemon (``dagster dev``, ``dagster-daemon``); ``dagster asset materialize``
runs one selection of one partitioning.  The demo and ``pathomch materialize`` must work from one
command with no daemon, so this module does what a backfill does, with Dagster's pieces: runs through
``dagster.materialize`` / ``dagster.execute_job``, partitions and partition mappings from the asset graph
(``AssetGraph.get_parent_partition_keys_for_child``), run tags for partitions and ranges, and the
instance's ``dagster.yaml`` for concurrency pools and run monitoring.  A deployment with a daemon
launches the same runs as backfills and needs none of this.

A Dagster run holds assets of one partitioning, so the graph is walked in batches: assets
that are ready and share a partitions definition run together, once per partition key (the
slide partitions as one range run, which tiles slides in a worker pool).  Runs land in the
instance at ``$DAGSTER_HOME`` (default ``dagster_home`` beside the DuckDB file, and set so, so that
``dagster dev`` started from the same shell shows them).

Failures, as a backfill treats them: a run of an asset is skipped when a partition it reads failed
or was skipped (``Outcomes``); the other assets of its batch and the other partitions run.  An asset
tagged ``partitions.FAILS_ALONE`` (a trait's models and ensemble) stops only the partitions mapped to
its failed one: an asset reading all of its partitions runs on and leaves the missing trait out.  The
message of every failed step and failed check is logged (printed by ``pathomch materialize``).

``executor="multiprocess"`` runs every step in its own process through ``dagster.execute_job``
(Dagster's ``multiprocess_executor``), and ``parallel=N`` keeps N partition runs of a batch in
flight at once: the single-machine version of one pod per partition (docs/scale-out.md).
The ``gpu`` concurrency pool still admits one training step at a time.

Faults: one ``materialize`` at a time writes a deployment's outputs (an ``flock`` beside the
DuckDB file, released by the kernel even on ``kill -9``; a second one is refused, naming the
holder).  Every run it launches carries its process id and host (``pathomch/pid``,
``pathomch/host`` tags); before new work, runs of this instance whose process is gone are marked
failed and their concurrency-pool slots freed, so a killed training run never blocks the next.
``dagster dev``'s daemon does the same for runs it launched (run monitoring in ``dagster.yaml``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from .config import ConfigError, PathomchConfig
from .partitions import FAILS_ALONE_TAG, by_cohort, slides_name
from .sensors import discover_all
from .tiling import exit_with_parent

if TYPE_CHECKING:  # the graph `Definitions.resolve_asset_graph` returns (not exported by `dagster`)
    from dagster._core.definitions.assets.graph.asset_graph import AssetGraph

DAGSTER_YAML = """\
# written by pathomch: local instance for the demo and `pathomch materialize`
concurrency:
  pools:
    default_limit: 1
# runs launched from the UI, a backfill or a sensor wait in a queue the daemon looks at every second (Dagster's
# default: every 5 s)
run_coordinator:
  module: dagster
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
# the daemon (dagster dev) fails runs that never start or never finish cancelling, and frees the pool
# slots of finished runs; runs whose worker crashed are retried (not ones whose asset failed: bad data
# fails again).  `pathomch materialize` fails its own dead runs itself (runner.clean_dead_runs).
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: 60
  free_slots_after_run_end_seconds: 30
run_retries:
  enabled: true
  max_retries: 2
  retry_on_asset_or_op_failure: false
telemetry:
  enabled: false
nux:
  enabled: false
"""
YAML_MARK = "# written by pathomch"

#: run tags naming the process that executes a run (``clean_dead_runs`` judges liveness by them)
PID_TAG, START_TAG, HOST_TAG = "pathomch/pid", "pathomch/process_start", "pathomch/host"


class OutputsLocked(RuntimeError):
    """Another ``pathomch materialize`` is writing the same outputs."""


#: progress and results at INFO; Dagster's per-step DEBUG events stay in the run's event log (UI)
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def instance_for(cfg: PathomchConfig) -> dg.DagsterInstance:
    """The instance at ``$DAGSTER_HOME`` (default: ``dagster_home`` beside the DuckDB file).

    Its ``dagster.yaml`` is written when absent (or when it is an older one written by pathomch), and
    the instance's storage is created, under a lock: two processes on a fresh home never race
    (SQLite's ``table ... already exists``).
    """
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(cfg.duckdb_path.parent / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    with _flock(_home_lock(), blocking=True):
        yaml_file = home / "dagster.yaml"
        text = yaml_file.read_text() if yaml_file.exists() else None
        if text is None or (text.startswith(YAML_MARK) and text != DAGSTER_YAML) or "nux:" not in text:
            from .files import atomic_path

            with atomic_path(yaml_file) as tmp:
                tmp.write_text(DAGSTER_YAML)
        instance = dg.DagsterInstance.get()
        instance.get_runs(limit=1)  # storage created (SQLite schema) while the lock is held
    return instance


def _home_lock() -> Path:
    return Path(os.environ["DAGSTER_HOME"]) / ".pathomch-instance.lock"


@contextlib.contextmanager
def _flock(path: Path, blocking: bool):
    """An exclusive ``flock`` on ``path`` for the block (released by the kernel if the process dies)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def lock_path(cfg: PathomchConfig) -> Path:
    return cfg.duckdb_path.with_name(cfg.duckdb_path.name + ".lock")


@contextlib.contextmanager
def outputs_lock(cfg: PathomchConfig):
    """Hold the deployment's materialize lock, or raise :class:`OutputsLocked` naming its holder."""
    path = lock_path(cfg)
    try:
        with _flock(path, blocking=False) as fd:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({**_owner(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
            yield path
    except BlockingIOError:
        try:
            holder = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        who = (
            f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
            if holder
            else "another process"
        )
        raise OutputsLocked(
            f"another `pathomch materialize` ({who}) is writing these outputs ({cfg.duckdb_path}; "
            f"lock {path}); wait for it to finish or stop it, then run again"
        ) from None


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "Z":  # a zombie: dead, not yet reaped
            return False
    now = _process_start(pid)
    return not (start and now and now != start)  # the pid belongs to another process now


def owner_tags() -> dict[str, str]:
    """Tags for a run executed by this process (``dagster/max_retries`` 0: the CLI resumes itself, with
    ``--missing``; a daemon must not retry a CLI run behind its back)."""
    pid, start = os.getpid(), _process_start(os.getpid())
    return {
        PID_TAG: str(pid),
        **({START_TAG: start} if start else {}),
        HOST_TAG: socket.gethostname(),
        "dagster/max_retries": "0",
    }


def clean_dead_runs(instance: dg.DagsterInstance, log: Callable[[str], object] = print) -> list[str]:
    """Fail runs of ``instance`` whose process died (``kill -9``, out of memory, power) and free the
    concurrency-pool slots of every finished run; returns the run ids failed.

    Only runs tagged by ``owner_tags`` on this host are judged (runs ``dagster dev`` launched are the
    daemon's: run monitoring in ``dagster.yaml``).
    """
    host = socket.gethostname()
    active = [
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    failed = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=active)):
        run = record.dagster_run
        pid = run.tags.get(PID_TAG)
        if not pid or run.tags.get(HOST_TAG) != host or _alive(int(pid), run.tags.get(START_TAG) or None):
            continue
        instance.report_run_failed(
            run,
            f"the process that ran this run (pid {pid} on {host}) is gone "
            "(killed?); marked failed by `pathomch materialize` before new work",
        )
        failed.append(run.run_id)
        log(
            f"run {run.run_id} ({run.job_name}) was left {run.status.value} by a process that is gone "
            f"(pid {pid}): marked failed"
        )
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holding = storage.get_concurrency_run_ids()
        for run_id in holding:
            holder = instance.get_run_by_id(run_id)
            if holder is None or holder.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
                log(f"freed the concurrency-pool slots held by finished run {run_id}")
    return failed


def sync_slide_partitions(cfg: PathomchConfig, instance: dg.DagsterInstance) -> list[str]:
    """Add every slide on disk as a partition of its cohort's slides (what the sensor does on a tick)."""
    added: list[str] = []
    for cohort, sids in by_cohort(discover_all(cfg)).items():
        known = set(instance.get_dynamic_partitions(slides_name(cohort)))
        new = [k for k in (f"{cohort}/{s}" for s in sids) if k not in known]
        if new:
            instance.add_dynamic_partitions(slides_name(cohort), new)
        added += new
    return added


def plan_batches(
    defs: dg.Definitions, selection: AbstractSet[dg.AssetKey] | None = None
) -> list[tuple[dg.PartitionsDefinition | None, list[dg.AssetKey]]]:
    """Topological batches of asset keys that share a partitions definition (so one cohort's, each cohort's
    partitions being its own)."""
    graph = defs.resolve_asset_graph()
    keys = set(graph.get_all_asset_keys()) if selection is None else set(selection)
    parents = {k: {p for p in graph.get(k).parent_keys if p in keys} for k in keys}
    done: set[dg.AssetKey] = set()
    batches: list[tuple[dg.PartitionsDefinition | None, list[dg.AssetKey]]] = []
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


EXECUTORS = ("in_process", "multiprocess")
BATCH_JOB = "pathomch_batch"


#: a process per step, forked from a server that has imported Dagster and this package's definitions once, not
#: started from nothing each time.  Named here: Dagster preloads a job's module, and a job rebuilt by
#: ``build_reconstructable_job`` has none, so its steps imported the package again each (1.4 s).  TensorFlow is
#: not preloaded (not fork-safe): a step that trains imports it itself.  Preloading builds ``defs`` from
#: ``$PATHOMCH_CONFIG`` as the forkserver starts.  The forkserver lives as long as the process that first ran such
#: a batch, and its steps see that process's environment as it was then (one CLI run: no difference)
FORKSERVER_PRELOAD = ["dagster", "pathomch_assets.definitions", "pathomch_assets.runner"]
STEP_EXECUTOR = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": FORKSERVER_PRELOAD}}}, name="pathomch_multiprocess"
)


def batch_job(config_path: str | None, asset_keys: list[str]) -> dg.JobDefinition:
    """The job of one batch with the multiprocess executor; rebuilt by name in every step process
    (``dagster.build_reconstructable_job``), so it must depend only on its arguments."""
    from .definitions import build_definitions

    defs = build_definitions(config_path=config_path)
    job = dg.define_asset_job(
        BATCH_JOB,
        selection=dg.AssetSelection.assets(*map(dg.AssetKey.from_user_string, asset_keys)),
        executor_def=STEP_EXECUTOR,
    )
    return dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, resources=defs.resources, jobs=[job]
    ).resolve_job_def(BATCH_JOB)


def execute_run(config_path: str | None, asset_keys: list[str], tags: dict) -> tuple[bool, str]:
    """One run of a batch through ``dagster.execute_job`` (a process per step); (success, run id)."""
    recon = dg.build_reconstructable_job(
        __name__, batch_job.__name__, reconstructable_kwargs={"config_path": config_path, "asset_keys": asset_keys}
    )
    instance = dg.DagsterInstance.get()
    # not opened as a context manager: that initializes every resource of the run again (TensorFlow's included),
    # which only reading outputs back needs; success and run id are read off the result as it is
    result = dg.execute_job(recon, instance, run_config=RUN_CONFIG, tags={**tags, **owner_tags()})
    return result.success, result.run_id


def materialize_all(
    defs: dg.Definitions,
    cfg: PathomchConfig,
    selection: str | None = None,
    partitions: list[str] | None = None,
    log: Callable[[str], object] = print,
    missing_only: bool = False,
    executor: str = "in_process",
    parallel: int = 1,
) -> RunSummary:
    """Materialize the selected assets (all by default) for every partition, in order.

    ``missing_only`` skips partitions every asset of the batch already has (resume after a
    killed run); slide partitions always run as one range, which reuses finished slides.
    ``executor`` is ``in_process`` (one process, ``dagster.materialize``) or ``multiprocess``
    (a process per step); ``parallel`` partition runs of a batch run at once (multiprocess only).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, not {executor!r}")
    if parallel > 1 and executor != "multiprocess":
        raise ValueError("parallel partition runs need executor='multiprocess' (TensorFlow state is per process)")
    with outputs_lock(cfg):
        return _materialize_all(defs, cfg, selection, partitions, log, missing_only, executor, parallel)


def _materialize_all(
    defs: dg.Definitions,
    cfg: PathomchConfig,
    selection: str | None,
    partitions: list[str] | None,
    log: Callable[[str], object],
    missing_only: bool,
    executor: str,
    parallel: int,
) -> RunSummary:
    t0 = time.perf_counter()
    instance = instance_for(cfg)
    with _flock(_home_lock(), blocking=True):  # deployments sharing a DAGSTER_HOME take turns here
        clean_dead_runs(instance, log)
        new = sync_slide_partitions(cfg, instance)
    if new:
        log(f"added {len(new)} slide partitions")
    graph = defs.resolve_asset_graph()
    check_selection(graph, selection)
    keys = parse_selection(selection).resolve(graph) if selection else None
    check_partitions(defs, keys, instance, partitions)
    all_assets = list(defs.assets or []) + list(defs.asset_checks or [])
    resources = defs.resources
    summary = RunSummary()
    outcome = Outcomes(graph, instance)
    pool = None
    config_path = os.environ.get("PATHOMCH_CONFIG") or (str(cfg.source) if cfg.source else None)
    for pdef, batch in plan_batches(defs, keys):
        done = None
        if missing_only and not isinstance(pdef, dg.DynamicPartitionsDefinition):
            done = set.intersection(*(set(instance.get_materialized_partitions(k)) for k in batch))
        runs = []  # (label, materialize kwargs, partition keys, the batch's assets not blocked)
        for label, kwargs, part_keys in _partition_runs(pdef, instance, partitions):
            if done is not None and label in done:
                summary.already += 1
                continue
            blocked = {k: why for k in batch if (why := outcome.blocker(k, part_keys))}
            for k, why in blocked.items():
                outcome.record([k], part_keys, ok=False)
                summary.skipped.append(f"{k.to_user_string()} [{label}]")
                log(f"skipping {k.to_user_string()} [{label}]: upstream {why} failed")
            if len(blocked) < len(batch):
                runs.append((label, kwargs, part_keys, [k for k in batch if k not in blocked]))
        if executor == "multiprocess" and parallel > 1 and len(runs) > 1:
            if pool is None:
                # Dagster's run orchestration is per process (logging, signals): runs in flight at
                # once each get a process of their own, reused across batches
                pool = ProcessPoolExecutor(
                    max_workers=parallel,
                    mp_context=get_context("spawn"),
                    initializer=exit_with_parent,
                    initargs=(os.getpid(),),
                )
            for label, _, _, sel in runs:
                log(f"materializing {_names(sel)} [{label}]")
            outcomes = pool.map(
                execute_run,
                [config_path] * len(runs),
                [[k.to_user_string() for k in sel] for *_, sel in runs],
                [_run_tags(pdef, kwargs) for _, kwargs, _, _ in runs],
            )
        else:

            def one_by_one():
                for label, kwargs, _, sel in runs:
                    log(f"materializing {_names(sel)} [{label}]")
                    if executor == "multiprocess":
                        yield execute_run(config_path, [k.to_user_string() for k in sel], _run_tags(pdef, kwargs))
                    else:
                        r = dg.materialize(
                            all_assets,
                            selection=sel,
                            instance=instance,
                            resources=resources,
                            raise_on_error=False,
                            run_config=RUN_CONFIG,
                            **_with_owner_tags(kwargs),
                        )
                        yield r.success, r.run_id

            outcomes = one_by_one()
        for (label, _, part_keys, sel), (success, run_id) in zip(runs, outcomes):
            summary.runs += 1
            outcome.record(sel, part_keys, ok=success)
            for line in failed_checks(instance, run_id):
                log(f"  check failed: {line}")
            if not success:
                why = "; ".join(failed_steps(instance, run_id))
                summary.failed.append(f"{_names(sel)} [{label}] (run {run_id})" + (f": {why}" if why else ""))
                log(f"  FAILED: {_names(sel)} [{label}]; see `dagster dev` run {run_id}")
                if why:
                    log(f"  {why}")
    if pool is not None:
        pool.shutdown()
    summary.seconds = time.perf_counter() - t0
    return summary


def _names(keys) -> str:
    return ", ".join(k.to_user_string() for k in keys)


def _with_owner_tags(kwargs: dict) -> dict:
    return {**kwargs, "tags": {**kwargs.get("tags", {}), **owner_tags()}}


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The asset checks of a run that did not pass, with severity and description (what to change)."""
    out = []
    for rec in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records:
        event = rec.event_log_entry.dagster_event
        ev = event.event_specific_data if event is not None else None
        if isinstance(ev, dg.AssetCheckEvaluation) and not ev.passed:
            out.append(
                f"{ev.asset_key.to_user_string()} check {ev.check_name} ({ev.severity.value}): "
                f"{ev.description or 'no description'}"
            )
    return out


def _run_tags(pdef, kwargs: dict) -> dict:
    """Run tags for ``execute_job``: a range's tags, or the partition tags of one key."""
    if "partition_key" in kwargs:
        return dict(pdef.get_tags_for_partition_key(kwargs["partition_key"]))
    return dict(kwargs.get("tags", {}))


def failed_steps(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The error of every failed step of a run (an asset's ``dg.Failure`` says what to change)."""
    out = []
    for rec in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        event = rec.event_log_entry.dagster_event
        if event is None:
            continue
        error = event.step_failure_data.error
        out.append(f"{event.step_key} failed: {error.message.strip() if error else 'no message'}")
    return out


class Outcomes:
    """Which partitions of which assets failed (or were skipped) in this materialize, and which succeeded.

    A partition run is blocked by a failed partition it maps to (Dagster's partition mappings), as a
    backfill skips it.  An asset tagged ``partitions.FAILS_ALONE`` (a trait's models and ensemble) blocks
    only the partitions that map to its failed one: a child reading all its partitions (``ALL``) runs on
    while any of them succeeded, and leaves out what is missing (``predictions.usable_traits``).
    """

    def __init__(self, graph: AssetGraph, instance: dg.DagsterInstance):
        self.graph, self.instance = graph, instance
        self.failed: dict[dg.AssetKey, set] = {}
        self.ok: dict[dg.AssetKey, set] = {}

    def record(self, batch, part_keys: list, ok: bool) -> None:
        for key in batch:
            (self.ok if ok else self.failed).setdefault(key, set()).update(part_keys)

    def blocker(self, key, part_keys: list) -> str | None:
        """The failed upstream partition that blocks ``key`` for ``part_keys``, or None."""
        for parent in self.graph.get(key).parent_keys:
            bad = self.failed.get(parent, set())
            if bad and None not in bad:
                mapped = self._mapped(key, parent, part_keys)
                if mapped is not None:
                    bad = bad & mapped
                elif self.graph.get(parent).tags.get(FAILS_ALONE_TAG) and self.ok.get(parent):
                    continue  # reads all its partitions and leaves out the failed ones
            if bad:
                shown = sorted(str(k) for k in bad if k is not None)
                return parent.to_user_string() + (f" [{', '.join(shown[:3])}]" if shown else "")
        return None

    def _mapped(self, key, parent, part_keys: list) -> set | None:
        """The parent partitions that ``part_keys`` of ``key`` read; None when they read all of them (or the
        mapping cannot say)."""
        mapping = self.graph.get_partition_mapping(key, parent)
        if (
            None in part_keys
            or isinstance(mapping, dg.AllPartitionMapping)
            or not self.graph.get(parent).partitions_def
        ):
            return None
        try:
            with dg.partition_loading_context(dynamic_partitions_store=self.instance):
                return {
                    str(k)
                    for pk in part_keys
                    for k in self.graph.get_parent_partition_keys_for_child(
                        pk, parent, key
                    ).partitions_subset.get_partition_keys()
                }
        except Exception:  # a mapping that cannot say: assume it reads the failed partitions
            return None


def parse_selection(text: str) -> dg.AssetSelection:
    """Dagster's selection syntax (``key:brca/labels+``), or plain comma-separated names (``labels,splits+``): a
    bare asset name selects that asset of every cohort, ``brca/labels`` that of one cohort."""
    if ":" not in text:
        text = " or ".join(_key_clause(t.strip()) for t in text.split(",") if t.strip())
    return dg.AssetSelection.from_string(text)


class RequestError(ConfigError):
    """A selection or partition key that names nothing: the run would do nothing and say it succeeded."""


def _close(word: str, known) -> str:
    import difflib

    near = difflib.get_close_matches(word, sorted(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""


def check_selection(graph, selection: str | None) -> None:
    """Raise :class:`RequestError` when ``selection`` (or one of its comma-separated names) selects no asset,
    with the closest asset names."""
    if not selection:
        return
    keys = graph.get_all_asset_keys()
    bare = sorted({k.path[-1] for k in keys})
    full = sorted(k.to_user_string() for k in keys)
    listing = f"assets of each cohort: {', '.join(bare)}; cohorts: {', '.join(sorted({k.path[0] for k in keys}))}"
    tokens = [selection] if ":" in selection else [t.strip() for t in selection.split(",") if t.strip()]
    for token in tokens or [selection]:
        try:
            found = parse_selection(token).resolve(graph) if token.strip() else set()
        except Exception as err:  # Dagster's selection parser: a syntax error
            raise RequestError(f"--select {token!r}: {str(err).splitlines()[0]}") from None
        if not found:
            name = token.strip("+").removeprefix("key:").strip("+")
            near = _close(name, full if "/" in name else bare)
            raise RequestError(f"--select {token!r} matches no asset{near} ({listing})")


def check_partitions(defs: dg.Definitions, keys, instance: dg.DagsterInstance, partitions: list[str] | None) -> None:
    """Raise :class:`RequestError` when a ``--partition`` key is no partition (nor a dimension of one) of the
    selected assets, with the closest keys."""
    if not partitions:
        return
    known: set[str] = set()
    for pdef, _ in plan_batches(defs, keys):
        if pdef is None:
            continue
        if isinstance(pdef, dg.DynamicPartitionsDefinition) and pdef.name is not None:
            found = list(instance.get_dynamic_partitions(pdef.name))
        else:
            found = [str(k) for k in pdef.get_partition_keys(dynamic_partitions_store=instance)]
        known.update(found)
        known.update(part for k in found for part in k.split("|"))
    for p in partitions:
        if p not in known:
            raise RequestError(
                f"--partition {p!r} is no partition of the selected assets{_close(p, known)}"
                + ("" if known else " (they have no partitions)")
            )


def _key_clause(token: str) -> str:
    """``name``: that asset of every cohort (``key:*/name``); ``cohort/name``: one; ``+`` kept on either side."""
    up = "+" if token.startswith("+") else ""
    down = "+" if token.endswith("+") else ""
    name = token.strip("+")
    return f"{up}key:{name if '/' in name else '*/' + name}{down}"


def _partition_runs(
    pdef: dg.PartitionsDefinition | None, instance: dg.DagsterInstance, only: list[str] | None
) -> Iterator[tuple[str, dict, list]]:
    """(label, materialize kwargs, partition keys) for each run needed to cover ``pdef``'s partitions."""
    if pdef is None:
        yield "unpartitioned", {}, [None]
        return
    if isinstance(pdef, dg.DynamicPartitionsDefinition) and pdef.name is not None:  # unnamed: keys from its function
        keys = instance.get_dynamic_partitions(pdef.name)
        if only:
            keys = [k for k in keys if k in only]
        if not keys:
            return
        if only or len(keys) == 1:
            for k in keys:
                yield k, {"partition_key": k}, [k]
            return
        yield (
            f"{len(keys)} partitions",
            {"tags": {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}},
            list(keys),
        )
        return
    for k in pdef.get_partition_keys(dynamic_partitions_store=instance):
        if only and str(k) not in only and not any(part in only for part in str(k).split("|")):
            continue
        yield str(k), {"partition_key": k}, [str(k)]
