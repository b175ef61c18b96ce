"""Reliability, third round (issue 30): a slide is its content, hostile headers, degenerate data, a CLI and
SQL that say what they did.  Each case on real formats (slides written as OpenSlide reads them, real tables)."""

import os
import shutil

import numpy as np
import pytest

from pathomch_assets import layout
from pathomch_assets.config import load_config
from pathomch_assets.demo_cohort import write_pyramid
from pathomch_assets.ingest import MAX_TILING_TRIES, tile_partitions
from pathomch_assets.slides import content_fingerprint
from pathomch_assets.tables import TableStore

SID = "TCGA-AA-0001-01Z-00-DX1"
KEY = f"brca/{SID}"


class Log:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, msg):
        self.lines.append(msg)

    warning = error = info


def tissue(seed: int, rows: int, cols: int, px: int = 64) -> np.ndarray:
    """A slide base of ``rows x cols`` tiles of ``px``, every tile tissue (dark noise), seeded."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, (rows * px, cols * px, 3), dtype=np.uint8)


@pytest.fixture
def deployment(tmp_path):
    """A one-cohort configuration tiling 64 px tiles at 20x, its slides folder and its table store."""
    slides = tmp_path / "slides"
    slides.mkdir()
    (tmp_path / "mrna.tsv").write_text("gene_id\n")
    (tmp_path / "mirna.csv").write_text("Genes,Correction\n")
    config = tmp_path / "pathomch.yaml"
    config.write_text(
        "data_dir: out\nduckdb_path: out/p.duckdb\n"
        "tiling: {magnification: 20, tile_px: 64, workers: 1}\ntraining: {input_px: 16}\n"
        "cohorts:\n  brca:\n    slides_dir: slides\n    mrna: mrna.tsv\n    mirna: mirna.csv\n"
        "    traits: [MKI67, miR-17-5p]\n"
    )
    cfg = load_config(config)
    return cfg, slides, TableStore(cfg.tables_dir, cfg.duckdb_path)


def slide_row(store) -> dict:
    return store.read("slides").set_index("slide_id").loc[SID].to_dict()


def test_a_slide_replaced_while_it_is_tiled_is_tiled_again_with_the_new_content(deployment, tmp_path):
    cfg, slides, store = deployment
    path = slides / f"{SID}.svs"
    write_pyramid(path, tissue(1, 4, 4), "aperio20")  # 16 tiles
    other = tmp_path / "other.svs"
    write_pyramid(other, tissue(2, 4, 6), "aperio20")  # 24 tiles
    replaced = []

    def progress(done, total, res):  # the slide was read; its file is replaced before the run takes its tiles
        if not replaced:
            os.replace(other, path)
            replaced.append(res.slide_id)

    log = Log()
    out = tile_partitions(cfg, store, [KEY], log, progress)
    assert out.retiled == 1 and any("changed while it was tiled" in line for line in log.lines)
    row = slide_row(store)
    assert row["status"] == "ok" and row["n_tiles"] == 24  # the new content's tiles, not the old content's 16
    assert row["file_fingerprint"] == content_fingerprint(path)
    assert len(store.read("tiles", "slide_id = ?", [SID])) == 24
    assert tile_partitions(cfg, store, [KEY], Log()).reused == 1  # recorded with the content it tiled


def test_a_slide_that_keeps_changing_is_an_error_without_tiles(deployment, tmp_path):
    cfg, slides, store = deployment
    path = slides / f"{SID}.svs"
    versions = [tmp_path / f"v{i}.svs" for i in range(MAX_TILING_TRIES + 1)]
    for i, v in enumerate(versions):
        write_pyramid(v, tissue(10 + i, 4, 4), "aperio20")
    shutil.copy(versions[0], path)
    writes = iter(versions[1:])

    def progress(done, total, res):  # a copy still running: new bytes after every read
        shutil.copy(next(writes), path)

    out = tile_partitions(cfg, store, [KEY], Log(), progress)
    assert out.retiled == MAX_TILING_TRIES - 1
    row = slide_row(store)
    assert row["status"] == "error" and "changed while it was tiled" in row["error"] and str(path) in row["error"]
    assert store.read("tiles", "slide_id = ?", [SID]).empty
    assert not layout.tile_file(cfg, "brca", SID).exists()
    again = tile_partitions(cfg, store, [KEY], Log())  # the copy is over: the next run tiles it
    assert again.reused == 0 and slide_row(store)["status"] == "ok"


def test_reuse_follows_the_content_not_the_mtime(deployment, tmp_path):
    cfg, slides, store = deployment
    path = slides / f"{SID}.svs"
    write_pyramid(path, tissue(1, 4, 4), "aperio20")
    tile_partitions(cfg, store, [KEY], Log())
    first = slide_row(store)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touch (rsync without -t, a restore)
    assert tile_partitions(cfg, store, [KEY], Log()).reused == 1
    # other content put in its place with the recorded size and mtime: stat alone would reuse the old tiles
    write_pyramid(tmp_path / "b.svs", tissue(5, 4, 4), "aperio20")
    data = bytearray((tmp_path / "b.svs").read_bytes())
    data = data[: first["file_size"]] + bytes(max(0, first["file_size"] - len(data)))
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, int(first["file_mtime_ns"])))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (first["file_size"], first["file_mtime_ns"])
    out = tile_partitions(cfg, store, [KEY], Log())
    assert out.reused == 0 and slide_row(store)["file_fingerprint"] != first["file_fingerprint"]


def test_tile_file_digest_is_its_content(deployment, tmp_path):
    """Two slides with the same number of tiles but other pixels: different tile digests; the same slide
    tiled again: the same digest (the tile file is written deterministically)."""
    cfg, slides, store = deployment
    write_pyramid(slides / f"{SID}.svs", tissue(1, 4, 4), "aperio20")
    sid2 = "TCGA-AA-0002-01Z-00-DX1"
    write_pyramid(slides / f"{sid2}.svs", tissue(2, 4, 4), "aperio20")
    tile_partitions(cfg, store, [KEY, f"brca/{sid2}"], Log())
    rows = store.read("slides").set_index("slide_id")
    assert rows.n_tiles[SID] == rows.n_tiles[sid2] == 16
    assert rows.tiles_digest[SID] != rows.tiles_digest[sid2]
    store.delete("slides", KEY)
    tile_partitions(cfg, store, [KEY], Log())
    assert slide_row(store)["tiles_digest"] == rows.tiles_digest[SID]


def test_stored_predictions_of_other_content_with_the_same_tile_count_are_never_reused(deployment, tmp_path):
    """Slide B copied over slide A (16 tiles each) and A re-tiled: A's ensemble probabilities are B's, computed
    by the member model on A's new tile file, not A's stored ones (issue 30, failure 2)."""
    import json

    import keras

    from pathomch_assets.predictions import MemberModels, prediction_frame
    from pathomch_assets.training import predict_files

    cfg, slides, store = deployment
    sid_b = "TCGA-AA-0002-01Z-00-DX1"
    a, b = slides / f"{SID}.svs", slides / f"{sid_b}.svs"
    write_pyramid(a, tissue(1, 4, 4), "aperio20")
    write_pyramid(b, np.clip(tissue(2, 4, 4).astype(int) + 50, 0, 255).astype(np.uint8), "aperio20")  # brighter
    tile_partitions(cfg, store, [KEY, f"brca/{sid_b}"], Log())
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, "sigmoid")]
    )
    model.layers[-1].set_weights([np.full((3, 1), 0.02), np.array([-2.0])])  # brightness -> probability
    trait, member = "MKI67", "round_0"
    folder = layout.model_dir(cfg, "brca", trait, member)
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    layout.ensemble_file(cfg, "brca", trait).write_text(json.dumps({"members": [member]}))
    rows = store.read("slides").sort_values("slide_id").reset_index(drop=True)
    files = [str(layout.tile_file(cfg, "brca", s)) for s in rows.slide_id]
    tiles = store.read("tiles").sort_values(["slide_id", "idx"])
    pos = {s: g[["col", "row"]].reset_index(drop=True) for s, g in tiles.groupby("slide_id")}
    preds = prediction_frame(pos, rows, predict_files(model, files, 16))
    path = layout.predictions_file(cfg, "brca", trait, member)
    path.parent.mkdir(parents=True)
    preds.to_parquet(path, index=False)
    stored = {s: g.p.to_numpy() for s, g in preds.groupby("slide_id")}
    assert not np.allclose(stored[SID], stored[sid_b])

    digest = rows.set_index("slide_id").tiles_digest
    p, ran = MemberModels(cfg, "brca").probabilities(trait, SID, 16, digest[SID])
    assert not ran and np.array_equal(p[0], stored[SID])  # unchanged content: stored predictions reused
    shutil.copy(b, a)  # B over A: the same 16 tiles, other content
    tile_partitions(cfg, store, [KEY], Log())
    new = slide_row(store)["tiles_digest"]
    assert new == digest[sid_b] != digest[SID]
    p, ran = MemberModels(cfg, "brca").probabilities(trait, SID, 16, new)
    assert ran and np.allclose(p[0], stored[sid_b], atol=1e-6)
    # predictions stored before digests were kept are not trusted either
    preds.drop(columns="tiles_digest").to_parquet(path, index=False)
    assert MemberModels(cfg, "brca").probabilities(trait, sid_b, 16, digest[sid_b])[1]
