"""Sensors: new slides in the configured folders become slide partitions and are tiled."""


import dagster as dg

from .config import PathomchConfig
from .partitions import SLIDES
from .slides import discover_slides


def discover_all(cfg: PathomchConfig) -> list[str]:
    """Partition keys ``cohort/slide_id`` of every slide found for every cohort."""
    keys = []
    for name, c in cfg.cohorts.items():
        if c.slides_dir.exists() or c.manifest is not None:
            keys.extend(r.partition_key for r in discover_slides(name, c.slides_dir, c.manifest) if not r.missing)
    return keys


def build(cfg: PathomchConfig, target):
    @dg.sensor(target=target, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
               description="Watches every cohort's slide folder; new slides become `slides` partitions and "
               "are tiled. Idempotent: a tick with no new files requests nothing.")
    def new_slides_sensor(context: dg.SensorEvaluationContext):
        known = set(context.instance.get_dynamic_partitions(SLIDES.name))
        new = [k for k in discover_all(cfg) if k not in known]
        if not new:
            return dg.SkipReason("no new slides")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=k, run_key=k) for k in new],
            dynamic_partitions_requests=[SLIDES.build_add_request(new)],
        )

    return new_slides_sensor
