"""Tiling on real pyramidal slides built from TCGA tissue, checked against an independent count.

The independent count reads the TIFF pages with tifffile (not OpenSlide), downsamples with
PIL's reduce (not the tiler's resize) and counts background pixels per grid cell in numpy.
"""

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from pathomch_assets.demo_cohort import SlidePlan, compose_slide, load_source_tiles, write_pyramid
from pathomch_assets.tilestore import read_tiles
from pathomch_assets.tiling import TilingParams, rgba_to_rgb_on_white, tile_slide, tissue_fraction

from .conftest import OPENSLIDE


@pytest.fixture(scope="module")
def sources():
    return load_source_tiles()


def plan(style, rows=3, cols=4, seed=1):
    rng = np.random.default_rng(seed)
    tissue = rng.random((rows, cols)) < 0.7
    white = np.where(rng.random((rows, cols)) < 0.5, rng.choice([0.2, 0.6, 0.8], (rows, cols)), 0.0)
    return SlidePlan(
        "c",
        f"TCGA-AA-{seed:04d}-01Z-00-DX1",
        "s.svs",
        "TCGA-A1-A0SM-01Z-00-DX1",
        rows,
        cols,
        style,
        seed,
        tissue.tolist(),
        white.tolist(),
        {},
        {},
    )


def independent_count(path, page, factor, px, threshold=220, max_bg=0.5):
    """{(col, row): tissue fraction} from the raw TIFF page, PIL reduce, and numpy."""
    img = tifffile.imread(path, key=page)
    if factor > 1:
        img = np.asarray(Image.fromarray(img).reduce(factor))
    out = {}
    for r in range(img.shape[0] // px):
        for c in range(img.shape[1] // px):
            block = img[r * px : (r + 1) * px, c * px : (c + 1) * px]
            frac = 1 - np.all(block > threshold, axis=-1).mean()
            if frac >= 1 - max_bg:
                out[(c, r)] = frac
    return out


@pytest.mark.parametrize(
    "style,params,page,factor,px",
    [
        ("aperio20", TilingParams(20, 512), 0, 1, 512),  # paper settings, 20x slide: level 0 as is
        ("aperio40_power", TilingParams(20, 512), 0, 2, 512),  # 40x slide, no 20x level: 1024 px resized
        ("aperio20", TilingParams(5, 128), 1, 1, 128),  # demo settings: the 5x level, not level 0
        ("aperio40_power", TilingParams(5, 128), 1, 2, 128),  # demo settings, 40x slide: its 10x level halved
        ("generic_mpp", TilingParams(5, 128), 1, 1, 128),
    ],
)
def test_tile_counts_match_an_independent_count(tmp_path, sources, style, params, page, factor, px):
    p = plan(style)
    path = tmp_path / "slide.svs"
    write_pyramid(path, compose_slide(p, sources, 2 if style == "aperio40_power" else 1), style)
    res = tile_slide("c", "s", path, tmp_path / "s.tfrecord", params)
    assert res.status == "ok", res.error
    expected = independent_count(path, page, factor, px)
    got = {(r.col, r.row): r.tissue_fraction for r in res.tiles.itertuples()}
    assert set(got) == set(expected)
    assert all(abs(got[k] - expected[k]) < 0.02 for k in got)
    # partly blank edge tiles exist on both sides of the 50% rule
    kept = np.asarray(p.tissue) & (np.asarray(p.edge_white) < 0.5)
    assert len(got) == kept.sum()
    images, pos = read_tiles(tmp_path / "s.tfrecord")
    assert images.shape == (len(got), params.tile_px, params.tile_px, 3)
    assert [tuple(x) for x in pos] == list(got)


def test_tissue_fraction_uses_all_channels():
    tile = np.full((2, 2, 3), 255, np.uint8)
    tile[0, 0] = (230, 230, 100)  # blue channel below threshold: tissue
    tile[0, 1] = (221, 221, 221)  # all above 220: background
    assert tissue_fraction(tile) == 0.25


def test_transparent_pixels_become_white():
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 1] = (10, 20, 30, 255)
    assert rgba_to_rgb_on_white(rgba).tolist() == [[[255, 255, 255], [10, 20, 30]]]


def test_slide_with_no_tissue_is_reported(tmp_path):
    path = tmp_path / "blank.svs"
    write_pyramid(path, np.full((1024, 1024, 3), 250, np.uint8), "aperio20")
    res = tile_slide("c", "blank", path, tmp_path / "b.tfrecord", TilingParams(20, 512))
    assert res.status == "no_tissue" and "blank.svs" in res.error
    assert not (tmp_path / "b.tfrecord").exists()


@pytest.mark.parametrize(
    "style,params",
    [
        ("aperio20", TilingParams(20, 512)),
        ("aperio40_power", TilingParams(20, 512)),  # 1024 px reads of level 0, resized
        ("aperio40_power", TilingParams(10, 256)),  # level 1 of a 40x slide (downsample 4)
        ("generic_mpp", TilingParams(5, 128, threads=2)),
    ],
)
def test_direct_tiff_reads_give_openslides_tiles_byte_for_byte(tmp_path, sources, style, params):
    """The exact path (``scaled_decode`` off): OpenSlide's pixels, byte for byte."""
    import dataclasses

    p = plan(style, seed=3)
    path = tmp_path / "slide.svs"
    write_pyramid(path, compose_slide(p, sources, 2 if style == "aperio40_power" else 1), style)
    params = dataclasses.replace(params, scaled_decode=False)
    direct = tile_slide("c", "s", path, tmp_path / "d.tfrecord", params)
    via_openslide = tile_slide("c", "s", path, tmp_path / "o.tfrecord", dataclasses.replace(params, reader="openslide"))
    assert (direct.info["reader"], via_openslide.info["reader"]) == ("tifffile", "openslide")
    assert len(direct.tiles) > 0
    pd.testing.assert_frame_equal(direct.tiles, via_openslide.tiles)
    assert (tmp_path / "d.tfrecord").read_bytes() == (tmp_path / "o.tfrecord").read_bytes()


@pytest.mark.parametrize("name", ["small.svs", "boxes.tiff"])
def test_direct_reads_match_openslide_on_real_slide_files(name):
    """Real Aperio (JPEG, YCbCr) and generic tiled TIFF files from OpenSlide's own test data."""
    import openslide

    from pathomch_assets.slides import slide_info
    from pathomch_assets.tiling import TiffLevelReader

    path = OPENSLIDE / name
    with openslide.OpenSlide(path) as slide:
        info = slide_info(slide, path, default_magnification=20)
        checked = 0
        for level, (w, h) in enumerate(info.level_dimensions):
            reader = TiffLevelReader.open(path, info, level)
            if reader is None:
                continue
            down = info.level_downsamples[level]
            for x, y, rw, rh in [(0, 0, w, h), (w // 3, h // 4, w // 2, h // 2)]:
                want = rgba_to_rgb_on_white(
                    np.asarray(slide.read_region((round(x * down), round(y * down)), level, (rw, rh)))
                )
                np.testing.assert_array_equal(reader.read(x, y, rw, rh), want)
            reader.close()
            checked += 1
    assert checked >= 1


# --------------------------------------------------------------------------- DCT-domain scaled decoding
#: stated tolerance of the scaled decode against the exact path (full decode + box resize), in grey levels
#: over all channels of real tissue: mean absolute difference, and the share of values off by more than 8
SCALED_MAD, SCALED_FAR, SCALED_FAR_SHARE = 1.0, 8, 0.001


def exact_reduced(exact: np.ndarray, f: int) -> np.ndarray:
    h, w = exact.shape[0] // f, exact.shape[1] // f
    return np.asarray(Image.fromarray(np.ascontiguousarray(exact)).resize((w, h), Image.Resampling.BOX))


def assert_within_tolerance(got: np.ndarray, want: np.ndarray) -> float:
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() <= SCALED_MAD, diff.mean()
    assert (diff > SCALED_FAR).mean() <= SCALED_FAR_SHARE, np.percentile(diff, [99, 99.9, 100])
    return float(diff.mean())


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_scaled_decode_stays_within_tolerance_of_the_exact_path_on_real_tissue(tmp_path, sources, factor):
    """A 40x Aperio-style SVS of real TCGA tissue (JPEG tiles): every level, decoded at 1/factor."""
    import openslide

    from pathomch_assets.slides import slide_info
    from pathomch_assets.tiling import TiffLevelReader

    path = tmp_path / "slide.svs"
    write_pyramid(path, compose_slide(plan("aperio40_power", rows=4, cols=5, seed=3), sources, 2), "aperio40_power")
    with openslide.OpenSlide(path) as slide:
        info = slide_info(slide, path)
    for level, (w, h) in enumerate(info.level_dimensions[:2]):
        scaled, exact = TiffLevelReader.open(path, info, level, factor), TiffLevelReader.open(path, info, level)
        assert (scaled.factor, exact.factor) == (factor, 1)
        w, h = w // 256 * 256, h // 256 * 256
        x, y = 256, 0  # a region that does not start at the first stored tile
        got = scaled.read(x, y, w - x, h - y)
        want = exact_reduced(exact.read(x, y, w - x, h - y), factor)
        assert got.shape == want.shape == ((h - y) // factor, (w - x) // factor, 3)
        tissue = np.min(want, axis=-1) <= 220
        assert tissue.mean() > 0.3  # the comparison is on real tissue, not white
        assert_within_tolerance(got[tissue], want[tissue])
        scaled.close(), exact.close()


def test_scaled_decode_of_a_real_aperio_file_matches_openslide():
    """OpenSlide's own Aperio test file: abbreviated JPEG streams (tables in the JPEGTables tag), RGB
    photometric with neither JFIF nor Adobe marker, which libjpeg alone would decode as YCbCr."""
    import openslide
    import tifffile

    from pathomch_assets.slides import slide_info
    from pathomch_assets.tiling import ScaledJpeg, TiffLevelReader

    path = OPENSLIDE / "small.svs"
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].jpegtables is not None and tif.pages[0].photometric == 2
        assert b"\xff\xee\x00\x0eAdobe" in ScaledJpeg.for_page(tif.pages[0], 2).prefix  # transform 0: RGB
    with openslide.OpenSlide(path) as slide:
        info = slide_info(slide, path, default_magnification=20)
        w, h = info.level_dimensions[0]
        w, h = w // 8 * 8, h // 8 * 8
        want = rgba_to_rgb_on_white(np.asarray(slide.read_region((0, 0), 0, (w, h))))
    for factor in (2, 4, 8):
        reader = TiffLevelReader.open(path, info, 0, factor)
        assert reader.factor == factor
        assert_within_tolerance(reader.read(0, 0, w, h), exact_reduced(want, factor))
        reader.close()


def test_tiling_with_scaled_decode_keeps_the_tiles_and_stays_within_tolerance(tmp_path, sources):
    """40x slide, no 20x level, tiled at 20x / 512 px: the same tiles as the exact path, pixels within tolerance."""
    import dataclasses

    path = tmp_path / "slide.svs"
    write_pyramid(path, compose_slide(plan("aperio40_power", seed=5), sources, 2), "aperio40_power")
    params = TilingParams(20, 512, threads=2)
    scaled = tile_slide("c", "s", path, tmp_path / "scaled.tfrecord", params)
    exact = tile_slide("c", "s", path, tmp_path / "exact.tfrecord", dataclasses.replace(params, scaled_decode=False))
    assert (scaled.info["decode_scale"], exact.info["decode_scale"]) == (0.5, 1.0)
    assert len(scaled.tiles) > 0
    pd.testing.assert_frame_equal(scaled.tiles[["col", "row", "idx"]], exact.tiles[["col", "row", "idx"]])
    assert np.abs(scaled.tiles.tissue_fraction - exact.tiles.tissue_fraction).max() < 0.01
    assert params.digest() != dataclasses.replace(params, scaled_decode=False).digest()
    a, _ = read_tiles(tmp_path / "scaled.tfrecord")
    b, _ = read_tiles(tmp_path / "exact.tfrecord")
    assert_within_tolerance(a, b)  # after both went through the JPEG encoder


def test_scaled_decode_is_not_used_where_it_does_not_apply(tmp_path, sources):
    """A 20x slide at 20x (no reduction) and OpenSlide reads are never scaled."""
    path = tmp_path / "slide.svs"
    write_pyramid(path, compose_slide(plan("aperio20"), sources, 1), "aperio20")
    assert tile_slide("c", "s", path, tmp_path / "a.tfrecord", TilingParams(20, 512)).info["decode_scale"] == 1.0
    path40 = tmp_path / "slide40.svs"
    write_pyramid(path40, compose_slide(plan("aperio40_power"), sources, 2), "aperio40_power")
    res = tile_slide("c", "s", path40, tmp_path / "b.tfrecord", TilingParams(20, 512, reader="openslide"))
    assert (res.info["reader"], res.info["decode_scale"]) == ("openslide", 1.0)


@pytest.mark.parametrize("stored", [240, 1024])
def test_scaled_decode_with_stored_tiles_that_straddle_grid_cells(tmp_path, sources, stored):
    """Aperio's older 240 px tiles: 1024 px cells do not start on stored tiles (the band path); and 1024 px
    stored tiles, one per cell (the cell path with a single stored tile): the tiles and pixels still follow
    the exact path."""
    import dataclasses

    import openslide

    from pathomch_assets.slides import slide_info
    from pathomch_assets.tiling import TiffLevelReader

    base = compose_slide(plan("aperio40_power", rows=3, cols=4, seed=7), sources, 2)
    path = tmp_path / f"slide{stored}.svs"
    h, w = base.shape[:2]
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate([base, np.asarray(Image.fromarray(base).reduce(4))]):
            desc = (
                f"Aperio Image Library v12.0.15\r\n{w}x{h} ({stored}x{stored}) JPEG/RGB Q=80|AppMag = 40"
                if i == 0
                else None
            )
            tif.write(level, tile=(stored, stored), compression="jpeg", photometric="rgb", metadata=None,
                      subfiletype=0 if i == 0 else 1, description=desc)  # fmt: skip
    with openslide.OpenSlide(path) as slide:
        reader = TiffLevelReader.open(path, slide_info(slide, path), 0, 2)
    assert reader.aligned(1024) == (stored == 1024)
    reader.close()
    params = TilingParams(20, 512)
    scaled = tile_slide("c", "s", path, tmp_path / "scaled.tfrecord", params)
    exact = tile_slide("c", "s", path, tmp_path / "exact.tfrecord", dataclasses.replace(params, scaled_decode=False))
    assert scaled.status == "ok" and (scaled.info["decode_scale"], exact.info["decode_scale"]) == (0.5, 1.0)
    assert len(scaled.tiles) > 0
    pd.testing.assert_frame_equal(scaled.tiles[["col", "row", "idx"]], exact.tiles[["col", "row", "idx"]])
    a, _ = read_tiles(tmp_path / "scaled.tfrecord")
    b, _ = read_tiles(tmp_path / "exact.tfrecord")
    assert_within_tolerance(a, b)


def test_scaled_cells_are_the_band_decode_and_give_its_tissue_fractions(tmp_path, sources):
    """The aligned fast path (stored tiles decoded as RGBX, each copied into its cell) against the band path."""
    import openslide

    from pathomch_assets.slides import LevelChoice, slide_info
    from pathomch_assets.tiling import TiffLevelReader, _scaled_cells

    path = tmp_path / "slide.svs"
    write_pyramid(path, compose_slide(plan("aperio40_power", rows=3, cols=5, seed=2), sources, 2), "aperio40_power")
    with openslide.OpenSlide(path) as slide:
        info = slide_info(slide, path)
    reader = TiffLevelReader.open(path, info, 0, 2)
    assert reader.aligned(1024)
    params, choice = TilingParams(20, 512, max_background_fraction=1.0), LevelChoice(0, 40.0, 1024)
    for row in range(3):
        band = reader.read(1024, row * 1024, 4 * 1024, 1024)  # cells 1-4 of the row
        cells = reader.read_cells(1024, row * 1024, 4, 1024)
        assert (cells[..., 3] == 255).all()
        tiles = band.reshape(512, 4, 512, 3).transpose(1, 0, 2, 3)
        assert cells.shape == (4, 512, 512, 4) and cells.flags.c_contiguous
        np.testing.assert_array_equal(cells[..., :3], tiles)
        got = _scaled_cells(reader, choice, params, path, row, 1, 4)  # every cell kept: fraction >= 0
        assert [c for c, _, _ in got] == [1, 2, 3, 4]
        assert [f for _, f, _ in got] == tissue_fraction(tiles).tolist()
    with pytest.raises(ValueError, match="not a C-contiguous"):  # a strided view would be decoded into a copy
        reader.read_cell(1024, 0, 1024, np.empty((512, 1024, 4), np.uint8)[:, ::2])
    reader.close()


def test_corrupt_jpeg_tile_on_the_scaled_path_fails_the_slide_and_leaves_no_file(tmp_path, sources):
    """A level-0 JPEG tile of a 40x slide overwritten with garbage (what a bad disk or a cut download leaves)."""
    path = tmp_path / "slide.svs"
    write_pyramid(path, compose_slide(plan("aperio40_power", rows=3, cols=4, seed=4), sources, 2), "aperio40_power")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        i = int(np.argmax(page.databytecounts))  # a tissue tile: a large one
        offset, count = page.dataoffsets[i], page.databytecounts[i]
    with open(path, "r+b") as fh:
        fh.seek(offset + count // 2)
        fh.write(b"\xff\xd9" * 64 + bytes(range(256)) * 4)
    out = tmp_path / "tiles" / "s.tfrecord"
    res = tile_slide("c", "s", path, out, TilingParams(20, 512, threads=2))
    assert res.info["decode_scale"] == 0.5
    assert res.status == "error" and "slide.svs" in res.error and "read failed at level 0" in res.error, res.error
    assert res.tiles.empty and not out.exists() and not list((tmp_path / "tiles").glob("*"))


def test_border_cells_that_fail_the_tissue_rule_early_are_not_decoded_whole(tmp_path, monkeypatch):
    """Tissue pieces cut by the cells (bench slide with borders): cells the thumbnail shows as partly blank are
    decoded blank-first and dropped once their background fails the rule; the tiles, fractions and file bytes
    are those of decoding every candidate cell whole."""
    from bench.performance import make_bench_slide
    from pathomch_assets.tiling import ScaledJpeg, TiffLevelReader

    path = make_bench_slide(tmp_path / "borders.svs", 4096, seed=5, pyramid="tcga40x", borders=True)
    decodes = []
    decode = ScaledJpeg.decode
    monkeypatch.setattr(ScaledJpeg, "decode", lambda self, *a: decodes.append(1) or decode(self, *a))
    hinted = tile_slide("c", "s", path, tmp_path / "hinted.tfrecord", TilingParams(20, 512, threads=2))
    n_hinted, decodes[:] = len(decodes), []
    monkeypatch.setattr(TiffLevelReader, "hint_tissue", lambda self, thumb, threshold: None)
    whole = tile_slide("c", "s", path, tmp_path / "whole.tfrecord", TilingParams(20, 512, threads=2))
    assert hinted.status == whole.status == "ok" and hinted.info["decode_scale"] == 0.5
    assert hinted.records == whole.records and len(hinted.records) > 0
    assert (tmp_path / "hinted.tfrecord").read_bytes() == (tmp_path / "whole.tfrecord").read_bytes()
    candidates = len(decodes) // 16  # every candidate cell decoded whole: 16 stored tiles each
    assert len(decodes) == candidates * 16 and candidates > len(whole.records)  # some border cells are dropped
    assert n_hinted < len(decodes), (n_hinted, len(decodes), candidates, len(whole.records))
