"""Result tables: per-partition Parquet behind DuckDB views; atomic tile files."""

import duckdb
import numpy as np
import pandas as pd
import pytest

from pathomch_assets.storage import SCHEMAS, TableStore, TileWriter, atomic_path, local_copy, read_tiles, tile_file


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
    contract = {"slides": "cohort, slide_id, patient_id, path, status, error",
                "tiles": "cohort, slide_id, col, row, tissue_fraction",
                "labels": "cohort, trait, patient_id, percentile, label, subset",
                "splits": "cohort, round, patient_id, split",
                "slide_scores": "cohort, trait, model, slide_id, score",
                "model_metrics": "cohort, trait, model, eval_set, auc, n_slides",
                "correlations": "cohort, trait, eval_set, spearman_rho, p_value, fdr",
                "hti": "cohort, traits, slide_id, patient_id, hti, n_tiles",
                "survival": "cohort, traits, grouping, n_low, n_high, logrank_p"}
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
