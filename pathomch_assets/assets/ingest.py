"""Slides to labelled tiles: QC and tiling per slide (dynamic partitions)."""

import contextlib
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd

from .. import layout
from ..config import PathomchConfig
from ..deployment import TILING_STEP
from ..partitions import SLIDES, by_cohort
from ..reporting import md_table
from ..resources import PathomchResource
from ..slides import SlideRef, discover_cohort, is_diagnostic, patient_id
from ..tiling import TilingParams, default_workers, tile_slides

if TYPE_CHECKING:  # Dagster's type of a metadata value (ints, strings, MetadataValue); not exported by `dagster`
    from dagster._core.definitions.metadata import RawMetadataValue


def slide_refs(cfg: PathomchConfig, keys: list[str]) -> dict[str, SlideRef | None]:
    """Partition key -> SlideRef (``None`` when the slide is no longer on disk)."""
    out: dict[str, SlideRef | None] = {}
    for cohort, sids in by_cohort(keys).items():
        c = cfg.cohorts.get(cohort)
        found = {r.slide_id: r for r in discover_cohort(cohort, c)} if c else {}
        for sid in sids:
            out[f"{cohort}/{sid}"] = found.get(sid)
    return out


#: results kept when the file and settings are unchanged.  ``error`` is not among them: an error may be
#: transient (permission denied, an I/O error, a file still being copied, a worker killed for memory)
#: and nothing in the file's size or mtime says when it is over, so a failed slide is tried again on
#: every run; a slide that is really broken fails again the same way, at the cost of one more attempt
#: (an open or a QC read: well under a second), and its row is then left as it was.
REUSED_STATUSES = ("ok", "no_tissue")


def reusable(prev: dict | None, path, digest: str, cfg) -> bool:
    """An earlier result for this slide still holds: it succeeded (``REUSED_STATUSES``), same file
    (size, mtime), same settings, by a tiler that wrote QC columns and a ``stain`` row, and, for a tiled
    slide, its tile file is there."""
    if not prev or prev.get("params_hash") != digest or prev.get("status") not in REUSED_STATUSES:
        return False
    if _null(prev.get("n_tiles_qc_dropped")):  # tiled before QC and stain rows existed: tiled once more
        return False
    try:
        st = Path(path).stat()
    except OSError:
        return False
    if (prev.get("file_size"), prev.get("file_mtime_ns")) != (st.st_size, st.st_mtime_ns):
        return False
    cohort = prev["cohort"]
    try:
        return prev["status"] != "ok" or layout.tile_file(cfg, cohort, prev["slide_id"]).exists()
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
    return {
        "cohort": cohort,
        "slide_id": slide_id,
        "patient_id": patient_id(slide_id),
        "path": str(path),
        "status": status,
        "error": error,
        **info,
    }


@dg.asset(
    partitions_def=SLIDES,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="slides",
    kinds={"openslide", "tensorflow"},
    op_tags=TILING_STEP,
    description="QC and tiling of each slide (SPEC 3.3): non-overlapping tiles at the target "
    "magnification from the closest pyramid level, background tiles dropped, JPEG tiles in a "
    "TFRecord per slide. A slide OpenSlide cannot open or read is recorded in `slides` with its "
    "error and skipped (and tried again on the next run). Each slide's rows of the `slides` and `tiles` "
    "tables are written as it finishes, so an interrupted run keeps the slides it finished.",
)
def slide_tiles(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
    cfg = pathomch.get_config()
    store = pathomch.get_store()
    params = TilingParams.from_config(cfg)
    keys = list(context.partition_keys)
    refs = slide_refs(cfg, keys)
    digest = params.digest()
    previous = {}
    for cohort in by_cohort(keys):
        prev = store.read("slides", "cohort = ?", [cohort])
        previous.update({f"{cohort}/{r['slide_id']}": r for r in prev.to_dict("records")})
    jobs, rows, reused = [], {}, 0
    for key, ref in refs.items():
        cohort, _, sid = key.partition("/")
        if ref is not None and not ref.missing and reusable(previous.get(key), ref.path, digest, cfg):
            reused += 1  # same file, same settings, finished before: nothing to redo (resume after a kill)
            continue
        if ref is not None and ref.error:  # refused by discovery (path policy, broken link, duplicate id, ...)
            rows[key] = slide_row(cohort, sid, ref.path, "error", ref.error)
        elif ref is None or ref.missing:
            rows[key] = slide_row(cohort, sid, ref.path if ref else "", "missing", f"{sid}: slide file not found")
        elif cfg.cohorts[cohort].diagnostic_only and not is_diagnostic(sid):
            rows[key] = slide_row(
                cohort, sid, ref.path, "skipped", f"{ref.path}: not a diagnostic slide (no -DX in its name)"
            )
        else:
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
    tiles_total, unrecorded = 0, {}

    def record(key: str, row: dict, tiles: pd.DataFrame | None = None) -> dict:
        """Write one slide's rows now (a kill keeps every finished slide); any failure is that slide's error."""
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
                unrecorded[key] = f"{type(err2).__name__}: {err2}"
                context.log.error(f"{key}: no row written to `slides` ({err2}); the slide is tried again next run")
            return row

    for key in list(rows):  # missing and skipped slides: their rows replace any stale ones (no tiles)
        rows[key] = record(key, rows[key])

    def progress(done, total, res):
        if res.status != "ok":
            context.log.warning(f"{res.cohort}/{res.slide_id}: {res.status}: {res.error}")
        if done == total or done % max(1, total // 20) == 0:
            context.log.info(f"tiled {done}/{total} slides")

    for res in tile_slides(jobs, default_workers(cfg.tiling.workers), progress):
        key = f"{res.cohort}/{res.slide_id}"
        try:
            st = Path(res.path).stat()
        except OSError as err:  # removed or unreadable since it was tiled: an error for this slide
            res.status, res.error = "error", f"{res.path}: cannot stat the file: {err.strerror}"
            res.tiles = res.tiles.iloc[0:0]
            st = None
        row = slide_row(
            res.cohort,
            res.slide_id,
            res.path,
            res.status,
            res.error,
            n_tiles=res.n_kept,
            n_tiles_qc_dropped=res.n_qc_dropped,
            seconds=res.seconds,
            file_size=st.st_size if st else None,
            file_mtime_ns=st.st_mtime_ns if st else None,
            params_hash=digest,
            **res.info,
        )
        if res.status == "error" and same_outcome(previous.get(key), row):
            rows[key] = previous[key]  # tried again, failed the same way: its row stays as it was
            continue
        tiles = res.tiles.assign(cohort=res.cohort, slide_id=res.slide_id) if res.status == "ok" else None
        rows[key] = record(key, row, tiles)
        with contextlib.suppress(OSError):  # the slide's stain statistics (issue 28); none when it was not tiled
            if res.stain:
                store.write("stain", key, pd.DataFrame([res.stain | res.key()]))
            else:
                store.delete("stain", key)
        if rows[key]["status"] == "ok" and tiles is not None:
            tiles_total += len(tiles)
    store.ensure_views()
    status = Counter(r["status"] for r in rows.values())
    table = pd.DataFrame(list(rows.values()), columns=["slide_id", "status", "error"])
    meta: dict[str, RawMetadataValue] = {
        "slides": len(rows) + reused,
        "slides_reused": reused,
        "slides_tiled": len(jobs),
        "tiles_written": tiles_total,
        **{f"status_{k}": v for k, v in sorted(status.items())},
    }
    if reused:
        context.log.info(f"{reused} slides already tiled with the same file and settings: reused")
    bad = table[table["status"] != "ok"]
    if not bad.empty:
        meta["problems"] = md_table(bad[["slide_id", "status", "error"]])
    if unrecorded:
        meta["rows_not_written"] = md_table(
            pd.DataFrame({"slide": list(unrecorded), "error": list(unrecorded.values())})
        )
    if len(rows) == 1:
        row = next(iter(rows.values()))
        meta.update(
            {
                k: v
                for k, v in row.items()
                if k in ("status", "error", "level", "base_magnification", "magnification_source", "n_tiles")
                and v is not None
            }
        )
    return dg.MaterializeResult(metadata=meta)
