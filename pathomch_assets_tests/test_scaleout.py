"""Scale-out, proven locally: the same demo through Dagster's multiprocess executor with partition
runs in parallel and every output on object storage (S3 protocol) gives the same tables, table for
table, as the in-process run on a local folder."""

import dataclasses

import dagster as dg
import pandas as pd
import pytest
import yaml

from pathomch_assets.config import load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.runner import materialize_all
from pathomch_assets.tables import SCHEMAS, TableStore

from .conftest import UNGATED, balanced_seed

pytestmark = pytest.mark.slow

SPLITS = {"test_fraction": 0.3, "val_fraction": 0.3, "rounds": 3}
#: columns that say when or how long, not what
VOLATILE = {"slides": ["seconds"]}


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """One cohort, two planted traits, 3 training rounds: every asset, kept small."""
    from pathomch_assets.demo_cohort import DEFAULT_COHORTS, build_demo

    brca = DEFAULT_COHORTS[0]
    spec = dataclasses.replace(brca, n_patients=44, traits={t: brca.traits[t] for t in brca.survival_pair})
    seed = balanced_seed((spec,), SPLITS)
    out = tmp_path_factory.mktemp("tiny")
    return build_demo(
        out,
        seed=seed,
        cohorts=(spec,),
        workers=1,
        progress=lambda *a: None,
        # short training: what is compared is the tables of two executions of the same work, not model quality
        overrides={**UNGATED, "splits": SPLITS, "tiling": {"workers": 1}, "training": {"max_epochs": 2}},
    )


def _run(config_path, home, monkeypatch, **kwargs):
    monkeypatch.setenv("PATHOMCH_CONFIG", str(config_path))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    cfg = load_config(config_path)
    summary = materialize_all(build_definitions(cfg), cfg, log=lambda *a: None, **kwargs)
    assert not summary.failed and not summary.skipped, (summary.failed, summary.skipped)
    return cfg, TableStore(cfg.tables_dir, cfg.duckdb_path)


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
    _, local = _run(local_cfg, tmp_path / "home_local", monkeypatch)
    cfg, remote = _run(remote_cfg, tmp_path / "home_remote", monkeypatch, executor="multiprocess", parallel=2)

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
    spans = sorted((r.start_time, r.end_time) for r in records if r.start_time and r.end_time)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "no two runs overlapped"
