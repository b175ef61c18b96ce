"""Cartography tensors, heterogeneity map images and QuPath GeoJSON."""

import json

import numpy as np
import pandas as pd
import pytest

from pathomch_assets.cartography import (
    BACKGROUND_RGB,
    NEGATIVE_RGB,
    Cartography,
    build_cartography,
    combination_colours,
    combination_names,
    heterogeneity_image,
    heterogeneity_png,
    plot_heterogeneity_map,
    to_geojson,
    write_geojson,
)


def calls_frame():
    rows = []
    for (c, r), (a, b) in {(0, 0): (1, 0), (1, 0): (0, 1), (1, 1): (1, 1), (2, 1): (0, 0)}.items():
        rows += [(c, r, "A", a), (c, r, "B", b)]
    return pd.DataFrame(rows, columns=["col", "row", "trait", "call"])


def test_tensor_mask_and_round_trip(tmp_path):
    carto = build_cartography(calls_frame(), ["A", "B"])
    assert carto.tensor.shape == (2, 2, 3)
    assert carto.mask.tolist() == [[True, True, False], [False, True, True]]
    assert carto.tensor[0].tolist() == [[1, 0, 0], [0, 1, 0]]
    assert carto.masked()[1, 0, 2] is np.ma.masked  # no tissue
    again = Cartography.load(carto.save(tmp_path / "s.npz"))
    assert again.traits == ["A", "B"] and (again.tensor == carto.tensor).all() and (again.mask == carto.mask).all()
    with np.load(tmp_path / "s.npz") as z:  # plain numpy reads it
        assert set(z.files) == {"tensor", "mask", "traits"}


def test_missing_call_is_an_error():
    with pytest.raises(ValueError, match="lack a call"):
        build_cartography(calls_frame().iloc[:-1], ["A", "B"])


def test_map_colours_each_combination():
    carto = build_cartography(calls_frame(), ["A", "B"])
    img = heterogeneity_image(carto)
    colours = combination_colours(2)
    assert combination_names(["A", "B"]) == ["A", "B", "A+B"]
    assert tuple(img[0, 0]) == tuple(colours[0]) and tuple(img[0, 1]) == tuple(colours[1])
    assert tuple(img[1, 1]) == tuple(colours[2]) and tuple(img[1, 2]) == NEGATIVE_RGB
    assert tuple(img[0, 2]) == BACKGROUND_RGB
    assert len({tuple(c) for c in combination_colours(4)}) == 15  # N = 4: 15 distinct colours


def test_map_plot_has_a_legend():
    import matplotlib.pyplot as plt

    ax = plot_heterogeneity_map(build_cartography(calls_frame(), ["A", "B"]), "slide", 0.5)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["A", "B", "A+B", "negative"]
    plt.close(ax.figure)


def test_geojson_for_qupath(tmp_path):
    carto = build_cartography(calls_frame(), ["A", "B"])
    gj = to_geojson(carto, 1024, name="s")
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 4
    f = next(f for f in gj["features"] if f["properties"]["name"].endswith("col 1 row 1"))
    assert f["geometry"]["coordinates"][0][0] == [1024.0, 1024.0]
    assert f["geometry"]["coordinates"][0][2] == [2048.0, 2048.0]
    assert f["properties"]["classification"]["name"] == "A+B" and f["properties"]["measurements"] == {"A": 1, "B": 1}
    assert json.loads(write_geojson(carto, tmp_path / "s.geojson", 1024, "s").read_text()) == json.loads(json.dumps(gj))


def test_png_map_with_legend(tmp_path):
    from PIL import Image

    carto = build_cartography(calls_frame(), ["A", "B"])
    img = np.asarray(Image.open(heterogeneity_png(carto, tmp_path / "m.png", cell_px=10, title="s")))
    colours = combination_colours(2)
    assert tuple(img[16 + 5, 5]) == tuple(colours[0])  # tile (row 0, col 0): A only
    assert tuple(img[16 + 15, 15]) == tuple(colours[2])  # tile (row 1, col 1): A+B
    assert tuple(img[16 + 5, 25]) == BACKGROUND_RGB  # no tissue
    legend = img[:, 3 * 10 :]
    for c in list(colours) + [NEGATIVE_RGB]:  # every combination has a legend swatch
        assert (legend.reshape(-1, 3) == c).all(axis=1).any()


def test_set_results_shares_sum_to_one_and_soft_calls_from_probabilities():
    from pathomch_assets.cartography import set_results, soft_calls
    from pathomch_assets.config import EnsembleConfig

    class Cfg:
        ensemble = EnsembleConfig()

    calls = calls_frame()
    carto = build_cartography(calls, ["A", "B"])
    soft, taus = soft_calls(Cfg, calls, carto)  # no probabilities: the hard calls, robust HTI = HTI
    assert (soft == carto.tensor).all() and taus == 0.5
    calls["p"] = calls["call"] * 0.8 + 0.1
    calls.loc[(calls.col == 0) & (calls.trait == "A"), "p"] = 0.55  # an unsure positive call
    soft, taus = soft_calls(Cfg, calls, carto)
    assert soft[0, 0, 0] == pytest.approx(0.55) and ((soft >= 0.5) == carto.tensor.astype(bool)).all()
    hti, stats, combos = set_results("c", "TCGA-XX-0001-01Z-00-DX1", ["A", "B"], carto, soft, taus)
    assert hti["hti"] == stats["hti"] == pytest.approx(1.0)  # A, B, A+B once each
    assert stats["ci_low"] <= stats["hti"] <= stats["ci_high"] and 0 <= stats["p_spatial"] <= 1
    assert combos["share"].sum() == pytest.approx(1.0) and combos["tissue_share"].sum() == pytest.approx(1.0)
    assert combos.set_index("combination")["n_tiles"].to_dict() == {"none": 1, "A": 1, "B": 1, "A+B": 1}
    assert combos["share_robust"].sum() == pytest.approx(1.0)


CONFIG = """\
data_dir: out
duckdb_path: out/pathomch.duckdb
seed: 1
cohorts:
  brca:
    slides_dir: slides
    mrna: mrna.tsv
    traits: [A, B, C]
    survival_pairs: [[A, B]]
    hti_sets: [[A, C], [A, B, C]]
tiling: {magnification: 20, tile_px: 16, workers: 1}
"""


@pytest.fixture
def deployment(tmp_path, monkeypatch):
    """A one-cohort deployment (traits A, B, C) with one slide's ensemble calls written as scoring writes them."""
    from pathomch_assets import layout
    from pathomch_assets.config import load_config
    from pathomch_assets.tables import TableStore

    (tmp_path / "slides").mkdir()
    (tmp_path / "mrna.tsv").touch()
    path = tmp_path / "pathomch.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv("PATHOMCH_CONFIG", str(path))
    cfg = load_config(path)
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    sid = "TCGA-XX-0001-01Z-00-DX1"
    store.write(
        "slides",
        f"brca/{sid}",
        pd.DataFrame(
            [
                {
                    "cohort": "brca",
                    "slide_id": sid,
                    "patient_id": sid[:12],
                    "path": "slides/s.svs",
                    "status": "ok",
                    "error": None,
                    "base_magnification": 20.0,
                }
            ]
        ),
    )
    rng = np.random.default_rng(0)
    calls = pd.DataFrame(
        [(c, r, t, bool(rng.random() < 0.5)) for c in range(4) for r in range(3) for t in "ABC"],
        columns=["col", "row", "trait", "call"],
    )
    calls["votes"], calls["p"] = calls["call"] * 3, calls["call"] * 0.8 + 0.1
    out = layout.slide_calls_file(cfg, "brca", sid)
    out.parent.mkdir(parents=True, exist_ok=True)
    calls.to_parquet(out)
    return cfg, path, store, sid


def write_ensembles(cfg, traits):
    from pathomch_assets import layout

    for t in traits:
        f = layout.ensemble_file(cfg, "brca", t)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text('{"members": ["round_0"], "min_votes": 2, "threshold": 0.5}')


def test_trait_sets_leave_out_a_trait_without_an_ensemble(deployment):
    from pathomch_assets.maps import analysis_sets, trait_sets

    cfg, _, store, _ = deployment
    write_ensembles(cfg, ["A", "B", "C"])
    assert trait_sets(cfg, "brca", store) == ([["A", "B"], ["A", "C"], ["A", "B", "C"]], [], None)
    write_ensembles(cfg, [])
    (cfg.models_dir / "brca" / "B" / "ensemble.json").unlink()  # B's ensemble failed
    kept, dropped, note = trait_sets(cfg, "brca", store)
    assert kept == [["A", "C"]] and dropped == [["A", "B"], ["A", "B", "C"]]
    assert "B left out" in note and "ensemble.json missing" in note and "A+B, A+B+C" in note
    assert analysis_sets(cfg, "brca", store) == [["A", "C"]]


def test_a_trait_without_an_ensemble_does_not_stop_the_maps_of_the_others(deployment):
    """B's ensemble failed: the slide still gets its map (A, C) and the HTI of A+C; A+B is left out, named."""
    import dagster as dg

    from pathomch_assets import layout
    from pathomch_assets.definitions import build_definitions
    from pathomch_assets.partitions import slides_name
    from pathomch_assets.resources import PathomchResource

    cfg, path, store, sid = deployment
    write_ensembles(cfg, ["A", "C"])
    defs = build_definitions(cfg)
    carto_asset = next(a for a in defs.assets if dg.AssetKey(["brca", "slide_cartography"]) in a.keys)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(slides_name("brca"), [f"brca/{sid}"])
        result = dg.materialize(
            [carto_asset],
            partition_key=f"brca/{sid}",
            resources={"pathomch": PathomchResource(config_path=str(path))},
            instance=instance,
            selection=[carto_asset.key],
        )
    assert result.success
    meta = result.asset_materializations_for_node(carto_asset.node_def.name)[0].metadata
    assert "B left out" in meta["left_out"].value and "A+B" in meta["left_out"].value
    hti = store.read("hti")
    assert hti["traits"].tolist() == ["A+C"] and hti["slide_id"].tolist() == [sid]
    assert Cartography.load(layout.cartography_file(cfg, "brca", sid)).traits == ["A", "C"]
    assert layout.cartography_file(cfg, "brca", sid, "png").exists()


def test_hti_trait_sets_default_pair_is_the_best_two_that_feed_maps():
    """No survival pairs configured: the two traits that feed maps with the best ensemble test AUC (ties by name);
    a configured set with a gated or ensemble-less trait is dropped and named."""
    from types import SimpleNamespace

    from pathomch_assets.cartography import hti_trait_sets

    c = SimpleNamespace(traits=["A", "B", "C", "D"], survival_pairs=[], hti_sets=[["A", "C"], ["B", "D"]])
    test = pd.DataFrame({"trait": ["A", "B", "C", "D"], "auc": [0.7, 0.9, 0.95, 0.8]})
    kept, dropped, note = hti_trait_sets("brca", c, ["A", "B", "C"], ["A", "B"], test)
    assert kept == [["B", "A"]] and dropped == [["A", "C"], ["B", "D"]]
    assert "D left out: no usable ensemble" in note and "C left out by the validity gate" in note
    assert note.endswith("no map or HTI of A+C, B+D")
    c.survival_pairs = [["A", "C"]]  # configured: taken as is, and not repeated from hti_sets
    kept, dropped, note = hti_trait_sets("brca", c, ["A", "B", "C", "D"], ["A", "B", "C", "D"], test.iloc[0:0])
    assert (kept, dropped, note) == ([["A", "C"], ["B", "D"]], [], None)
