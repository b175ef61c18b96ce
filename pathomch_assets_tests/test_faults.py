"""Faults that kill or race the real CLI (issue 15): ``kill -9`` while tiling and while training, two
``pathomch materialize`` at once, a slide that could not be read for a while.

Every case runs ``.venv/bin/pathomch materialize`` in a subprocess on a tiny generated cohort (one
cohort, 24 patients, two traits, one round), kills or races it, runs it again and compares every table
with a clean run's, row for row.
"""

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from pathomch_assets.config import load_config
from pathomch_assets.layout import tile_path as tile_file
from pathomch_assets.tables import SCHEMAS, TableStore

from .conftest import UNGATED, balanced_seed

pytestmark = pytest.mark.slow

PATHOMCH = Path(sys.executable).with_name("pathomch")
#: everything a trait model needs, and the models: the assets of the faults here (downstream ones are not run)
SELECT = "clinical,slide_tiles,expression,splits,labels,trait_model"
SPLITS = {"test_fraction": 0.3, "val_fraction": 0.3, "rounds": 1}
TIMING = {"slides": ["seconds"]}  # columns that differ between two runs of the same work


@pytest.fixture(scope="module")
def tiny():
    """A tiny cohort in a folder every user can read (the permission case runs as ``nobody``)."""
    from pathomch_assets.demo_cohort import DEFAULT_COHORTS, build_demo

    spec = DEFAULT_COHORTS[0]
    cohorts = (
        dataclasses.replace(
            spec, n_patients=24, traits={t: e for t, e in spec.traits.items() if t in spec.survival_pair}
        ),
    )
    seed = balanced_seed(cohorts, SPLITS, seeds=[40, *range(1, 200)])  # 40: the first balanced one today
    base = Path(tempfile.mkdtemp(prefix="pathomch-faults-"))
    base.chmod(0o755)
    build_demo(
        base / "cohort",
        seed=seed,
        cohorts=cohorts,
        workers=2,
        progress=lambda *a: None,
        overrides={**UNGATED, "splits": SPLITS, "ensemble": {"size": 1, "min_votes": 1}, "training": {"max_epochs": 2}},
    )
    yield base
    shutil.rmtree(base, ignore_errors=True)


def deployment(base: Path, name: str, **tiling) -> Path:
    """A config for the tiny cohort with its own outputs (``<name>/``) and tiling settings."""
    raw = yaml.safe_load((base / "cohort" / "pathomch.yaml").read_text())
    raw.update(data_dir=name, duckdb_path=f"{name}/pathomch.duckdb")
    raw["tiling"] = {**raw["tiling"], **tiling}
    path = base / "cohort" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def start(cfg: Path, *args, home: Path, log: Path, select: str = SELECT, user=(), extra_env=None) -> subprocess.Popen:
    """``pathomch materialize`` in a new session (its process group is killed as one); ``user``: a command
    prefix that runs it as another user."""
    env = {k: v for k, v in os.environ.items() if k != "PATHOMCH_CONFIG"}
    env.update(DAGSTER_HOME=str(home), PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", **(extra_env or {}))
    with log.open("ab") as out:
        return subprocess.Popen(
            [*user, str(PATHOMCH), "materialize", "--config", str(cfg), "--select", select, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> str:
    """Wait for ``proc`` (killing its process group if it runs past ``timeout``); its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"pathomch materialize did not finish in {timeout} s (hangs?); output:\n{log.read_text()[-3000:]}")
    return log.read_text()


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def materialize(cfg: Path, *args, home: Path, log: Path, select: str = SELECT, user=(), extra_env=None) -> str:
    proc = start(cfg, *args, home=home, log=log, select=select, user=user, extra_env=extra_env)
    out = finish(proc, log)
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for(predicate, proc: subprocess.Popen, log: Path, timeout: float = 300, every: float = 0.02):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(
                f"pathomch materialize ended (rc {proc.returncode}) before the moment to kill it:\n"
                f"{log.read_text()[-3000:]}"
            )
        time.sleep(every)
    kill_group(proc)
    pytest.fail(f"timed out waiting to kill; output:\n{log.read_text()[-3000:]}")


def tables(cfg_path: Path) -> dict[str, pd.DataFrame]:
    cfg = load_config(cfg_path)
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    return {t: store.query(f"select * from {t} order by all").drop(columns=TIMING.get(t, [])) for t in SCHEMAS}


def assert_same_tables(got: dict, want: dict, names=SCHEMAS) -> None:
    for t in names:
        pd.testing.assert_frame_equal(got[t], want[t], obj=f"table {t}")


def slide_rows(cfg_path: Path) -> set[str]:
    """Slides whose ``slides`` row is written (one Parquet file each)."""
    folder = load_config(cfg_path).tables_dir / "slides"
    return {p.name for p in folder.glob("*.parquet") if p.name != "_schema.parquet"}


@pytest.fixture(scope="module")
def clean(tiny):
    """The reference: one uninterrupted run."""
    cfg = deployment(tiny, "clean")
    materialize(cfg, home=tiny / "clean_home", log=tiny / "clean.log")
    got = tables(cfg)
    assert (got["slides"]["status"] == "ok").sum() > 20 and len(got["model_metrics"]) > 0
    return got


def test_kill_during_tiling_keeps_finished_slides_and_leaves_no_worker(tiny, clean):
    cfg = deployment(tiny, "killtile", workers=2)
    home, log = tiny / "killtile_home", tiny / "killtile.log"
    total = len(clean["slides"])
    tiles_dir = load_config(cfg).tiles_dir
    proc = start(cfg, select="slide_tiles", home=home, log=log)
    untiled = (~clean["slides"]["status"].isin(["ok", "no_tissue", "error"])).sum()  # rows written first
    wait_for(lambda: len(slide_rows(cfg)) >= untiled + 3, proc, log)  # three tiled slides have their rows
    cli = psutil.Process(proc.pid)
    workers = [p for p in cli.children(recursive=True) if "multiprocessing" in " ".join(p.cmdline())]
    os.kill(proc.pid, signal.SIGKILL)  # the CLI only: its tiling workers must notice by themselves
    proc.wait()
    finished = tables(cfg)["slides"]
    assert workers, "the tiling pool was not running when the CLI was killed"
    gone, alive = psutil.wait_procs(workers, timeout=10)
    leftover = [p.pid for p in alive]
    for p in alive:
        p.kill()
    assert not leftover, f"tiling workers {leftover} outlived their killed parent"
    done = finished[finished["status"].isin(["ok", "no_tissue"])]
    assert 1 <= len(done) < total, f"kill came too late: {len(done)} of {total} slides finished"

    kept = {s: tile_file(tiles_dir, "brca", s).stat().st_mtime_ns for s in done[done["status"] == "ok"]["slide_id"]}
    out = materialize(cfg, select="slide_tiles", home=home, log=tiny / "killtile2.log")
    print(
        f"\nkill -9 during tiling: {len(done)} of {total - untiled} slides finished before the kill; the re-run "
        f"reused {len(done)} and tiled {total - untiled - len(done)}; {len(workers)} pool processes exited with "
        "the CLI"
    )
    assert f"{len(done)} slides already tiled with the same content and settings: reused" in out
    assert {s: tile_file(tiles_dir, "brca", s).stat().st_mtime_ns for s in kept} == kept  # not tiled again
    got = tables(cfg)
    assert_same_tables(got, clean, ["slides", "tiles"])


def test_kill_during_training_does_not_block_the_next_run(tiny, clean):
    cfg = deployment(tiny, "killtrain")
    home, log = tiny / "killtrain_home", tiny / "killtrain.log"
    proc = start(cfg, home=home, log=log)
    # the second model is training: the first is done and the gpu pool slot is held
    wait_for(
        lambda: (
            log.read_text().count("materializing brca/trait_model") == 2
            and "training small_cnn" in log.read_text().split("materializing brca/trait_model")[-1]
        ),
        proc,
        log,
        every=0.1,
    )
    kill_group(proc)  # kill -9 of the CLI and everything it started
    assert "runs in" not in log.read_text()
    t0 = time.monotonic()
    out = materialize(cfg, "--missing", home=home, log=tiny / "killtrain2.log")
    print(f"\nkill -9 during trait_model: the --missing re-run finished in {time.monotonic() - t0:.0f} s")
    assert "marked failed" in out and "trait_model" in out
    already = re.search(r"\((\d+) partitions already materialized\)", out)
    assert already and int(already.group(1)) >= 4  # clinical, expression+splits, labels, the first model
    assert_same_tables(tables(cfg), clean)


def test_two_materialize_at_once_one_refuses(tiny, clean):
    cfg = deployment(tiny, "twice", workers=1)
    home = tiny / "twice_home"  # fresh: both would create the instance's SQLite storage
    logs = [tiny / "twice_a.log", tiny / "twice_b.log"]
    procs = [start(cfg, select="slide_tiles", home=home, log=lg) for lg in logs]
    outs = [finish(p, lg) for p, lg in zip(procs, logs)]
    rcs = [p.returncode for p in procs]
    assert sorted(rcs)[0] == 0 and sorted(rcs)[1] != 0, (rcs, outs)
    winner, loser = (0, 1) if rcs[0] == 0 else (1, 0)
    refusal = outs[loser]
    assert "another `pathomch materialize`" in refusal and f"pid {procs[winner].pid}" in refusal
    assert "pathomch.duckdb.lock" in refusal
    assert "sqlite3" not in refusal and "OperationalError" not in refusal and "already exists" not in refusal
    assert_same_tables(tables(cfg), clean, ["slides", "tiles"])
    # two deployments (other outputs) sharing one fresh DAGSTER_HOME: both run (the instance is created once)
    other = [deployment(tiny, f"share{i}", workers=1) for i in range(2)]
    shared = tiny / "shared_home"
    logs = [tiny / f"share{i}.log" for i in range(2)]
    procs = [start(c, select="clinical", home=shared, log=lg) for c, lg in zip(other, logs)]
    outs = [finish(p, lg) for p, lg in zip(procs, logs)]
    assert [p.returncode for p in procs] == [0, 0], outs
    for c in other:
        assert_same_tables(tables(c), clean, ["clinical"])


def test_slide_unreadable_for_a_while_is_tried_again(tiny, clean):
    """Permission denied is transient: fixing it (chmod: size and mtime unchanged) brings the slide back."""
    cfg = deployment(tiny, "perm", workers=1)
    out_dir, home = tiny / "cohort" / "perm", tiny / "perm_home"
    user = ()
    if os.geteuid() == 0:  # root reads any file: run the CLI as nobody, as a user would meet the fault
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv (util-linux): cannot make a file unreadable")
        user = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        for d in (out_dir, home):
            d.mkdir()
            os.chown(d, 65534, 65534)
    ok = clean["slides"][clean["slides"]["status"] == "ok"]
    victim = Path(ok["path"].iloc[0])
    mtime = victim.stat().st_mtime_ns
    env = {"HOME": str(home), "PATHOMCH_CACHE_DIR": str(home / "cache")}
    victim.chmod(0o000)
    try:
        materialize(cfg, select="slide_tiles", home=home, log=tiny / "perm1.log", user=user, extra_env=env)
    finally:
        victim.chmod(0o644)
    first = tables(cfg)["slides"].set_index("slide_id")
    row = first.loc[ok["slide_id"].iloc[0]]
    assert row["status"] == "error" and "Permission denied" in row["error"] and str(victim) in row["error"]
    assert victim.stat().st_mtime_ns == mtime  # what reuse by size and mtime alone would have kept as error
    out = materialize(cfg, select="slide_tiles", home=home, log=tiny / "perm2.log", user=user, extra_env=env)
    reusable = clean["slides"]["status"].isin(["ok", "no_tissue"]).sum()
    assert f"{reusable - 1} slides already tiled" in out  # only the fixed slide is tiled again
    assert_same_tables(tables(cfg), clean, ["slides", "tiles"])
    assert tile_file(load_config(cfg).tiles_dir, "brca", ok["slide_id"].iloc[0]).exists()


def test_a_slide_that_fails_to_write_is_its_own_error_and_retried(tiny, clean, monkeypatch):
    """Real OSErrors for one slide each (its tile file, its rows of `tiles`) become that slide's error row;
    the other slides are tiled; once the cause is gone, the next run tiles exactly those two again."""
    from pathomch_assets.definitions import build_definitions
    from pathomch_assets.files import partition_filename
    from pathomch_assets.runner import materialize_all

    monkeypatch.setenv("DAGSTER_HOME", str(tiny / "isolate_home"))
    cfg_path = deployment(tiny, "isolate", workers=1)
    cfg = load_config(cfg_path)
    ok = clean["slides"][clean["slides"]["status"] == "ok"]["slide_id"].tolist()
    a, b = ok[0], ok[1]
    blocked_tiles = tile_file(cfg.tiles_dir, "brca", a)  # a folder where the slide's tile file goes
    blocked_rows = cfg.tables_dir / "tiles" / f"{partition_filename(f'brca/{b}')}.parquet"  # and where its rows go
    for d in (blocked_tiles, blocked_rows):
        d.mkdir(parents=True)
    defs = build_definitions(cfg)
    summary = materialize_all(defs, cfg, selection="slide_tiles", log=lambda *x: None)
    assert not summary.failed
    got = tables(cfg_path)["slides"].set_index("slide_id")
    assert got.loc[a, "status"] == "error" and str(blocked_tiles) in got.loc[a, "error"]
    assert got.loc[b, "status"] == "error" and "could not be written" in got.loc[b, "error"]
    assert got.loc[b, "path"] in got.loc[b, "error"]
    want = clean["slides"].set_index("slide_id").drop(index=[a, b]).sort_index()
    pd.testing.assert_frame_equal(got.drop(index=[a, b]).sort_index(), want)  # the rest went on
    for d in (blocked_tiles, blocked_rows):
        d.rmdir()
    assert not materialize_all(defs, cfg, selection="slide_tiles", log=lambda *x: None).failed
    assert_same_tables(tables(cfg_path), clean, ["slides", "tiles"])
