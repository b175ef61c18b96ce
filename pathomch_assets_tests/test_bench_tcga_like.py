"""bench/tcga_like.py's scoring of tile QC against the TCGA-like family's truth grid (512 px cells at 20x)."""

import pandas as pd

from bench.tcga_like import cells_per_tile, qc_table, score_qc


def truth():
    # one slide, 2 x 2 truth cells: (0,0) clean tissue with MKI67 planted, (1,0) inked tissue,
    # (0,1) blurred tissue, (1,1) background with a trace of ink
    artifacts = pd.DataFrame(
        {
            "slide_id": ["s"] * 4,
            "col": [0, 1, 0, 1],
            "row": [0, 0, 1, 1],
            "tissue": [1, 1, 1, 0],
            "pen": [0.0, 0.4, 0.0, 0.01],
            "blurred": [0, 0, 1, 0],
        }
    )
    planted = pd.DataFrame(
        {"slide_id": ["s"] * 2, "col": [0, 0], "row": [0, 0], "trait": ["MKI67", "FOXC1"], "planted_on": [1, 0]}
    )
    return artifacts, planted


def test_tiles_map_to_the_truth_cell_they_lie_in_at_each_tiling():
    assert cells_per_tile(5, 128) == 1.0 and cells_per_tile(10, 128) == 0.5 and cells_per_tile(20, 256) == 0.5
    artifacts, planted = truth()
    # 10x / 128 px: a 4 x 4 tile grid over the 2 x 2 cells; one tile outside the truth grid
    tiles = pd.DataFrame([(c, r) for r in range(4) for c in range(4)] + [(4, 0)], columns=["col", "row"]).assign(
        slide_id="s", idx=range(17), qc=None
    )
    s = score_qc(tiles, artifacts, planted, cells_per_tile(10, 128)).set_index(["col", "row"])
    assert s.loc[(1, 1), "category"] == "clean" and s.loc[(1, 1), "planted_MKI67"]
    assert not s.loc[(1, 1), "planted_FOXC1"]
    assert s.loc[(2, 1), "category"] == "ink" and s.loc[(3, 0), "pen"] == 0.4
    assert s.loc[(0, 3), "category"] == "blurred" and not s.loc[(0, 3), "planted_MKI67"]
    assert s.loc[(3, 3), "category"] == "trace_ink" and s.loc[(3, 3), "tissue"] == 0
    assert s.loc[(4, 0), "category"] == "off_truth"
    assert s["category"].value_counts().to_dict() == {
        "clean": 4,
        "ink": 4,
        "blurred": 4,
        "trace_ink": 4,
        "off_truth": 1,
    }
    # a higher pen level moves the inked cell's tiles to trace ink
    assert (score_qc(tiles, artifacts, planted, 0.5, pen_level=0.5)["category"] == "ink").sum() == 0


def test_qc_table_counts_tiles_kept_with_qc_off_and_on():
    artifacts, planted = truth()
    tiles = pd.DataFrame({"slide_id": ["s"] * 3, "col": [0, 1, 0], "row": [0, 0, 1]})
    off = score_qc(tiles.assign(idx=[0, 1, 2], qc=None), artifacts, planted, 1.0)
    on = score_qc(tiles.assign(idx=[0, None, None], qc=[None, "pen", "blur"]), artifacts, planted, 1.0)
    rows = {r["tiles"]: r for r in qc_table(off, on)}
    ink = rows["ink over tissue"]
    assert (ink["tiled_qc_off"], ink["kept_qc_on"], ink["dropped_qc_on"], ink["reasons"]) == (1, 0, 1, {"pen": 1})
    assert rows["blurred"]["reasons"] == {"blur": 1} and rows["blurred"]["dropped_share"] == 1.0
    clean = rows["clean, MKI67 planted"]
    assert (clean["tiled_qc_off"], clean["kept_qc_on"], clean["dropped_share"]) == (1, 1, 0.0)
    assert rows["clean, nothing planted"]["tiled_qc_off"] == 0 and rows["ink over background"]["dropped_share"] is None
