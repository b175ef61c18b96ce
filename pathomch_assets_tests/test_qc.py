"""Artifact QC per tile (issue 28) on the 80 shipped real TCGA tiles: pen strokes, blur, dark (folded) tissue,
and QC-dropped tiles end to end through ``tile_slide`` on real-format pyramids.

Pen strokes are drawn as ink is seen on a slide: light passes the tissue and the ink, so the ink's
transmittance multiplies the pixels (Beer-Lambert) over tissue and over glass alike.
"""

import struct

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from pathomch_assets.cartography import QC_DROPPED_RGB, Cartography, heterogeneity_image, to_geojson
from pathomch_assets.config import PathomchConfig, QcConfig
from pathomch_assets.demo_cohort import compose_slide, load_source_tiles, write_pyramid
from pathomch_assets.qc import QcParams, colour_index, dropped_tiles, ink_mask, kept_tiles, tile_qc
from pathomch_assets.tiling import TilingParams, tile_slide

from .test_tiling import plan

#: ink transmittance per channel (R, G, B) of common markers; over glass the colours are 255 x these
INKS = {"green": (0.25, 0.75, 0.45), "blue": (0.25, 0.45, 0.9), "black": (0.08, 0.08, 0.1)}


@pytest.fixture(scope="module")
def tiles():
    return [t for ts in load_source_tiles().values() for t in ts]


def stroke(tile: np.ndarray, ink, width: int = 40, where: np.ndarray | None = None) -> np.ndarray:
    """``tile`` with a diagonal marker stroke ``width`` px wide (optionally only where ``where`` is True)."""
    h, w = tile.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    band = np.abs(xx - yy) < width / 2
    if where is not None:
        band &= where
    out = tile.astype(np.float64)
    out[band] *= np.asarray(ink)
    return out.round().astype(np.uint8)


def test_clean_real_tiles_are_not_flagged(tiles):
    """False-positive rate on the shipped tiles: 0 of 80 (docs/qc-and-stain.md), each measure with room."""
    res = [tile_qc(t, QcParams()) for t in tiles]
    assert len(res) == 80
    assert [r[4] for r in res] == [None] * 80
    pen, blur, dark = (np.array([r[k] for r in res]) for k in (0, 1, 3))
    assert pen.max() < QcParams().max_pen / 4 and blur.min() > 3 * QcParams().min_blur
    assert dark.max() < QcParams().max_dark / 2


@pytest.mark.parametrize("ink", sorted(INKS))
def test_strokes_over_tissue_are_flagged(tiles, ink):
    flagged = [tile_qc(stroke(t, INKS[ink]), QcParams())[4] for t in tiles]
    assert all(f is not None and "pen" in f for f in flagged), flagged


@pytest.mark.parametrize("ink", sorted(INKS))
def test_strokes_over_background_are_flagged(tiles, ink):
    """Half tissue, half glass, the stroke on the glass half only (what tiles next to pen-marked tissue are)."""
    for t in tiles[::8]:
        half = t.copy()
        half[:, 256:] = 255
        clean = tile_qc(half, QcParams())
        assert clean[4] is None, clean
        glass = np.zeros(half.shape[:2], bool)
        glass[:, 256:] = True
        marked = tile_qc(stroke(half, INKS[ink], width=60, where=glass), QcParams())
        assert marked[4] == "pen", marked


def test_ink_colours_and_stain_colours():
    """Marker colours over glass are ink; hematoxylin, eosin, erythrocytes, dark nuclei and glass are not."""
    inks = np.array([[[255 * v for v in c] for c in INKS.values()] + [[130, 20, 40]]], np.uint8)  # + dark red
    assert ink_mask(inks).all()
    stains = np.array([[[95, 60, 150], [230, 150, 200], [200, 60, 80], [60, 35, 95], [255, 255, 255], [240, 240, 240]]])
    assert not ink_mask(stains.astype(np.uint8)).any()


def test_rgbx_and_rgb_give_the_same_measures(tiles):
    """The tiler hands RGBX cells (X = 255) on the scaled path and RGB tiles elsewhere."""
    for t in tiles[::10]:
        rgbx = np.ascontiguousarray(np.dstack([t, np.full(t.shape[:2], 255, np.uint8)]))
        np.testing.assert_array_equal(colour_index(rgbx), colour_index(t))
        assert tile_qc(rgbx, QcParams()) == tile_qc(t, QcParams())


def test_blur_is_found_on_blurred_real_tiles(tiles):
    """A Gaussian blur of 1.5 px (about 0.75 um at 20x) is flagged on every tile; the originals are not."""
    for t in tiles:
        sharp = tile_qc(t, QcParams())
        blurred = tile_qc(ndimage.gaussian_filter(t, (1.5, 1.5, 0)), QcParams())
        assert not sharp[2] and blurred[2] and blurred[4] == "blur", (sharp, blurred)
        assert blurred[1] < sharp[1] / 4


def test_folded_tissue_is_dark(tiles):
    """Three layers of tissue (optical density x 3) on the shipped tiles: most flagged dark, darker than one."""

    def fold(t, layers):
        return np.clip(255 * np.exp(layers * np.log((t + 1.0) / 256)) - 1, 0, 255).astype(np.uint8)

    res = [(tile_qc(t, QcParams()), tile_qc(fold(t, 3), QcParams())) for t in tiles]
    assert all(folded[3] > one[3] for one, folded in res)
    assert sum("dark" in (folded[4] or "") for _, folded in res) >= 0.9 * len(tiles)


def test_tiny_tiles_are_not_measured_for_blur():
    assert np.isnan(tile_qc(np.full((8, 8, 3), 120, np.uint8), QcParams())[1])


def test_qc_settings_are_in_the_tiling_digest():
    cfg = PathomchConfig.model_validate({"data_dir": "/tmp/x", "duckdb_path": "/tmp/x/d.duckdb", "cohorts": {
        "c": {"slides_dir": "/tmp", "mrna": "/tmp/m.tsv", "traits": ["ESR1"]}}})  # fmt: skip
    params = TilingParams.from_config(cfg)
    assert params.qc == QcParams()  # on by default
    off = TilingParams.from_config(cfg.model_copy(update={"qc": QcConfig(enabled=False)}))
    stricter = TilingParams.from_config(cfg.model_copy(update={"qc": QcConfig(max_pen=0.01)}))
    assert len({params.digest(), off.digest(), stricter.digest()}) == 3
    assert off.qc is None
    with pytest.raises(ValueError):
        QcConfig(max_pen=0)


def test_kept_and_dropped_tiles():
    frame = pd.DataFrame(
        {"slide_id": ["a", "a", "a", "b"], "col": [0, 1, 2, 0], "row": [0, 0, 0, 1],
         "idx": pd.array([1, None, 0, 0], "Int32"), "qc": [None, "pen", None, None]}
    )  # fmt: skip
    kept = kept_tiles(frame)
    assert kept[["slide_id", "col"]].values.tolist() == [["a", 2], ["a", 0], ["b", 0]]
    assert dropped_tiles(frame)[["col", "qc"]].values.tolist() == [[1, "pen"]]
    assert dropped_tiles(frame.drop(columns="qc")).empty  # tables written before QC


def test_maps_and_geojson_show_qc_dropped_tiles():
    carto = Cartography(["A"], np.array([[[1, 0]]], np.uint8), np.array([[True, True]]))
    dropped = pd.DataFrame({"col": [3], "row": [1], "qc": ["pen"], "pen": [0.3], "blur": [900.0], "dark": [0.01]})
    img = heterogeneity_image(carto, dropped)
    assert img.shape[:2] == (2, 4) and tuple(img[1, 3]) == QC_DROPPED_RGB
    gj = to_geojson(carto, 1024, "s", dropped)
    qc = [f for f in gj["features"] if f["properties"]["classification"]["name"] == "QC dropped"]
    assert len(gj["features"]) == 3 and len(qc) == 1
    assert qc[0]["properties"]["qc"] == "pen" and qc[0]["properties"]["measurements"]["pen"] == 0.3
    assert qc[0]["geometry"]["coordinates"][0][0] == [3 * 1024.0, 1024.0]


def tfrecord_payloads(path) -> list[bytes]:
    """The records of a TFRecord file (framing: length, its CRC, payload, its CRC)."""
    data, out, pos = open(path, "rb").read(), [], 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        out.append(data[pos + 12 : pos + 12 + n])
        pos += 16 + n
    return out


@pytest.mark.parametrize("style", ["aperio20", "aperio40_power"])  # the band path (RGB) and the scaled path (RGBX)
def test_tile_slide_drops_pen_marked_tiles_end_to_end(tmp_path, style):
    """A real-format pyramid whose tissue in two grid cells carries a green marker stroke: those tiles keep
    their ``tiles`` rows (``qc`` pen, no ``idx``) and are not in the TFRecord; every other tile's record is
    byte for byte the record written without QC."""
    from pathomch_assets.tilestore import read_tiles

    scale = 2 if style == "aperio40_power" else 1
    p = plan(style, rows=3, cols=4, seed=3)
    p.tissue = np.ones((3, 4), bool).tolist()
    p.edge_white = np.zeros((3, 4)).tolist()
    base = compose_slide(p, load_source_tiles(), scale)
    px = 512 * scale
    for r, c in [(0, 1), (2, 2)]:  # marker strokes over the tissue of two cells
        base[r * px : (r + 1) * px, c * px : (c + 1) * px] = stroke(
            base[r * px : (r + 1) * px, c * px : (c + 1) * px], INKS["green"], width=60 * scale
        )
    path = tmp_path / "slide.svs"
    write_pyramid(path, base, style)
    with_qc = tile_slide("c", "s", path, tmp_path / "qc.tfrecord", TilingParams(20, 512, qc=QcParams()))
    without = tile_slide("c", "s", path, tmp_path / "all.tfrecord", TilingParams(20, 512))
    assert with_qc.status == without.status == "ok", (with_qc.error, without.error)
    t = with_qc.tiles
    assert len(t) == len(without.tiles) == 12
    dropped = t[t["qc"].notna()]
    assert sorted(zip(dropped["row"], dropped["col"])) == [(0, 1), (2, 2)]
    assert (dropped["qc"] == "pen").all() and dropped["idx"].isna().all() and (dropped["pen"] > 0.05).all()
    kept = kept_tiles(t.assign(slide_id="s"))
    assert kept["idx"].tolist() == list(range(10)) and with_qc.n_kept == 10 and with_qc.n_qc_dropped == 2
    _, positions = read_tiles(tmp_path / "qc.tfrecord")
    assert positions.tolist() == kept[["col", "row"]].values.tolist()
    all_records = tfrecord_payloads(tmp_path / "all.tfrecord")
    qc_records = tfrecord_payloads(tmp_path / "qc.tfrecord")
    assert len(qc_records) == 10 and set(qc_records) < set(all_records)
    assert with_qc.stain["status"] == "ok" and with_qc.stain["n_tiles_sampled"] == 10


def test_qc_and_tiling_params_are_the_configuration_field_by_field():
    """One home for each default (config.py), and each setting lands in the parameter of its own name."""
    from dataclasses import fields

    from pathomch_assets.config import StainConfig, TilingConfig

    assert QcParams() == QcParams.from_config(QcConfig())
    assert QcParams.from_config(QcConfig(enabled=False)) is None
    changed = {"max_pen": 0.07, "min_blur": 90.0, "max_dark": 0.4, "dark_level": 70, "black_level": 20}
    changed |= {"ink_saturation": 0.5, "stride": 4}
    assert QcParams.from_config(QcConfig(**changed)) == QcParams(**changed)
    shared = [f.name for f in fields(TilingParams) if f.name in TilingConfig.model_fields]
    assert len(shared) == 8
    assert {n: getattr(TilingParams(), n) for n in shared} == {n: getattr(TilingConfig(), n) for n in shared}
    assert (TilingParams().stain_normalize, TilingParams().stain_sample_tiles) == (
        StainConfig().normalize,
        StainConfig().sample_tiles,
    )
    cfg = PathomchConfig.model_validate(
        {
            "data_dir": "/tmp/x",
            "duckdb_path": "/tmp/x/d.duckdb",
            "cohorts": {"c": {"slides_dir": "/tmp", "mrna": "/tmp/m.tsv", "traits": ["ESR1"]}},
            "tiling": {"magnification": 10, "tile_px": 256, "background_threshold": 200, "jpeg_quality": 80,
                       "max_background_fraction": 0.4, "magnification_tolerance": 0.1, "threads_per_slide": 3,
                       "reader": "openslide", "scaled_decode": False},
            "qc": {"max_pen": 0.07},
        }
    )  # fmt: skip
    p = TilingParams.from_config(cfg)
    assert (p.magnification, p.tile_px, p.background_threshold, p.jpeg_quality) == (10, 256, 200, 80)
    assert (p.max_background_fraction, p.magnification_tolerance, p.threads) == (0.4, 0.1, 3)
    assert (p.reader, p.scaled_decode, p.qc) == ("openslide", False, QcParams(max_pen=0.07))
