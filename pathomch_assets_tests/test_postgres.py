"""The deployment's Dagster instance, run for real: PostgreSQL run, event-log and schedule storage (a server this
test starts), the run queue with its tag concurrency limits and the `gpu` pool of ``deploy/dagster.yaml``.

A backfill of several model partitions, launched as the UI does (`dagster dev`, GraphQL), runs under the daemon
with every run queued at once and never two training steps in the `gpu` pool at the same time; the models'
rows equal a run of the same partition on the local SQLite instance, row for row.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from pathomch_assets.config import load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.runner import materialize_all
from pathomch_assets.tables import TableStore

from .browser import dagster_dev
from .conftest import copy_built
from .test_living import backfill

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MODELS = [str(dg.MultiPartitionKey({"target": "brca/MKI67", "round": f"round_{r}"})) for r in range(3)]
MODEL_TABLES = ("slide_scores", "model_metrics", "model_rounds")


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # Debian keeps them off PATH
    return next((str(v / name) for v in versions if (v / name).exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server():
    """A PostgreSQL server of its own on a free local port (trust authentication), with a ``dagster`` database.

    PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user Debian's package makes.
    """
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            pytest.skip("running as root without a `postgres` user to run the PostgreSQL server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="pathomch-pg-"))  # outside pytest's 0700 folders: the server user reads it
    data, log = root / "data", root / "server.log"
    if as_user:
        shutil.chown(root, "postgres")
    port = _free_port()

    def run(*cmd):
        out = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{cmd[0]}: {out.stdout}{out.stderr}"

    run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    run(
        pg_ctl,
        "-D",
        str(data),
        "-l",
        str(log),
        "-w",
        "-o",
        f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off",
        "start",
    )
    try:
        createdb = str(Path(initdb).resolve().with_name("createdb"))
        run(createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "dagster")
        yield port
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def deploy_instance(home: Path, port: int) -> dict:
    """``deploy/dagster.yaml`` as this machine runs it: the same storage, queue, limits, retries and monitoring;
    the server on ``port``, runs as local processes instead of Kubernetes jobs, and one GPU (the `gpu` pool's
    limit is the GPUs of the cluster)."""
    settings = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    settings["storage"]["postgres"]["postgres_db"]["port"] = port
    settings["run_launcher"] = {"module": "dagster", "class": "DefaultRunLauncher"}
    settings["concurrency"]["pools"]["default_limit"] = 1
    settings["run_monitoring"]["max_resume_run_attempts"] = 0  # resuming a lost worker is the K8s launcher's
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return settings


@pytest.fixture(scope="module")
def tiny(tiny_deployment, tmp_path_factory):
    """One cohort, two planted traits, 3 training rounds (``conftest.tiny_deployment``, as test_scaleout's): a
    copy of the materialized deployment, without its SQLite instance."""
    return copy_built(tiny_deployment / "demo", tmp_path_factory.mktemp("pg")) / "pathomch.yaml"


def rows(store: TableStore, table: str) -> pd.DataFrame:
    df = store.read(table, "trait = 'MKI67'").drop(columns=["seconds"], errors="ignore")
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def training_steps(instance) -> list[tuple[float, float, str]]:
    """(start, end, run id) of every trait_model step, from the event log."""
    spans = {}
    runs = [r.dagster_run.run_id for r in instance.get_run_records()]
    for kind in (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS):
        for rec in (rec for run in runs for rec in instance.get_records_for_run(run, of_type=kind).records):
            entry = rec.event_log_entry
            if entry.step_key == "brca__trait_model":
                spans.setdefault(entry.run_id, {})[kind] = entry.timestamp
    return sorted((s[dg.DagsterEventType.STEP_START], s[dg.DagsterEventType.STEP_SUCCESS], r) for r, s in spans.items())


def test_backfill_under_the_daemon_on_postgres_keeps_the_gpu_pool(tiny, tmp_path, monkeypatch):
    with postgres_server() as port:
        home = tmp_path / "dagster_home"
        settings = deploy_instance(home, port)
        for var, value in {"HOST": "127.0.0.1", "USERNAME": "postgres", "PASSWORD": "unused", "DB": "dagster"}.items():
            monkeypatch.setenv(f"DAGSTER_PG_{var}", value)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        monkeypatch.setenv("PATHOMCH_CONFIG", str(tiny))
        monkeypatch.setenv("PATHOMCH_EXECUTOR", "in_process")
        cfg = load_config(tiny)
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
            # install step 4 of docs/scale-out.md (`dagster instance concurrency set gpu <GPUs>`): a pool first met
            # by two run workers at once can get a slot from each (Dagster counts, then inserts, its slots)
            instance.event_log_storage.set_concurrency_slots("gpu", settings["concurrency"]["pools"]["default_limit"])
        # the tiles, labels and splits the models read, in this process on the same instance
        summary = materialize_all(
            build_definitions(cfg), cfg, selection="slide_tiles,expression,labels,splits", log=lambda *a: None
        )
        assert not summary.failed and not summary.skipped
        with dagster_dev(home, timeout=300) as url:
            backfill(url, {"brca/trait_model": MODELS}, timeout=900)
        with dg.DagsterInstance.get() as instance:
            runs = [r for r in instance.get_run_records() if r.dagster_run.tags.get("dagster/backfill")]
            assert len(runs) == len(MODELS) and all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            steps = training_steps(instance)
            assert len(steps) == len(MODELS)
            # every run was queued before the first training ended: only the pool kept them apart
            assert max(r.create_timestamp.timestamp() for r in runs) < steps[0][1]
            for (_, end, _), (start, _, _) in zip(steps, steps[1:]):
                assert start >= end, steps  # never two in the `gpu` pool at once
            gpu = instance.event_log_storage.get_concurrency_info("gpu")
            assert gpu.slot_count == 1 and not gpu.claimed_slots  # one slot, given back by every step
        assert settings["concurrency"]["runs"]["tag_concurrency_limits"][0]["key"] == "dagster/backfill"
        deployed = {t: rows(TableStore(cfg.tables_dir, cfg.duckdb_path), t) for t in MODEL_TABLES}
    # the same partition on the local SQLite instance: the same rows
    local = tmp_path / "sqlite_home"
    local.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(local))
    defs = build_definitions(cfg)
    with dg.instance_for_test(temp_dir=str(local)) as instance:
        job = defs.resolve_implicit_global_asset_job_def()
        for key in MODELS[:1]:
            assert job.execute_in_process(
                instance=instance, partition_key=key, asset_selection=[dg.AssetKey(["brca", "trait_model"])]
            ).success
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    first = MODELS[0].split("|")[0]
    for table in MODEL_TABLES:
        got = rows(store, table)
        want = deployed[table]
        pd.testing.assert_frame_equal(got[got["model"] == first], want[want["model"] == first], obj=table)
