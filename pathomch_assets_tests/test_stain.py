"""Stain statistics and normalisation (issue 28) on the shipped real TCGA tiles.

Re-staining: a tile's pixels are unmixed with its own Macenko vectors, and the concentrations are rendered
again with other vectors and strengths (Beer-Lambert), as another site's staining would show the same tissue.
"""

import numpy as np
import pytest

from pathomch_assets.demo_cohort import compose_slide, demo_tiles_dir, load_source_tiles, write_pyramid
from pathomch_assets.stain import (
    DEFAULT_REINHARD,
    IO,
    MacenkoNormalizer,
    ReinhardNormalizer,
    StainError,
    concentrations,
    fit_target,
    lab_stats,
    lab_to_rgb,
    macenko,
    optical_density,
    rgb_to_lab,
)
from pathomch_assets.tiling import TileFinisher, TilingParams, tile_slide

from .test_tiling import plan


@pytest.fixture(scope="module")
def sources():
    return load_source_tiles()


def angle(u, v) -> float:
    """Degrees between two vectors."""
    u, v = np.asarray(u), np.asarray(v)
    return float(np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))))


def restain(tile: np.ndarray, h, e, strength=(1.0, 1.0)) -> np.ndarray:
    """``tile`` rendered with stain vectors ``h``, ``e`` and concentrations scaled by ``strength``."""
    est = macenko(tile)
    conc = np.maximum(concentrations(optical_density(tile), est.matrix), 0) * np.asarray(strength)[:, None]
    v = np.array([np.asarray(h) / np.linalg.norm(h), np.asarray(e) / np.linalg.norm(e)]).T
    out = IO * np.exp(-(v @ conc)) - 1
    return np.clip(out.T.round(), 0, 255).astype(np.uint8).reshape(tile.shape)


#: another site's stain: hematoxylin bluer (12-17 degrees from the shipped slides'), eosin pinker
OTHER_H, OTHER_E = (0.35, 0.75, 0.56), (0.10, 0.90, 0.42)


def test_macenko_on_real_slides_finds_hematoxylin_and_eosin(sources):
    for name, tiles in sources.items():
        est = macenko(np.stack(tiles)[:, ::4, ::4])
        assert est.h[0] > est.e[0] and est.e[1] > est.h[1], (name, est)  # H absorbs red, E absorbs green
        assert angle(est.h, (0.65, 0.70, 0.29)) < 15 and angle(est.e, (0.07, 0.99, 0.11)) < 30, (name, est)
        assert 0 < est.h_p50 < est.h_p99 and 0 < est.e_p50 < est.e_p99


def test_stain_statistics_unchanged_by_rotation_and_flips(sources):
    """The same pixels in another orientation (4 whole tiles): identical statistics up to rounding (1e-9).
    The tiler's pixel sample (every 16th pixel of a 512 px tile, other pixels once the tile is turned) of the
    80 tiles: vectors within 0.5 degree, percentiles within 2%."""
    tiles = np.stack([t for ts in sources.values() for t in ts])
    whole = tiles[::20]  # every pixel of 4 tiles
    base = macenko(whole)
    step = TileFinisher(TilingParams(20, 512)).step
    first = step // 2
    base_sample = macenko(tiles[:, first::step, first::step])
    for k, flip in [(1, False), (2, False), (3, False), (0, True), (1, True)]:
        moved = np.stack([np.rot90(t[:, ::-1] if flip else t, k) for t in tiles])
        est = macenko(moved[::20])
        np.testing.assert_allclose(est.matrix, base.matrix, atol=1e-9)
        np.testing.assert_allclose([est.h_p50, est.h_p99, est.e_p50, est.e_p99],
                                   [base.h_p50, base.h_p99, base.e_p50, base.e_p99], rtol=1e-9)  # fmt: skip
        s = macenko(moved[:, first::step, first::step])
        assert angle(s.h, base_sample.h) < 0.5 and angle(s.e, base_sample.e) < 0.5, (k, flip, s, base_sample)
        np.testing.assert_allclose([s.h_p50, s.h_p99, s.e_p50, s.e_p99],
                                   [base_sample.h_p50, base_sample.h_p99, base_sample.e_p50, base_sample.e_p99],
                                   rtol=0.02)  # fmt: skip


def test_restained_tile_normalised_back_with_macenko(sources):
    """Re-stained with other vectors and strengths (H vector 12-17 degrees away), then normalised to the
    original's statistics: vectors within 1 degree, 99th percentiles within 6%, pixels closer to the original
    than the re-stained ones (mean absolute error under 0.8 of theirs)."""
    for tiles in sources.values():
        tile = tiles[1]
        original = macenko(tile)
        other = restain(tile, OTHER_H, OTHER_E, (1.3, 0.7))
        moved = macenko(other)
        assert angle(moved.h, original.h) > 10
        back = MacenkoNormalizer(moved, original)(other)
        est = macenko(back)
        assert angle(est.h, original.h) < 1 and angle(est.e, original.e) < 1, (est, original)
        np.testing.assert_allclose([est.h_p99, est.e_p99], [original.h_p99, original.e_p99], rtol=0.06)
        assert np.abs(back.astype(int) - tile).mean() < 0.8 * np.abs(other.astype(int) - tile).mean()


def test_restained_tile_normalised_back_with_reinhard(sources):
    """Reinhard moves the tissue's CIELAB means and spreads to the target: on the original's tissue pixels,
    within 2.5 units of the original's (what is left is lightness clipped at white), where the re-stain
    had moved them by 8-12."""

    def stats_on(img, tissue):
        lab = rgb_to_lab(img[tissue])
        return np.r_[lab.mean(axis=0), lab.std(axis=0)]

    for tiles in sources.values():
        tile = tiles[2]
        tissue = tile.min(axis=-1) <= 220
        other = restain(tile, OTHER_H, OTHER_E, (1.3, 0.7))
        target = np.asarray(lab_stats(tile))
        back = ReinhardNormalizer(lab_stats(other), target)(other)
        assert np.abs(stats_on(other, tissue) - target).max() > 8
        assert np.abs(stats_on(back, tissue) - target).max() < 2.5


def test_lab_round_trip(sources):
    tile = next(iter(sources.values()))[0]
    assert np.abs(lab_to_rgb(rgb_to_lab(tile)).astype(int) - tile).max() <= 1


def test_failed_estimates_say_why():
    with pytest.raises(StainError, match="too few stained pixels"):
        macenko(np.full((64, 64, 3), 245, np.uint8))
    grey = np.random.default_rng(0).integers(60, 180, (64, 64, 1)).repeat(3, axis=2).astype(np.uint8)  # one hue
    with pytest.raises(StainError, match="degenerate"):
        macenko(grey)


def test_default_reinhard_target_is_fitted_on_the_shipped_tiles():
    assert fit_target("reinhard", demo_tiles_dir()) == pytest.approx(DEFAULT_REINHARD, abs=0.01)
    assert fit_target("none") == ()
    with pytest.raises(ValueError, match="stain.normalize"):
        fit_target("vahadane")


def test_tile_slide_normalises_a_restained_slide_to_the_target(tmp_path, sources):
    """A slide re-stained as another site would, tiled with ``stain.normalize: macenko`` and the original
    slide's stain as target: its kept tiles carry the target's stain (vectors within 4 degrees, through the
    slide's JPEG at q80 and the tiles' at q90; the re-stained slide's H vector was 12 degrees away)."""
    from pathomch_assets.tilestore import read_tiles

    p = plan("aperio20", rows=2, cols=3, seed=5)
    p.tissue = np.ones((2, 3), bool).tolist()
    p.edge_white = np.zeros((2, 3)).tolist()
    base = compose_slide(p, sources)
    target = macenko(base[::2, ::2])
    other = restain(base, OTHER_H, OTHER_E, (1.3, 0.7))
    write_pyramid(tmp_path / "s.svs", other, "aperio20")
    values = (*target.h, *target.e, target.h_p99, target.e_p99)
    params = TilingParams(20, 512, stain_normalize="macenko", stain_target=values)
    res = tile_slide("c", "s", tmp_path / "s.svs", tmp_path / "s.tfrecord", params)
    assert res.status == "ok" and res.stain["status"] == "ok" and res.stain["normalize"] == "macenko"
    assert angle((res.stain["h_r"], res.stain["h_g"], res.stain["h_b"]), target.h) > 10  # the slide's own stain
    images, _ = read_tiles(tmp_path / "s.tfrecord")
    est = macenko(images[:, ::2, ::2])
    assert angle(est.h, target.h) < 4 and angle(est.e, target.e) < 4, (est, target)
    assert params.digest() != TilingParams(20, 512).digest()


def test_tile_slide_with_a_failed_stain_estimate_is_reported_not_normalised(tmp_path):
    """Tissue of one grey hue: no two stains to find. With normalisation asked for, the slide is an error with
    its ``stain`` row saying why, and no tile file; without, it is tiled and its ``stain`` row says failed."""
    grey = np.random.default_rng(0).integers(90, 170, (1024, 1536, 1)).repeat(3, axis=2).astype(np.uint8)
    write_pyramid(tmp_path / "g.svs", grey, "aperio20")
    params = TilingParams(20, 512, stain_normalize="reinhard", stain_target=DEFAULT_REINHARD)
    asked = tile_slide("c", "g", tmp_path / "g.svs", tmp_path / "g.tfrecord", params)
    assert asked.status == "error" and "stain estimate failed" in asked.error, asked.error
    assert asked.stain["status"] == "failed" and not (tmp_path / "g.tfrecord").exists()
    plain = tile_slide("c", "g", tmp_path / "g.svs", tmp_path / "p.tfrecord", TilingParams(20, 512))
    assert plain.status == "ok" and plain.stain["status"] == "failed" and "degenerate" in plain.stain["error"]
