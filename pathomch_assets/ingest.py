"""Slides to tile files and ``slides``/``tiles`` rows, per slide partition (the ``slide_tiles`` procedure).

A slide is its content, not its name: each slide's :class:`~pathomch_assets.slides.SlideState` (a sampled
content fingerprint, sizes, mtimes, inodes) is taken before it is queued and again after its tiles are
written.  When the two differ, the file was replaced or written while it was read (a ``mv`` over it, a
copy still running): its tiles are the old content's, so it is tiled again (``MAX_TILING_TRIES`` in all),
and a slide still changing after that is an ``error`` row, tried again on the next run.  An earlier
result is reused only when the file's content fingerprint, the settings and the tile file still match
(:func:`reusable`); a ``touch`` alone re-tiles nothing.  Each slide's rows are written as it finishes
(:func:`tile_partitions`' ``record``), so an interrupted run keeps the slides it finished.

What the later steps read back of it lives here too: the usable slides (:func:`training_slides`), one slide per
patient for survival (:func:`survival_slides`) and the grid position of each tile in a tile file
(:func:`tile_positions`).

Nothing here imports Dagster; ``log`` is any object with ``info``, ``warning`` and ``error``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd

from . import layout
from .config import PathomchConfig
from .qc import kept_tiles
from .sites import site_lookup
from .slides import (
    SlideRef,
    SlideState,
    discover_cohort,
    find_slide,
    is_diagnostic,
    patient_id,
    primary_slides,
    ref_from_tag,
    slide_state,
    usable_slides,
)
from .tiling import TilingParams, tile_slides

#: results kept when the file and settings are unchanged.  ``error`` is not among them: an error may be
#: transient (permission denied, an I/O error, a file still being copied, a worker killed for memory)
#: and nothing in the file's size or mtime says when it is over, so a failed slide is tried again on
#: every run; a slide that is really broken fails again the same way, at the cost of one more attempt
#: (an open or a QC read: well under a second), and its row is then left as it was.
REUSED_STATUSES = ("ok", "no_tissue")

#: times a slide is tiled in one run while its file keeps changing under the reader
MAX_TILING_TRIES = 3


class Log(Protocol):
    def info(self, msg: str) -> object: ...
    def warning(self, msg: str) -> object: ...
    def error(self, msg: str) -> object: ...


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_parallelism(cfg: PathomchConfig, log: Log, cpus: int | None = None) -> tuple[int, int]:
    """``(workers, threads per slide)`` for this run: the configured values capped at the CPU count, with a
    log line when capped (more threads than CPUs only add memory: each holds its decode buffers).  Results
    do not depend on either, so neither is part of the settings digest."""
    cpus = cpus or cpu_count()
    workers, threads = cfg.tiling.workers, cfg.tiling.threads_per_slide
    if workers > cpus:
        log.warning(f"tiling.workers {workers} capped at {cpus} (the CPUs this run may use)")
    if threads > cpus:
        log.warning(f"tiling.threads_per_slide {threads} capped at {cpus} (the CPUs this run may use)")
    return max(1, min(workers, cpus)), max(1, min(threads, cpus))


def by_cohort(keys) -> dict[str, list[str]]:
    """Slide partition keys ``cohort/slide_id`` grouped by cohort (``partitions.by_cohort``, which imports
    Dagster)."""
    out: dict[str, list[str]] = {}
    for key in keys:
        cohort, _, sid = key.partition("/")
        out.setdefault(cohort, []).append(sid)
    return out


#: partitions a run looks up one by one (:func:`~pathomch_assets.slides.find_slide`); more are found by
#: listing the cohort's folder once
LOOKUP_ONE_BY_ONE = 8


def slide_refs(
    cfg: PathomchConfig, keys: list[str], slide_tag: str | None = None, log: Log | None = None
) -> dict[str, SlideRef | None]:
    """Partition key -> SlideRef (``None`` when the slide is no longer on disk).

    A one-slide run launched by the sensor carries the slide the tick found (``slide_tag``,
    :func:`~pathomch_assets.slides.ref_tag`): it is used when it still holds (same file, size and mtime,
    inside the allowed folders), so the run does not list the cohort's folder again.  Without it (a run
    from the UI) a few slides are looked up by id (:func:`~pathomch_assets.slides.find_slide`); a backfill
    lists each cohort's folder once.
    """
    out: dict[str, SlideRef | None] = {}
    for cohort, sids in by_cohort(keys).items():
        c = cfg.cohorts.get(cohort)
        if c is None:
            out.update({f"{cohort}/{sid}": None for sid in sids})
            continue
        if len(sids) == 1 and len(keys) == 1 and slide_tag:
            ref, why = ref_from_tag(cohort, c, sids[0], slide_tag)
            if ref is not None:
                out[keys[0]] = ref
                continue
            if log is not None:
                log.warning(f"{keys[0]}: the sensor's slide reference is not used: {why}; the slide is looked up by id")
        if len(sids) <= LOOKUP_ONE_BY_ONE:
            out.update({f"{cohort}/{sid}": find_slide(cohort, c, sid) for sid in sids})
            continue
        found = {r.slide_id: r for r in discover_cohort(cohort, c)}
        out.update({f"{cohort}/{sid}": found.get(sid) for sid in sids})
    return out


def reusable(prev: dict | None, state: SlideState | None, digest: str, cfg) -> bool:
    """An earlier result for this slide still holds: it succeeded (``REUSED_STATUSES``), the file has the same
    content fingerprint and size, the settings are the same and, for a tiled slide, its tile file is there.

    A row without a fingerprint (written before fingerprints were kept) is not reused: its size and mtime
    were taken after tiling and cannot tell whether the tiles are this content's; nor is one without QC
    counts (tiled before per-tile QC and ``stain`` rows)."""
    if not prev or state is None or prev.get("params_hash") != digest or prev.get("status") not in REUSED_STATUSES:
        return False
    if _null(prev.get("file_fingerprint")) or prev.get("file_fingerprint") != state.fingerprint:
        return False
    if _null(prev.get("n_tiles_qc_dropped")):  # tiled before QC columns and stain rows existed: tiled once more
        return False
    if _null(prev.get("file_size")) or int(prev["file_size"]) != state.size:
        return False
    try:
        return prev["status"] != "ok" or layout.tile_file(cfg, prev["cohort"], prev["slide_id"]).exists()
    except OSError:
        return False


def same_outcome(prev: dict | None, row: dict) -> bool:
    """``row`` says what ``prev`` said (timing aside): re-materializing leaves the table unchanged."""
    if not prev:
        return False
    for k, v in row.items():
        p = prev.get(k)
        if k == "seconds" or (_null(v) and _null(p)):
            continue
        if _null(v) or _null(p) or (str(p) != str(v) and not _close(p, v)):
            return False
    return True


def _null(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def _close(a, b) -> bool:
    try:
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    except (TypeError, ValueError):
        return False


def slide_row(cohort: str, slide_id: str, path, status: str, error: str | None, **info) -> dict:
    """One row of ``slides``."""
    return {
        "cohort": cohort,
        "slide_id": slide_id,
        "patient_id": patient_id(slide_id),
        "path": str(path),
        "status": status,
        "error": error,
        **info,
    }


@dataclass
class TilingOutcome:
    """What one ``slide_tiles`` run did: the ``slides`` row of every slide it handled (reused ones aside)."""

    rows: dict[str, dict] = field(default_factory=dict)
    reused: int = 0
    tiled: int = 0
    retiled: int = 0  # tilings repeated because the file changed while it was read
    tiles_total: int = 0
    unrecorded: dict[str, str] = field(default_factory=dict)  # key -> why no row could be written

    def counts(self) -> dict[str, int]:
        """Slides handled, reused, tiled, tiled again after a change, tiles written, and slides per status."""
        status = Counter(r["status"] for r in self.rows.values())
        return {
            "slides": len(self.rows) + self.reused,
            "slides_reused": self.reused,
            "slides_tiled": self.tiled,
            "slides_tiled_again_after_a_change": self.retiled,
            "tiles_written": self.tiles_total,
            **{f"status_{k}": v for k, v in sorted(status.items())},
        }

    def problems(self) -> pd.DataFrame:
        """``slide_id, status, error`` of the slides not tiled ``ok``."""
        table = pd.DataFrame(list(self.rows.values()), columns=["slide_id", "status", "error"])
        return table[table["status"] != "ok"][["slide_id", "status", "error"]]

    def not_written(self) -> pd.DataFrame:
        """``slide, error``: the slides whose rows could not be written, and why."""
        return pd.DataFrame({"slide": list(self.unrecorded), "error": list(self.unrecorded.values())})

    def one_slide(self) -> dict:
        """Of a run of one slide, its status, error, level, magnification and tile count (those it has)."""
        if len(self.rows) != 1:
            return {}
        shown = ("status", "error", "level", "base_magnification", "magnification_source", "n_tiles")
        return {k: v for k, v in next(iter(self.rows.values())).items() if k in shown and v is not None}


def tile_partitions(
    cfg: PathomchConfig, store, keys: list[str], log: Log, progress=None, slide_tag: str | None = None
) -> TilingOutcome:
    """Tile the slides of partition ``keys`` (``cohort/slide_id``) and write their ``slides`` and ``tiles`` rows.

    ``progress(done, total, result)`` is passed to :func:`~pathomch_assets.tiling.tile_slides`;
    ``slide_tag`` is the sensor's reference to a one-slide run's slide (:func:`slide_refs`).
    """
    workers, threads = run_parallelism(cfg, log)
    params = dataclasses.replace(TilingParams.from_config(cfg), threads=threads)
    refs = slide_refs(cfg, keys, slide_tag, log)
    digest = params.digest()
    site_of = site_lookup({name: c.site_file for name, c in cfg.cohorts.items()})  # slides.site (sites.py)
    previous = {}
    for cohort, sids in by_cohort(keys).items():
        prev = store.read("slides", "cohort = ?", [cohort], partitions=[f"{cohort}/{s}" for s in sids])
        previous.update({f"{cohort}/{r['slide_id']}": r for r in prev.to_dict("records")})
    out = TilingOutcome()
    jobs, before = [], {}
    for key, ref in refs.items():
        cohort, _, sid = key.partition("/")
        state, unreadable = None, None
        if ref is not None and not ref.missing and not ref.error:
            try:
                state = slide_state(ref.path)
            except OSError as err:
                unreadable = f"{ref.path}: cannot read the file: {err.strerror or err} (tried again on the next run)"
        if state is not None and reusable(previous.get(key), state, digest, cfg):
            out.reused += 1  # same content, same settings, finished before: nothing to redo (resume after a kill)
            continue
        if ref is not None and ref.error:  # refused by discovery (path policy, broken link, duplicate id, ...)
            out.rows[key] = slide_row(cohort, sid, ref.path, "error", ref.error)
        elif ref is None and cohort not in cfg.cohorts:
            why = f"{sid}: cohort {cohort!r} is not in {cfg.source}: add it back to tile this slide"
            out.rows[key] = slide_row(cohort, sid, "", "missing", why)
        elif ref is None or ref.missing:
            out.rows[key] = slide_row(cohort, sid, ref.path if ref else "", "missing", f"{sid}: slide file not found")
        elif cfg.cohorts[cohort].diagnostic_only and not is_diagnostic(sid):
            out.rows[key] = slide_row(
                cohort, sid, ref.path, "skipped", f"{ref.path}: not a diagnostic slide (no -DX in its name)"
            )
        elif unreadable or state is None:
            out.rows[key] = slide_row(cohort, sid, ref.path, "error", unreadable)
        else:
            before[key] = state
            jobs.append(
                (
                    cohort,
                    sid,
                    str(ref.path),
                    layout.tile_file(cfg, cohort, sid),
                    params,
                    cfg.cohorts[cohort].default_magnification,
                    ref if (ref.md5 or ref.size is not None) else None,
                )
            )  # checked against the manifest
    out.tiled = len(jobs)

    def record(key: str, row: dict, tiles: pd.DataFrame | None = None) -> dict:
        """Write one slide's rows now (a kill keeps every finished slide); any failure is that slide's error."""
        row["site"] = site_of(row["cohort"], row["patient_id"])
        try:
            if tiles is not None:
                store.write("tiles", key, tiles)
            else:
                store.delete("tiles", key)
            store.write("slides", key, pd.DataFrame([row]))
            return row
        except Exception as err:  # OSError (disk full, a name the file system refuses, ...): this slide only
            row = slide_row(
                row["cohort"],
                row["slide_id"],
                row["path"],
                "error",
                f"{row['path'] or key}: its rows could not be written: {type(err).__name__}: {err}",
            )
            with contextlib.suppress(Exception):
                store.delete("tiles", key)
            try:
                store.write("slides", key, pd.DataFrame([row]))
            except Exception as err2:
                out.unrecorded[key] = f"{type(err2).__name__}: {err2}"
                log.error(f"{key}: no row written to `slides` ({err2}); the slide is tried again next run")
            return row

    for key in list(out.rows):  # missing, skipped and unreadable slides: their rows replace stale ones (no tiles)
        out.rows[key] = record(key, out.rows[key])

    for attempt in range(1, MAX_TILING_TRIES + 1):
        again = []
        for res in tile_slides(jobs, workers, progress):
            key = f"{res.cohort}/{res.slide_id}"
            try:
                after: SlideState | None = slide_state(res.path)
            except OSError as err:  # removed or unreadable since it was tiled: an error for this slide
                res.status, res.error = "error", f"{res.path}: cannot stat the file: {err.strerror}"
                res.tiles = res.tiles.iloc[0:0]
                after = None
            if after is not None and after != before[key]:  # replaced or written while it was read
                before[key] = after
                if attempt < MAX_TILING_TRIES:
                    log.warning(f"{key}: {res.path} changed while it was tiled: tiling it again")
                    again.append(key)
                    continue
                res.status = "error"
                res.error = (
                    f"{res.path}: the file changed while it was tiled, {MAX_TILING_TRIES} times (still being "
                    "written?); its tiles are not kept; it is tried again on the next run"
                )
                res.tiles = res.tiles.iloc[0:0]
                with contextlib.suppress(OSError):
                    layout.tile_file(cfg, res.cohort, res.slide_id).unlink(missing_ok=True)
            row = slide_row(
                res.cohort,
                res.slide_id,
                res.path,
                res.status,
                res.error,
                n_tiles=res.n_kept,
                n_tiles_qc_dropped=res.n_qc_dropped,
                seconds=res.seconds,
                file_size=after.size if after else None,
                file_mtime_ns=after.mtime_ns if after else None,
                params_hash=digest,
                **{**res.row_info(), "file_fingerprint": after.fingerprint if after else None},
            )
            if res.status == "error" and same_outcome(previous.get(key), row):
                out.rows[key] = previous[key]  # tried again, failed the same way: its row stays as it was
                continue
            tiles = res.tiles.assign(cohort=res.cohort, slide_id=res.slide_id) if res.status == "ok" else None
            out.rows[key] = record(key, row, tiles)
            with contextlib.suppress(OSError):  # the slide's stain statistics; none when it was not tiled
                if res.stain:
                    store.write("stain", key, pd.DataFrame([res.stain | res.key()]))
                else:
                    store.delete("stain", key)
            if out.rows[key]["status"] == "ok" and tiles is not None:
                out.tiles_total += len(tiles)
        if not again:
            break
        out.retiled += len(again)
        jobs = [j for j in jobs if f"{j[0]}/{j[1]}" in again]
    store.ensure_views()
    return out


# ----------------------------------------------------------------------------- what later steps read back
def training_slides(store, cohort: str) -> pd.DataFrame:
    """Every usable slide of ``cohort`` (``slides.usable_slides``: status ok; non-diagnostic slides were skipped
    at tiling): labels, training, scores and AUCs (SPEC 2)."""
    return usable_slides(store.read("slides", "cohort = ?", [cohort]))


def survival_slides(store, cohort: str) -> pd.DataFrame:
    """One usable slide per patient of ``cohort``, the DX1 slide (else the lowest DX): survival only (SPEC 3.10)."""
    return primary_slides(store.read("slides", "cohort = ?", [cohort]))


def tile_positions(store, cohort: str, slide_ids: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Per slide, the grid positions of the tiles in its tile file, in file order (QC-dropped tiles left out); of
    ``slide_ids`` only when given (their partition files only are read)."""
    keys = None if slide_ids is None else [f"{cohort}/{s}" for s in slide_ids]
    tiles = kept_tiles(store.read("tiles", "cohort = ?", [cohort], partitions=keys))
    return {sid: g[["col", "row"]].reset_index(drop=True) for sid, g in tiles.groupby("slide_id")}
