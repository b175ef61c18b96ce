"""Sensors: slide folders are watched; new, changed, removed and failed slides are processed.

A new slide becomes a partition of its cohort's slides (``partitions.slides_name``: ``brca_slides``) and
is tiled, scored with the existing ensembles and mapped (cartography, HTI) in one run of its cohort's job
(``partitions.slide_job_name``: ``brca_process_slides``), without retraining and without touching splits.  A tick
does bounded work whatever the cohort size: a slide's fingerprint is its GDC manifest MD5 when
the manifest lists it, else the size and modification time of its files (every ``.dcm`` of a
DICOM folder, the ``.mrxs`` and its data folder); no slide file is opened in the tick, content is
verified in the run.  Each run request carries the slide the tick found (run tag ``pathomch/slide``,
``slides.ref_tag``), so that the run reads that slide without listing the folder again.  At most
``max_per_tick`` runs are requested per tick, the rest on the next ticks.  A changed slide is
processed again, a removed one once more so that its rows are withdrawn (status `missing`).  A
slide whose latest run failed (after Dagster's own run retries) is requested again with
exponential backoff, up to ``max_retries`` times; then its run is tagged
``pathomch/retries=exhausted`` (:func:`unprocessed_slides`) and the tick logs it.

The cursor is JSON: ``fp`` maps a 12-hex hash of each partition key to a 10-hex hash of the
slide's fingerprint (``-`` once a removal was requested), ``retry`` holds the few slides waiting
for a retry, ``failed_after`` the update time of the last failed run looked at.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

# Private on purpose: dagster 1.13 has no public name for these run tags (its top-level exports only
# MAX_RUNTIME_SECONDS_TAG from dagster._core.storage.tags), no public partition key or failure reason on DagsterRun,
# no partition filter on RunsFilter (tags only), and DagsterRun.is_complete_and_waiting_to_retry is not public either.
# Importing Dagster's own constants fails loudly if they move; copying their strings ("dagster/partition", ...)
# would silently match nothing.  Revisit when dagster exports them.
from dagster._core.storage.tags import PARTITION_NAME_TAG, RUN_FAILURE_REASON_TAG, WILL_RETRY_TAG

from .config import PathomchConfig
from .partitions import by_cohort, cohort_of, slides, slides_name
from .slides import SLIDE_TAG, SlideRef, discover_cohort, ref_tag, slide_files

#: failed runs looked at per tick (the others on the next ticks)
FAILED_RUNS_PER_TICK = 200

REASON_TAG = "pathomch/reason"
ATTEMPT_TAG = "pathomch/attempt"  # retry number of a sensor retry run (Dagster's run retries copy it)
RETRIES_TAG = "pathomch/retries"  # "exhausted" on the failed run of a slide the sensor gave up on
FAILURE_TAG = "pathomch/failure"  # the first error of that run, shortened
REMOVED = "-"


def discover_refs(cfg: PathomchConfig) -> dict[str, SlideRef]:
    """Partition key ``cohort/slide_id`` -> slide (with its manifest MD5, if any), for every slide on
    disk of every cohort that may be read."""
    found = {}
    for name, c in cfg.cohorts.items():
        if c.slides_dir.exists() or c.manifest is not None:
            # refused slides (path policy, broken link, duplicate id) are kept: they get an `error` row
            found.update({r.partition_key: r for r in discover_cohort(name, c) if r.usable or r.error})
    return found


def discover_all(cfg: PathomchConfig) -> dict[str, Path]:
    """Partition key ``cohort/slide_id`` -> file, for every slide on disk of every cohort."""
    return {k: r.path for k, r in discover_refs(cfg).items()}


def fingerprint(path: Path, md5: str | None = None) -> str:
    """``md5:<manifest md5>`` when the manifest lists the slide, else ``size:mtime_ns`` of each of
    its files; files are stat'ed, never read."""
    if md5:
        return f"md5:{md5}"
    parts = []
    for f in slide_files(path):
        st = os.stat(f)
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _hash(text: str, n: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=n).hexdigest()


def key_hash(key: str) -> str:
    return _hash(key, 6)


def fp_hash(fp: str) -> str:
    return _hash(fp, 5)


def load_cursor(text: str | None, refs: dict[str, SlideRef] | None = None) -> dict:
    """The cursor as a dict; a cursor of the first version (``{key: [size, mtime, md5]}``) is converted
    (a slide of several files, fingerprinted by its first file then, is processed once more)."""
    state = json.loads(text) if text else {}
    if state and "fp" not in state:  # first version: full keys and the content MD5
        refs = refs or {}

        def legacy(k: str, size: int, mtime: int, md5: str) -> str:
            ref = refs.get(k)
            return f"md5:{md5}" if ref is not None and ref.md5 else f"{ref.path.name if ref else ''}:{size}:{mtime}"

        state = {"fp": {key_hash(k): fp_hash(legacy(k, *v)) for k, v in state.items()}}
    return {"fp": state.get("fp", {}), "retry": state.get("retry", {}), "failed_after": state.get("failed_after", 0.0)}


def dump_cursor(state: dict) -> str:
    return json.dumps(state, sort_keys=True, separators=(",", ":"))


def _latest_run(instance: dg.DagsterInstance, job_name: str, key: str):
    runs = instance.get_runs(dg.RunsFilter(job_name=job_name, tags={PARTITION_NAME_TAG: key}), limit=1)
    return runs[0] if runs else None


def known_slides(instance: dg.DagsterInstance, cohorts) -> set[str]:
    """The slide partition keys of ``cohorts`` the instance holds."""
    return {k for c in cohorts for k in instance.get_dynamic_partitions(slides_name(c))}


def _ts(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _first_error(instance: dg.DagsterInstance, run_id: str) -> str:
    for entry in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}):
        event = entry.dagster_event
        data = getattr(event, "event_specific_data", None)
        err = getattr(data, "error", None)
        while err is not None and err.cause is not None:  # the user code's error, not Dagster's wrapper
            err = err.cause
        text = (err.message if err else None) or (event.message if event else None) or entry.user_message
        if text:
            return " ".join(text.split())[:300]
    return "unknown error"


def collect_failures(
    instance: dg.DagsterInstance, job_names: dict[str, str], state: dict, max_retries: int, backoff_s: float, log
) -> None:
    """Look at the failed runs updated since the cursor's ``failed_after`` (at most FAILED_RUNS_PER_TICK); for a
    run of a cohort's slide job (``job_names``: cohort -> job name), schedule a retry for a slide whose latest
    run it is, or give up on it."""
    after = datetime.fromtimestamp(state["failed_after"], tz=UTC)
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], updated_after=after),
        limit=FAILED_RUNS_PER_TICK,
        order_by="update_timestamp",
        ascending=True,
    )
    if len(records) == FAILED_RUNS_PER_TICK:  # leave the last timestamp whole for the next tick
        last = records[-1].update_timestamp
        records = [r for r in records if r.update_timestamp != last] or records
    for rec in records:
        run = rec.dagster_run
        key = run.tags.get(PARTITION_NAME_TAG)
        if (
            key is None
            or job_names.get(cohort_of(key)) != run.job_name
            or run.tags.get(WILL_RETRY_TAG) == "true"
            or run.tags.get(RETRIES_TAG) == "exhausted"
            or (state["retry"].get(key) or [None] * 3)[2] == run.run_id
        ):
            continue  # not a slide run, retried by Dagster itself, already given up on or already scheduled
        latest = _latest_run(instance, run.job_name, key)
        if latest is None or latest.run_id != run.run_id:
            continue  # a later run of the slide exists: its outcome counts
        attempt = int(run.tags.get(ATTEMPT_TAG, "0"))
        ended = rec.end_time or _ts(rec.update_timestamp)
        if attempt < max_retries:
            state["retry"][key] = [attempt + 1, ended + backoff_s * 2**attempt, run.run_id]
            log.info(
                f"{key}: run {run.run_id} failed; retry {attempt + 1} of {max_retries} "
                f"after {backoff_s * 2**attempt:.0f} s"
            )
        else:
            why = _first_error(instance, run.run_id)
            instance.add_run_tags(run.run_id, {RETRIES_TAG: "exhausted", FAILURE_TAG: why})
            state["retry"].pop(key, None)
            log.warning(
                f"{key}: run {run.run_id} failed after {max_retries} retries; the slide stays unprocessed "
                f"(runs tagged {RETRIES_TAG}=exhausted): {why}"
            )
    if records:
        state["failed_after"] = max(state["failed_after"], _ts(records[-1].update_timestamp))


def unprocessed_slides(instance: dg.DagsterInstance) -> list[dict]:
    """Slides the sensor gave up on: ``partition_key, run_id, reason, error`` for each whose latest
    run (of its cohort's slide job) is still the failed run tagged ``pathomch/retries=exhausted``."""
    out: list[dict] = []
    for run in instance.get_runs(dg.RunsFilter(tags={RETRIES_TAG: "exhausted"})):
        key = run.tags.get(PARTITION_NAME_TAG)
        latest = _latest_run(instance, run.job_name, key) if key else None
        if latest is not None and latest.run_id == run.run_id and key not in {o["partition_key"] for o in out}:
            out.append(
                {
                    "partition_key": key,
                    "run_id": run.run_id,
                    "reason": run.tags.get(RUN_FAILURE_REASON_TAG, ""),
                    "error": run.tags.get(FAILURE_TAG, ""),
                }
            )
    return sorted(out, key=lambda o: o["partition_key"])


def evaluate(
    cfg: PathomchConfig,
    job_names: dict[str, str],
    context: dg.SensorEvaluationContext,
    *,
    max_per_tick: int,
    max_retries: int,
    backoff_s: float,
    clock,
) -> dg.SensorResult:
    """One tick: the run requests (of each slide's cohort's job, ``job_names``: cohort -> job name) and the
    partitions to add to each cohort's slides, and the next cursor."""
    files = {k: r for k, r in discover_refs(cfg).items() if cohort_of(k) in job_names}
    state = load_cursor(context.cursor, files)
    instance = context.instance
    known = known_slides(instance, job_names)
    fps = {k: fp_hash(f"error:{r.error}" if r.error else fingerprint(r.path, r.md5)) for k, r in files.items()}
    old_fp = state["fp"]
    hashes = {k: key_hash(k) for k in files.keys() | known}
    # entries of slides that are neither on disk nor partitions any more are forgotten
    live = set(hashes.values())
    new_fp = {h: v for h, v in old_fp.items() if h in live}

    changed, removed, new, readded = [], [], [], []
    for k, fp in fps.items():
        old = old_fp.get(hashes[k])
        if old == fp:
            if k not in known:  # seen, but no partition of its cohort's (deleted, or from before per-cohort keys)
                readded.append(k)
            continue
        if old is None and k in known:
            new_fp[hashes[k]] = fp  # known to the instance before the sensor saw it: seen, not new
        elif old is None:
            new.append(k)
        else:
            changed.append(k)
    removed = [k for k in known if k not in files and old_fp.get(hashes[k], REMOVED) != REMOVED]

    collect_failures(instance, job_names, state, max_retries, backoff_s, context.log)
    now = clock()
    retry = state["retry"]
    for k in list(retry):
        if k not in known:
            retry.pop(k)  # the partition was deleted
    due = sorted(k for k, (_, at, _) in retry.items() if at <= now)

    def slide(k: str) -> dict[str, str]:
        """The slide found in this tick, handed to the run (``slides.ref_tag``): the run need not list the folder."""
        ref = files.get(k)
        if ref is None or not ref.usable:
            return {}
        try:
            return {SLIDE_TAG: ref_tag(ref)}
        except OSError:  # gone since it was listed: the run looks it up by id
            return {}

    def run(k: str, run_key: str, why: str, with_slide: bool = True, extra: dict | None = None) -> dg.RunRequest:
        """A run of slide ``k``'s cohort job, saying why, with the slide handed over (``slide``)."""
        tags = {REASON_TAG: why, **(extra or {}), **(slide(k) if with_slide else {})}
        return dg.RunRequest(job_name=job_names[cohort_of(k)], partition_key=k, run_key=run_key, tags=tags)

    def request(k: str, kind: str) -> dg.RunRequest | None:
        old = old_fp.get(hashes[k])
        if kind == "changed":
            why = "slide changed (new manifest MD5)" if files[k].md5 else "slide changed (new size/mtime)"
            if old == REMOVED:
                why, old = "slide file back after removal", "removed"
            return run(k, f"{k}@{old}->{fps[k]}", why)
        if kind == "removed":
            return run(k, f"{k}@{old}->removed", "slide file removed", with_slide=False)
        if kind == "new":
            return run(k, f"{k}@{fps[k]}", "new slide")
        if kind == "readded":
            return run(k, f"{k}@{fps[k]}:partition@{now:.0f}", "seen slide without a partition")
        attempt, _, run_id = retry[k]
        latest = _latest_run(instance, job_names[cohort_of(k)], k)
        if latest is None or latest.run_id != run_id:  # run again by someone else meanwhile
            retry.pop(k)
            return None
        why = f"retry {attempt} of {max_retries}: run {run_id} failed"
        return run(k, f"{k}@retry{attempt}:{run_id}", why, extra={ATTEMPT_TAG: str(attempt)})

    # changed, removed and failed slides first, then new ones; a slide processed again needs no retry
    again = set(changed) | set(removed)
    candidates = [
        *((k, "changed") for k in sorted(changed)),
        *((k, "removed") for k in sorted(removed)),
        *((k, "retry") for k in due if k not in again),
        *((k, "new") for k in sorted(new)),
        *((k, "readded") for k in sorted(readded)),
    ]
    requests: list[dg.RunRequest] = []
    looked_at = 0
    for k, kind in candidates:
        if len(requests) == max_per_tick:
            break
        looked_at += 1
        req = request(k, kind)
        if req is None:
            continue
        requests.append(req)
        new_fp[hashes[k]] = fps.get(k, REMOVED)
        retry.pop(k, None)
        if kind in ("changed", "removed"):
            context.log.info(
                f"{k}: {req.tags[REASON_TAG]}; "
                + ("its rows are withdrawn (status 'missing')" if kind == "removed" else "processing again")
            )
    left = len(candidates) - looked_at
    if left:
        context.log.info(f"{len(requests)} runs requested, {left} left for the next ticks")
    cursor = dump_cursor({"fp": new_fp, "retry": retry, "failed_after": state["failed_after"]})
    if not requests:
        waiting = f"; {len(retry)} slides wait for a retry" if retry else ""
        return dg.SensorResult(
            skip_reason=dg.SkipReason(f"no new, changed, removed or failed slides{waiting}"), cursor=cursor
        )
    added = by_cohort(str(r.partition_key) for r in requests if r.partition_key not in known)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[
            slides(c).build_add_request([f"{c}/{s}" for s in sids]) for c, sids in sorted(added.items())
        ],
        cursor=cursor,
    )


def build(
    cfg: PathomchConfig,
    jobs: dict,
    *,
    max_per_tick: int | None = None,
    max_retries: int | None = None,
    backoff_s: float | None = None,
    clock=time.time,
):
    """The sensor of every cohort's slides, ``jobs``: cohort -> its slide job; with the ``sensor`` section of the
    configuration (arguments override it)."""
    s = cfg.sensor
    max_per_tick = s.max_runs_per_tick if max_per_tick is None else max_per_tick
    max_retries = s.max_retries if max_retries is None else max_retries
    backoff_s = s.retry_backoff_s if backoff_s is None else backoff_s

    job_names = {c: j.name for c, j in jobs.items()}

    @dg.sensor(
        jobs=list(jobs.values()),
        minimum_interval_seconds=s.interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Watches every cohort's slide folder. New slides become partitions of their "
        "cohort's slides (`<cohort>_slides`) and are tiled, scored with the existing ensembles and mapped "
        "(the cohort's `<cohort>_process_slides` job); changed slides (new manifest MD5, else new "
        "size/mtime of any of their files) are processed again; removed ones are withdrawn. A slide whose "
        f"latest run failed is requested again with backoff, up to {max_retries} times, then its run is "
        f"tagged {RETRIES_TAG}=exhausted. At most {max_per_tick} runs per tick; no slide is read in the "
        "tick. Idempotent: a tick with no change requests nothing.",
    )
    def new_slides_sensor(context: dg.SensorEvaluationContext):
        return evaluate(
            cfg,
            job_names,
            context,
            max_per_tick=max_per_tick,
            max_retries=max_retries,
            backoff_s=backoff_s,
            clock=clock,
        )

    return new_slides_sensor
