"""Result tables: per-partition Parquet behind DuckDB views; atomic tile files."""

import duckdb
import numpy as np
import pandas as pd
import pytest

from pathomch_assets.files import atomic_path, local_copy
from pathomch_assets.layout import tile_path as tile_file
from pathomch_assets.tables import SCHEMAS, TableStore
from pathomch_assets.tilestore import TileWriter, read_tiles


def test_rewriting_a_partition_replaces_its_rows(tmp_path):
    store = TableStore(tmp_path / "tables", tmp_path / "p.duckdb")
    rows = pd.DataFrame({"cohort": "c", "round": [0, 0], "patient_id": ["a", "b"], "split": ["train", "test"]})
    store.write("splits", "c", rows)
    store.write("splits", "d", rows.assign(cohort="d"))
    store.write("splits", "c", rows.head(1))
    assert len(store.read("splits")) == 3
    store.ensure_views()
    with duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from splits where cohort = 'c'").fetchone()[0] == 1
        cols = [r[0] for r in con.execute("describe tiles").fetchall()]
    assert cols[:5] == ["cohort", "slide_id", "col", "row", "tissue_fraction"]


def test_every_table_has_the_contract_columns(tmp_path):
    store = TableStore(tmp_path / "tables", tmp_path / "p.duckdb")
    contract = {
        "slides": "cohort, slide_id, patient_id, path, status, error",
        "tiles": "cohort, slide_id, col, row, tissue_fraction",
        "labels": "cohort, trait, patient_id, percentile, label, subset",
        "splits": "cohort, round, patient_id, split",
        "slide_scores": "cohort, trait, model, slide_id, score",
        "model_metrics": "cohort, trait, model, eval_set, auc, n_slides",
        "correlations": "cohort, trait, eval_set, spearman_rho, p_value, fdr",
        "hti": "cohort, traits, slide_id, patient_id, hti, n_tiles",
        "survival": "cohort, traits, grouping, n_low, n_high, logrank_p",
    }
    for table, cols in contract.items():
        assert list(SCHEMAS[table])[: len(cols.split(", "))] == cols.split(", ")
        assert list(store.read(table).columns)[: len(cols.split(", "))] == cols.split(", ")


def test_missing_required_column_is_an_error(tmp_path):
    store = TableStore(tmp_path / "tables", tmp_path / "p.duckdb")
    with pytest.raises(ValueError, match=r"missing columns \['split'\]"):
        store.write("splits", "c", pd.DataFrame({"cohort": ["c"], "round": [0], "patient_id": ["a"]}))


def test_tile_file_appears_only_when_complete(tmp_path):
    path = tmp_path / "s.tfrecord"
    with pytest.raises(RuntimeError):
        with TileWriter(path) as w:
            w.write(np.zeros((8, 8, 3), np.uint8), 0, 0)
            raise RuntimeError("killed mid-slide")
    assert not path.exists() and not list(tmp_path.iterdir())
    with TileWriter(path) as w:
        w.write(np.full((8, 8, 3), 200, np.uint8), 3, 4)
    images, pos = read_tiles(path)
    assert images.shape == (1, 8, 8, 3) and pos.tolist() == [[3, 4]]
    assert abs(int(images[0, 0, 0, 0]) - 200) <= 2  # JPEG round trip


# --------------------------------------------------------------------------- object storage (S3 protocol)
def test_tables_on_object_storage_read_through_duckdb_views(s3_root, tmp_path):
    store = TableStore(s3_root / "tables", tmp_path / "p.duckdb")
    rows = pd.DataFrame({"cohort": "c", "round": [0, 0], "patient_id": ["a", "b"], "split": ["train", "test"]})
    store.write("splits", "c", rows)
    store.write("splits", "d", rows.assign(cohort="d"))
    store.write("splits", "c", rows.head(1))  # replaces partition c
    objects = sorted(p.name for p in (s3_root / "tables" / "splits").iterdir())
    assert objects == ["_schema.parquet", "c.parquet", "d.parquet"]
    assert len(store.read("splits")) == 3
    assert store.query("select cohort, count(*) n from splits group by 1 order by 1").n.tolist() == [1, 2]
    assert not (tmp_path / "tables").exists()  # nothing but the DuckDB file is local


def test_tile_file_on_object_storage_round_trips_and_is_atomic(s3_root):
    target = tile_file(s3_root / "tiles", "c", "S1")
    rgb = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError):
        with TileWriter(target) as w:
            w.write(rgb[0], 0, 0)
            raise RuntimeError("killed mid-slide")
    assert not target.exists()
    with TileWriter(target) as w:
        for i in range(3):
            w.write(rgb[i], i, 1)
    assert target.exists()
    images, pos = read_tiles(target)
    assert images.shape == (3, 16, 16, 3) and pos.tolist() == [[0, 1], [1, 1], [2, 1]]


def test_local_copy_fetches_a_rewritten_object_again(s3_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PATHOMCH_CACHE_DIR", str(tmp_path / "cache"))
    target = s3_root / "models" / "m.json"
    for content in ("first", "second"):
        with atomic_path(target) as tmp:
            tmp.write_text(content)
        local = local_copy(target)
        assert local.startswith(str(tmp_path / "cache")) and open(local).read() == content


def test_models_on_object_storage_load_from_the_cache(s3_root, tmp_path, monkeypatch):
    import keras

    from pathomch_assets.training import load_model

    monkeypatch.setenv("PATHOMCH_CACHE_DIR", str(tmp_path / "cache"))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    for name in ("round_0", "round_1"):  # same file name in two folders: two cache entries
        with atomic_path(s3_root / "models" / name / "model.keras", keep_suffix=True) as tmp:
            model.save(tmp)
    x = np.ones((2, 4), np.float32)
    for name in ("round_0", "round_1"):
        np.testing.assert_allclose(load_model(s3_root / "models" / name)(x), model(x), rtol=1e-6)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.suffix == ".keras"]) == 2


READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
print(con.execute("select count(*) from splits").fetchone()[0], flush=True)
sys.stdin.readline()  # hold the connection until told
print(con.execute("select count(*) from splits").fetchone()[0], flush=True)
"""


@pytest.mark.parametrize("mode", ["ro", "rw"])
def test_a_reader_holding_the_duckdb_file_never_blocks_writes(tmp_path, mode):
    """A notebook (read-only) or the DuckDB CLI (read-write by default) holds the file in another
    process: writes, deletes, view refreshes and queries all go on without waiting, and the
    reader sees new partitions through the views."""
    import subprocess
    import sys
    import time

    store = TableStore(tmp_path / "tables", tmp_path / "p.duckdb")
    rows = pd.DataFrame({"cohort": "c", "round": [0, 0], "patient_id": ["a", "b"], "split": ["train", "test"]})
    store.write("splits", "c", rows)
    assert store.ensure_views() is True
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(store.duckdb_path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "2"  # the reader holds its connection (and lock) now
        t0 = time.perf_counter()
        store.write("splits", "d", rows.assign(cohort="d"))
        assert store.ensure_views() is False  # up to date: the file is not opened at all
        assert store.query("select count(*) n from splits").n[0] == 4
        store.delete("splits", "d")
        store.duckdb_path.with_name("p.duckdb.views").write_text("outdated\n")  # as after a schema change
        assert store.ensure_views() is True  # rewritten beside the reader's file and renamed over it
        assert time.perf_counter() - t0 < 10  # no lock wait (a held lock used to cost 30 s, then failed)
        store.write("splits", "e", rows.assign(cohort="e"))
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "4"  # its views read the globs: new partitions appear
        assert reader.wait(timeout=30) == 0
        with duckdb.connect(str(store.duckdb_path), read_only=True) as con:
            assert con.execute("select count(*) from splits").fetchone()[0] == 4
    finally:
        reader.kill()


def test_paths_with_quotes_and_glob_characters(tmp_path):
    root = tmp_path / "lab's data [1] *"
    store = TableStore(root / "tables?", root / "p.duckdb")
    rows = pd.DataFrame({"cohort": "c", "round": [0], "patient_id": ["a"], "split": ["train"]})
    store.write("splits", "c", rows)
    assert len(store.read("splits")) == 1
    assert store.query("select count(*) n from splits").n[0] == 1
    store.ensure_views()
    with duckdb.connect(str(store.duckdb_path), read_only=True) as con:
        assert con.execute("select count(*) from splits").fetchone()[0] == 1


def test_over_long_partition_and_slide_names_fit_the_file_system(tmp_path):
    """A legal ~240-byte slide name: its Parquet file, tile file and temporary names all fit in 255 bytes,
    two names that differ only at the end stay apart, and the original name is kept in the rows."""
    store = TableStore(tmp_path / "tables", tmp_path / "p.duckdb")
    long_a, long_b = "TCGA-AA-0001-01Z-00-DX1." + "x" * 215 + "a", "TCGA-AA-0001-01Z-00-DX1." + "x" * 215 + "b"
    for sid in (long_a, long_b):
        store.write(
            "tiles",
            f"brca/{sid}",
            pd.DataFrame({"cohort": ["brca"], "slide_id": [sid], "col": [0], "row": [0], "tissue_fraction": [1.0]}),
        )
        with TileWriter(tile_file(tmp_path / "tiles", "brca", sid)) as w:
            w.write(np.zeros((8, 8, 3), np.uint8), 0, 0)
    assert sorted(store.read("tiles").slide_id) == [long_a, long_b]
    names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert len(names) == len(set(names)) and max(len(n.encode()) for n in names) <= 200
    store.delete("tiles", f"brca/{long_a}")
    assert list(store.read("tiles").slide_id) == [long_b]
