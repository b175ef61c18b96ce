"""The new-slide sensor: bounded ticks at TCGA scale (no slide file opened), manifest MD5 and
size/mtime fingerprints, multi-file slides, and retries of slides whose latest run failed."""

import builtins
import io
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import PARTITION_NAME_TAG, WILL_RETRY_TAG

from pathomch_assets import sensors
from pathomch_assets.config import CohortConfig, PathomchConfig
from pathomch_assets.partitions import slide_job_name, slides, slides_name

from .conftest import OPENSLIDE


def config(tmp_path: Path, manifest: Path | None = None) -> PathomchConfig:
    slides = tmp_path / "slides"
    slides.mkdir(exist_ok=True)
    return PathomchConfig(
        data_dir=tmp_path / "out",
        duckdb_path=tmp_path / "out" / "p.duckdb",
        cohorts={"brca": CohortConfig(slides_dir=slides, mrna=tmp_path / "m.tsv", traits=["MKI67"], manifest=manifest)},
    )


FAILING: set[str] = set()  # partitions whose next run of `process_slides` fails


@dg.op
def process(context: dg.OpExecutionContext):
    if context.partition_key in FAILING:
        raise RuntimeError(f"{context.partition_key}: injected fault")


@dg.job(name=slide_job_name("brca"), partitions_def=slides("brca"))
def process_slides():
    process()


JOBS = {"brca": process_slides}


class Ticker:
    """Calls the sensor as the daemon does: with the last cursor, adding the partitions it asks for."""

    def __init__(self, sensor, instance):
        self.sensor, self.instance, self.cursor = sensor, instance, None

    def __call__(self) -> list[dg.RunRequest]:
        result = self.sensor(dg.build_sensor_context(instance=self.instance, cursor=self.cursor))
        for req in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        self.cursor = result.cursor
        return list(result.run_requests or [])


@pytest.fixture
def opened(monkeypatch):
    """Paths under a watched root that anything opens (builtins.open, io.open, os.open)."""
    roots, seen = [], []

    def watch(fn):
        def wrapper(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and any(str(file).startswith(str(r)) for r in roots):
                seen.append(str(file))
            return fn(file, *args, **kwargs)

        return wrapper

    for mod, name in ((builtins, "open"), (io, "open"), (os, "open")):
        monkeypatch.setattr(mod, name, watch(getattr(mod, name)))
    return roots, seen


def test_ten_thousand_slides_are_added_in_bounded_ticks_without_opening_a_file(tmp_path, opened):
    cfg = config(tmp_path)
    n, per_tick = 10_000, 2_500  # the default is MAX_PER_TICK (500): the same bound, more ticks
    for i in range(n):  # sparse 200 MB files named like TCGA diagnostic slides
        path = cfg.cohorts["brca"].slides_dir / f"TCGA-AA-{i:04d}-01Z-00-DX1.{uuid.UUID(int=i)}.svs".upper()
        fd = os.open(path, os.O_CREAT | os.O_WRONLY)
        os.ftruncate(fd, 200 * 2**20)
        os.close(fd)
    roots, seen = opened
    roots.append(cfg.cohorts["brca"].slides_dir)
    tick = Ticker(sensors.build(cfg, JOBS, max_per_tick=per_tick), dg.DagsterInstance.ephemeral())
    requested, times = [], []
    while True:
        t0 = time.perf_counter()
        reqs = tick()
        times.append(time.perf_counter() - t0)
        if not reqs:
            break
        assert len(reqs) <= per_tick
        requested += [r.partition_key for r in reqs]
    print(f"\n{n} slides: {len(times)} ticks, max {max(times):.2f} s, mean {sum(times) / len(times):.2f} s per tick")
    assert len(times) - 1 == math.ceil(n / per_tick)
    assert len(requested) == len(set(requested)) == n  # every slide once
    assert set(tick.instance.get_dynamic_partitions(slides_name("brca"))) == set(requested)
    assert seen == []  # no slide file opened, let alone hashed
    assert max(times) < 30
    assert len(tick.cursor) < 40 * n  # a short hash per slide, not its path


def test_a_manifest_slide_is_fingerprinted_by_the_manifest_md5_without_reading_it(tmp_path, opened):
    slide = tmp_path / "slides" / "uuid-1" / "TCGA-AA-0001-01Z-00-DX1.ABC.svs"
    slide.parent.mkdir(parents=True)
    shutil.copy(OPENSLIDE / "small.svs", slide)
    manifest = tmp_path / "manifest.tsv"
    line = "id\tfilename\tmd5\tsize\tstate\nuuid-1\t{name}\t{md5}\t{size}\treleased\n"
    manifest.write_text(line.format(name=slide.name, md5="0" * 32, size=slide.stat().st_size))
    cfg = config(tmp_path, manifest)
    key = "brca/TCGA-AA-0001-01Z-00-DX1.ABC"
    roots, seen = opened
    roots.append(slide)
    assert sensors.fingerprint(slide, sensors.discover_refs(cfg)[key].md5) == "md5:" + "0" * 32
    tick = Ticker(sensors.build(cfg, JOBS), dg.DagsterInstance.ephemeral())
    assert [(r.partition_key, r.tags["pathomch/reason"]) for r in tick()] == [(key, "new slide")]
    with open(slide, "ab") as fh:  # the file changes, its manifest entry does not: content is checked in the run
        fh.write(b"x")
    os.utime(slide, ns=(1, 1))
    assert tick() == []
    manifest.write_text(line.format(name=slide.name, md5="1" * 32, size=slide.stat().st_size))
    assert [(r.partition_key, r.tags["pathomch/reason"]) for r in tick()] == [(key, "slide changed (new manifest MD5)")]
    assert seen == [str(slide)]  # only the test's own write


def test_changed_slides_run_again_and_removed_ones_once(tmp_path):
    cfg = config(tmp_path)
    slide = cfg.cohorts["brca"].slides_dir / "TCGA-AA-0001-01Z-00-DX1.svs"
    shutil.copy(OPENSLIDE / "small.svs", slide)
    tick = Ticker(sensors.build(cfg, JOBS), dg.DagsterInstance.ephemeral())
    first = tick()
    assert [r.tags["pathomch/reason"] for r in first] == ["new slide"] and tick() == []
    st = slide.stat()
    os.utime(slide, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, new mtime
    changed = tick()
    assert [r.tags["pathomch/reason"] for r in changed] == ["slide changed (new size/mtime)"] and tick() == []
    os.truncate(slide, st.st_size // 2)
    assert [r.tags["pathomch/reason"] for r in tick()] == ["slide changed (new size/mtime)"]
    slide.unlink()
    removed = tick()
    assert [(r.partition_key, r.tags["pathomch/reason"]) for r in removed] == [
        ("brca/TCGA-AA-0001-01Z-00-DX1", "slide file removed")
    ]
    assert tick() == [] and tick() == []  # withdrawn once
    shutil.copy(OPENSLIDE / "small.svs", slide)
    back = tick()
    assert [r.tags["pathomch/reason"] for r in back] == ["slide file back after removal"]
    run_keys = [r.run_key for r in first + changed + removed + back]
    assert len(set(run_keys)) == len(run_keys)
    # idempotent: a tick evaluated again from the same cursor asks for the same runs (Dagster skips known run keys)
    os.truncate(slide, 10)
    twice = [tick.sensor(dg.build_sensor_context(instance=tick.instance, cursor=tick.cursor)) for _ in range(2)]
    assert twice[0].cursor == twice[1].cursor
    assert [r.run_key for r in twice[0].run_requests] == [r.run_key for r in twice[1].run_requests] != []


def test_a_multi_file_slide_changes_when_any_of_its_files_does(tmp_path):
    cfg = config(tmp_path)
    root = cfg.cohorts["brca"].slides_dir
    dicom = root / "TCGA-AA-0002-01Z-00-DX1"
    dicom.mkdir()
    for i in range(3):
        (dicom / f"level_{i}.dcm").write_bytes(b"D" * (100 + i))
    (root / "TCGA-AA-0003-01Z-00-DX1.mrxs").write_bytes(b"[GENERAL]")
    data = root / "TCGA-AA-0003-01Z-00-DX1"
    data.mkdir()
    (data / "Slidedat.ini").write_text("[GENERAL]\n")
    for i in range(2):
        (data / f"Data000{i}.dat").write_bytes(b"J" * 50)
    assert len(sensors.slide_files(dicom / "level_0.dcm")) == 3
    assert len(sensors.slide_files(root / "TCGA-AA-0003-01Z-00-DX1.mrxs")) == 4
    tick = Ticker(sensors.build(cfg, JOBS), dg.DagsterInstance.ephemeral())
    assert sorted(r.partition_key for r in tick()) == ["brca/TCGA-AA-0002-01Z-00-DX1", "brca/TCGA-AA-0003-01Z-00-DX1"]
    for path, key in [
        (dicom / "level_2.dcm", "brca/TCGA-AA-0002-01Z-00-DX1"),  # not the file discovery names
        (data / "Data0001.dat", "brca/TCGA-AA-0003-01Z-00-DX1"),
    ]:
        path.write_bytes(b"changed")
        assert [(r.partition_key, r.tags["pathomch/reason"]) for r in tick()] == [
            (key, "slide changed (new size/mtime)")
        ]
    (data / "Data0002.dat").write_bytes(b"J")  # a file more
    assert [r.partition_key for r in tick()] == ["brca/TCGA-AA-0003-01Z-00-DX1"]
    assert tick() == []


def test_a_failed_slide_is_retried_with_backoff_up_to_the_cap(tmp_path):
    cfg = config(tmp_path)
    for i in (1, 2, 3):
        shutil.copy(OPENSLIDE / "small.svs", cfg.cohorts["brca"].slides_dir / f"TCGA-AA-000{i}-01Z-00-DX1.svs")
    bad, good, flaky = (f"brca/TCGA-AA-000{i}-01Z-00-DX1" for i in (1, 2, 3))
    offset = [0.0]
    backoff, cap = 100, 3
    sensor = sensors.build(cfg, JOBS, max_retries=cap, backoff_s=backoff, clock=lambda: time.time() + offset[0])
    instance = dg.DagsterInstance.ephemeral()
    tick = Ticker(sensor, instance)

    def run(req) -> bool:
        return process_slides.execute_in_process(
            partition_key=req.partition_key, tags=req.tags, instance=instance, raise_on_error=False
        ).success

    FAILING.clear()
    FAILING.update({bad, flaky})
    try:
        assert [run(r) for r in tick()] == [False, True, False]  # bad, good, flaky
        for attempt in range(1, cap + 1):
            offset[0] = 0
            assert tick() == []  # not before the backoff
            offset[0] = backoff * 2 ** (attempt - 1) * 0.9
            assert tick() == []
            offset[0] = backoff * 2 ** (attempt - 1) + 1
            reqs = tick()
            expected = [bad, flaky] if attempt == 1 else [bad]
            assert [r.partition_key for r in reqs] == expected
            assert all(
                r.tags["pathomch/attempt"] == str(attempt)
                and r.tags["pathomch/reason"].startswith(f"retry {attempt} of {cap}: run ")
                for r in reqs
            )
            FAILING.discard(flaky)  # the flaky slide's retry succeeds
            assert [run(r) for r in reqs] == ([False, True] if attempt == 1 else [False])
        offset[0] = 10**6
        assert tick() == [] and tick() == []  # the cap is reached: no more runs
    finally:
        FAILING.clear()
    (gave_up,) = sensors.unprocessed_slides(instance)
    assert gave_up["partition_key"] == bad and "injected fault" in gave_up["error"]
    latest = instance.get_runs(dg.RunsFilter(job_name=process_slides.name, tags={PARTITION_NAME_TAG: bad}), limit=1)[0]
    assert latest.run_id == gave_up["run_id"] and latest.tags["pathomch/attempt"] == str(cap)
    assert len(instance.get_runs(dg.RunsFilter(tags={PARTITION_NAME_TAG: bad}))) == 1 + cap
    assert len(instance.get_runs(dg.RunsFilter(tags={PARTITION_NAME_TAG: good}))) == 1
    # a manual run that succeeds takes the slide off the list
    assert process_slides.execute_in_process(partition_key=bad, instance=instance).success
    assert sensors.unprocessed_slides(instance) == []


def test_a_failure_that_dagster_retries_itself_is_left_to_dagster(tmp_path):
    cfg = config(tmp_path)
    shutil.copy(OPENSLIDE / "small.svs", cfg.cohorts["brca"].slides_dir / "TCGA-AA-0001-01Z-00-DX1.svs")
    instance = dg.DagsterInstance.ephemeral()
    tick = Ticker(sensors.build(cfg, JOBS, backoff_s=0), instance)
    (req,) = tick()
    FAILING.add(req.partition_key)
    try:
        result = process_slides.execute_in_process(
            partition_key=req.partition_key, instance=instance, raise_on_error=False
        )
    finally:
        FAILING.clear()
    instance.add_run_tags(result.run_id, {WILL_RETRY_TAG: "true"})  # as with run_retries enabled
    assert tick() == []


def test_the_sensor_section_of_the_config_sets_interval_retries_and_backoff(tmp_path):
    from pathomch_assets.config import SensorConfig

    cfg = config(tmp_path).model_copy(update={"sensor": SensorConfig(interval_s=7, max_retries=1, retry_backoff_s=9)})
    sensor = sensors.build(cfg, JOBS)
    assert sensor.minimum_interval_seconds == 7
    assert "up to 1 times" in sensor.description
    with pytest.raises(ValueError, match="interval_s"):
        SensorConfig(interval_s=0)


def test_the_automation_sensor_looks_as_often_as_the_config_says(tmp_path):
    from pathomch_assets.config import SensorConfig
    from pathomch_assets.definitions import build_definitions

    def automation(cfg):
        return build_definitions(cfg).resolve_sensor_def("pathomch_automation")

    assert automation(config(tmp_path)).minimum_interval_seconds == 30
    cfg = config(tmp_path).model_copy(update={"sensor": SensorConfig(automation_interval_s=10)})
    assert automation(cfg).minimum_interval_seconds == 10
    with pytest.raises(ValueError, match="automation_interval_s"):
        SensorConfig(automation_interval_s=1)


def test_the_local_instance_launches_queued_runs_within_a_second(tmp_path, monkeypatch):
    """The instance `pathomch` writes for `dagster dev`: runs from the UI, backfills and sensors wait in a queue
    the daemon reads every second (Dagster's default: 5 s)."""
    from pathomch_assets.runner import instance_for

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    instance = instance_for(config(tmp_path))
    try:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_coordinator.dequeue_interval_seconds == 1
    finally:
        instance.dispose()


def test_the_tests_dagster_dev_daemon_loops_every_few_seconds(tmp_path):
    """``browser.dagster_dev``'s environment (``daemon_interval/sitecustomize.py``) reaches the constant Dagster's
    backfill daemon sleeps on; unset, Dagster's 30 s stands; a ``sitecustomize`` it hides still runs."""
    import subprocess
    import sys

    from .browser import dev_env

    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITECUSTOMIZE'] = 'ran'\n")
    probe = (
        "import os, dagster._daemon.backfill, dagster._daemon.controller as c; "
        "print(c.DEFAULT_DAEMON_INTERVAL_SECONDS, os.environ.get('OTHER_SITECUSTOMIZE'))"
    )
    env = dev_env(tmp_path / "home", daemon_interval_s=3)
    env["PYTHONPATH"] += os.pathsep + str(other)
    out = {"capture_output": True, "text": True, "timeout": 120}
    on = subprocess.run([sys.executable, "-c", probe], env=env, **out)
    off = subprocess.run([sys.executable, "-c", probe], env={**env, "PATHOMCH_TEST_DAEMON_INTERVAL_S": ""}, **out)
    assert (on.stdout.split(), off.stdout.split()) == (["3", "ran"], ["30", "ran"]), (on.stderr, off.stderr)


def test_the_forkserver_preloads_modules_that_exist():
    """A misspelt preload would be skipped without a word (Dagster's forkserver ignores ImportError)."""
    import importlib.util

    from pathomch_assets.runner import FORKSERVER_PRELOAD

    assert [m for m in FORKSERVER_PRELOAD if importlib.util.find_spec(m) is None] == []


def test_a_seen_slide_without_a_partition_of_its_cohort_is_added_again(tmp_path):
    """An instance from before per-cohort slide partitions (or a deleted partition): the cursor knows the
    slide, its cohort's partitions do not; the tick adds it to them and processes it (finished tiles are reused)."""
    cfg = config(tmp_path)
    shutil.copy(OPENSLIDE / "small.svs", cfg.cohorts["brca"].slides_dir / "TCGA-AA-0001-01Z-00-DX1.svs")
    key = "brca/TCGA-AA-0001-01Z-00-DX1"
    tick = Ticker(sensors.build(cfg, JOBS), dg.DagsterInstance.ephemeral())
    assert [r.partition_key for r in tick()] == [key] and tick() == []
    tick.instance.delete_dynamic_partition(slides_name("brca"), key)
    (req,) = tick()
    assert (req.partition_key, req.job_name, req.tags["pathomch/reason"]) == (
        key,
        "brca_process_slides",
        "seen slide without a partition",
    )
    assert tick.instance.get_dynamic_partitions(slides_name("brca")) == [key] and tick() == []
