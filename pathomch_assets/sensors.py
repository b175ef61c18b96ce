"""Sensors: slide folders are watched; new, changed and removed slides are processed.

A new slide becomes a `slides` partition and is tiled, scored with the existing ensembles and
mapped (cartography, HTI) in one run, without retraining and without touching splits.  The
cursor keeps each slide's size, modification time and MD5; a slide whose content changed is
processed again, a removed one is processed once more so that its rows are withdrawn
(status `missing`).  A tick with nothing new requests nothing.
"""

import hashlib
import json
from pathlib import Path

import dagster as dg

from .config import PathomchConfig
from .partitions import SLIDES
from .slides import discover_slides


def discover_all(cfg: PathomchConfig) -> dict[str, Path]:
    """Partition key ``cohort/slide_id`` -> file, for every slide on disk of every cohort."""
    found = {}
    for name, c in cfg.cohorts.items():
        if c.slides_dir.exists() or c.manifest is not None:
            found.update({r.partition_key: r.path for r in discover_slides(name, c.slides_dir, c.manifest)
                          if not r.missing})
    return found


def md5sum(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def scan(files: dict[str, Path], previous: dict[str, list]) -> tuple[dict[str, list], list[str], list[str], list[str]]:
    """New fingerprints, and the keys that are new, changed (new MD5) and removed.

    MD5 is computed only for new files and files whose size or mtime changed.
    """
    now: dict[str, list] = {}
    new, changed = [], []
    for key, path in files.items():
        st = path.stat()
        old = previous.get(key)
        if old and old[0] == st.st_size and old[1] == st.st_mtime_ns:
            now[key] = old
            continue
        digest = md5sum(path)
        now[key] = [st.st_size, st.st_mtime_ns, digest]
        if old is None:
            new.append(key)
        elif old[2] != digest:
            changed.append(key)
    removed = [k for k in previous if k not in files]
    return now, new, changed, removed


def build(cfg: PathomchConfig, job):
    @dg.sensor(job=job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
               description="Watches every cohort's slide folder. New slides become `slides` partitions and are "
               "tiled, scored with the existing ensembles and mapped; changed slides (new MD5) are processed "
               "again; removed ones are withdrawn. Idempotent: a tick with no change requests nothing.")
    def new_slides_sensor(context: dg.SensorEvaluationContext):
        previous = json.loads(context.cursor) if context.cursor else {}
        known = set(context.instance.get_dynamic_partitions(SLIDES.name))
        fingerprints, new, changed, removed = scan(discover_all(cfg), previous)
        # slides known to the instance before the sensor ever ran count as seen, not new
        unseen = [k for k in new if k not in known]
        requests = [dg.RunRequest(partition_key=k, run_key=f"{k}@{fingerprints[k][2]}",
                                  tags={"pathomch/reason": "new slide"}) for k in unseen]
        requests += [dg.RunRequest(partition_key=k, run_key=f"{k}@{fingerprints[k][2]}",
                                   tags={"pathomch/reason": "slide changed (new MD5)"}) for k in changed]
        requests += [dg.RunRequest(partition_key=k, run_key=f"{k}@removed:{previous[k][2]}",
                                   tags={"pathomch/reason": "slide file removed"}) for k in removed if k in known]
        for k in changed:
            context.log.info(f"{k}: content changed (MD5 {previous[k][2]} -> {fingerprints[k][2]}); processing again")
        for k in removed:
            context.log.info(f"{k}: slide file removed; its rows are withdrawn (status 'missing')")
        cursor = json.dumps(fingerprints, sort_keys=True)
        if not requests:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new, changed or removed slides"), cursor=cursor)
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[SLIDES.build_add_request(unseen)] if unseen else [],
            cursor=cursor,
        )

    return new_slides_sensor
