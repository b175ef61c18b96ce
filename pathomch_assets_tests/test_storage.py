"""Result tables: per-partition Parquet behind DuckDB views; atomic tile files."""

import duckdb
import numpy as np
import pandas as pd
import pytest

from pathomch_assets.storage import SCHEMAS, TableStore, TileWriter, read_tiles


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
