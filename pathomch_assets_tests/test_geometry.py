"""GeoJSON squares come from the tiler's own geometry (issue 31): on a slide whose best level is accepted within
``tiling.magnification_tolerance`` (19.5x read as 20x), each square covers exactly the level-0 pixels the tile
was read from."""

import imagecodecs
import numpy as np
import pytest

from pathomch_assets.cartography import TileGeometry, build_cartography, to_geojson
from pathomch_assets.slides import choose_level, open_slide, slide_info
from pathomch_assets.tiling import TilingParams, iter_tiles, tile_slide

TILE = 64


def level0_image() -> np.ndarray:
    """A 39x level 0 (6 x 4 tiles of 128 level-0 px at 19.5x) whose pixels say where they are: red = x // 4,
    green = y // 4."""
    y, x = np.mgrid[0:512, 0:768]
    return np.stack([x // 4, y // 4 + 40, np.full_like(x, 60)], axis=-1).astype(np.uint8)


def write_slide(path, base: np.ndarray) -> None:
    """A generic tiled TIFF with a 39x level 0 and a 19.5x level 1 (mpp 0.2564 and 0.5128 um/px), pixels
    stored losslessly; OpenSlide sees both levels (``metadata=None``) and the mpp (SPEC 6)."""
    import tifffile

    level1 = base.reshape(256, 2, 384, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
    with tifffile.TiffWriter(path) as tif:
        for i, lev in enumerate((base, level1)):
            res = 1e4 / ((10 / 39) * 2**i)  # px/cm
            tif.write(
                lev,
                tile=(16, 16),
                compression="zlib",
                photometric="rgb",
                metadata=None,
                subfiletype=0 if i == 0 else 1,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
            )


def test_geojson_squares_cover_the_pixels_each_tile_was_read_from(tmp_path):
    base = level0_image()
    path = tmp_path / "TCGA-ZZ-0001-01Z-00-DX1.tiff"
    write_slide(path, base)
    params = TilingParams(magnification=20.0, tile_px=TILE, reader="openslide")
    res = tile_slide("brca", path.stem, path, tmp_path / "tiles.tfrecord", params)
    assert res.status == "ok", res.error
    info = res.info
    assert info["base_magnification"] == pytest.approx(39.0) and info["level"] == 1
    assert info["level_magnification"] == pytest.approx(19.5) and info["read_px"] == TILE  # read as is
    geometry = TileGeometry.recorded(info)  # what the slides table holds
    assert geometry.side == pytest.approx(2 * TILE)  # not TILE * 39 / 20 = 124.8
    # every tile's pixels against level 0 under its square (2 x 2 level-0 pixels per tile pixel)
    slide = open_slide(path)
    sinfo = slide_info(slide, path, None)
    choice = choose_level(sinfo.base_magnification, sinfo.level_downsamples, 20.0, TILE, params.magnification_tolerance)
    tiles = {(c, r): imagecodecs.jpeg8_decode(t.jpeg) for c, r, _, t in iter_tiles(slide, sinfo, choice, params)}
    slide.close()
    assert len(tiles) == 24
    for (c, r), tile in tiles.items():
        x0, y0, x1, y1 = (round(v) for v in geometry.square(c, r))
        under = base[y0:y1, x0:x1].reshape(TILE, 2, TILE, 2, 3).mean(axis=(1, 3))
        assert np.abs(tile.astype(float) - under).mean() < 1.5, (c, r)  # JPEG q90 error only
        old = TILE * info["base_magnification"] / params.magnification  # the earlier squares drift by a column
        assert c == 0 or x0 - c * old == pytest.approx(3.2 * c)
    # the GeoJSON polygons are those squares
    calls = [{"col": c, "row": r, "trait": "A", "call": int(c == r)} for c, r in tiles]
    import pandas as pd

    gj = to_geojson(build_cartography(pd.DataFrame(calls), ["A"]), geometry, "s")
    squares = {f["properties"]["name"]: f["geometry"]["coordinates"][0] for f in gj["features"]}
    assert squares["s col 5 row 3"] == [[640.0, 384.0], [768.0, 384.0], [768.0, 512.0], [640.0, 512.0], [640.0, 384.0]]
    assert max(pt[0] for sq in squares.values() for pt in sq) == base.shape[1]  # the grid ends at the slide's edge


def test_a_slide_without_recorded_geometry():
    older = {"read_px": None, "base_magnification": 40.0, "level_magnification": float("nan")}
    assert TileGeometry.recorded(older, 512, 20.0).side == 1024.0  # tiled before the level was recorded: estimated
    with pytest.raises(ValueError, match="re-materialize its slide_tiles"):
        TileGeometry.recorded(older)
