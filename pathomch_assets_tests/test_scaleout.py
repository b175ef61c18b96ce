"""Scale-out, proven locally: the same demo through Dagster's multiprocess executor with partition
runs in parallel and every output on object storage (S3 protocol) gives the same tables, table for
table, as the in-process run on a local folder."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from pathomch_assets.config import load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.runner import materialize_all
from pathomch_assets.tables import SCHEMAS, TableStore

from .conftest import materialize_tiny

pytestmark = pytest.mark.slow

#: columns that say when or how long, not what
VOLATILE = {"slides": ["seconds"]}


@pytest.fixture(scope="module")
def tiny_demo(tiny_inputs, tmp_path_factory):
    """One cohort, two planted traits, 3 short training rounds (``conftest.tiny_inputs``): its config, in a
    folder of this module's, with absolute paths to the shared build's inputs and outputs, which this module reads
    and never writes (the outputs: ``conftest.tiny_deployment``, the in-process run, see ``_reference``)."""
    shared = tiny_inputs / "demo"
    raw = yaml.safe_load((shared / "pathomch.yaml").read_text())
    for key in ("data_dir", "duckdb_path"):
        raw[key] = str(shared / raw[key])
    for cohort in raw["cohorts"].values():
        for key in ("slides_dir", "mrna", "mirna", "clinical"):
            cohort[key] = str(shared / cohort[key])
    path = tmp_path_factory.mktemp("tiny") / "pathomch.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(config_path, home, monkeypatch, **kwargs):
    monkeypatch.setenv("PATHOMCH_CONFIG", str(config_path))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    cfg = load_config(config_path)
    summary = materialize_all(build_definitions(cfg), cfg, log=lambda *a: None, **kwargs)
    assert not summary.failed and not summary.skipped, (summary.failed, summary.skipped)
    return cfg, TableStore(cfg.tables_dir, cfg.duckdb_path)


def _reference(config_path):
    """The in-process run on a local folder (``conftest.tiny_deployment``), made now or waited for: after this
    test's own run, so that under xdist another worker (test_living's) makes it meanwhile."""
    cfg = load_config(config_path)
    materialize_tiny(Path(cfg.data_dir).parents[1])  # <tiny_inputs>/demo/output
    return TableStore(cfg.tables_dir, cfg.duckdb_path)


def _table(store, table):
    df = store.read(table).drop(columns=VOLATILE.get(table, []))
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def test_multiprocess_parallel_run_on_object_storage_equals_in_process_run(tiny_demo, s3_root, tmp_path, monkeypatch):
    base = yaml.safe_load(tiny_demo.read_text())
    local_cfg = tiny_demo
    remote_cfg = tiny_demo.with_name("remote.yaml")
    remote_cfg.write_text(
        yaml.safe_dump(
            {
                **base,
                "data_dir": str(s3_root),
                "duckdb_path": str(tmp_path / "r.duckdb"),
                "storage_options": dict(s3_root.storage_options),
            }
        )
    )
    monkeypatch.setenv("PATHOMCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg, remote = _run(remote_cfg, tmp_path / "home_remote", monkeypatch, executor="multiprocess", parallel=2)
    local = _reference(local_cfg)  # the in-process run on a local folder: conftest.tiny_deployment

    # table for table, row for row
    for table in SCHEMAS:
        a, b = _table(local, table), _table(remote, table)
        assert len(a) > 0 or table == "correlations", table
        pd.testing.assert_frame_equal(a, b, obj=table)

    # every output went to the bucket: tiles, models, maps, curves, tables
    root = cfg.output_root
    assert {p.name for p in root.iterdir()} >= {"tiles", "models", "cartography", "survival", "tables", "predictions"}
    assert len(list((root / "tiles" / "brca").iterdir())) == (local.read("slides").status == "ok").sum()
    assert (root / "models" / "brca" / "MKI67" / "round_2" / "model.keras").exists()
    assert not (tmp_path / "output").exists()
    assert remote.query("select count(*) n from hti").n[0] == local.query("select count(*) n from hti").n[0] > 0

    # steps ran in their own processes, and partition runs overlapped
    instance = dg.DagsterInstance.get()
    records = instance.get_run_records()
    models = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition/target": "brca/MKI67"}))
    assert sorted(r.dagster_run.tags["dagster/partition/round"] for r in models) == ["round_0", "round_1", "round_2"]
    workers = instance.get_records_for_run(
        records[0].dagster_run.run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED
    ).records
    assert workers, "multiprocess executor: a worker process per step"
    for r in records:  # a finished run's resources (TensorFlow's) are not initialized again to report it
        events = [e.dagster_event.event_type for e in instance.all_logs(r.dagster_run.run_id) if e.dagster_event]
        end = events.index(dg.DagsterEventType.RUN_SUCCESS)
        assert dg.DagsterEventType.RESOURCE_INIT_STARTED not in events[end:], r.dagster_run.run_id
    spans = sorted((r.start_time, r.end_time) for r in records if r.start_time and r.end_time)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "no two runs overlapped"
