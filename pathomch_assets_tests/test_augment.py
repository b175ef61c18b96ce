"""Stain augmentation (issue 28 item 4, training half): HED colour deconvolution and the Tellez et al. 2019 jitter,
on the shipped real TCGA tiles, and its place in the training input pipeline."""

import numpy as np
import pytest

from pathomch_assets.augment import hed_jitter, hed_to_rgb, restain, rgb_to_hed, tf_augment
from pathomch_assets.config import AugmentConfig, TrainingConfig
from pathomch_assets.demo_cohort import load_source_tiles
from pathomch_assets.tilestore import TileWriter
from pathomch_assets.training import SlideSet, train_dataset


@pytest.fixture(scope="module")
def tiles():
    sources = load_source_tiles()
    return [t[::8, ::8] for name in sorted(sources)[:3] for t in sources[name][:2]]  # 64 px, six real tiles


def test_hed_round_trip_is_exact_on_real_tiles(tiles):
    for t in tiles:
        back = hed_to_rgb(rgb_to_hed(t))
        assert np.abs(back - t).max() < 1e-6


def test_haematoxylin_dominates_nuclei_and_eosin_stroma(tiles):
    """Independent check of the stain matrix: on real H&E the darkest-blue pixels (nuclei) carry more H than E
    relative to the pink ones (stroma)."""
    t = np.concatenate([x.reshape(-1, 3) for x in tiles]).astype(float)
    tissue = ~(t > 220).all(axis=1)
    hed = rgb_to_hed(t[tissue])
    blueness = t[tissue, 2] - t[tissue, 0]  # blue minus red: purple nuclei high, pink stroma low
    hi, lo = blueness > np.quantile(blueness, 0.9), blueness < np.quantile(blueness, 0.1)
    ratio = hed[:, 0] / np.maximum(hed[:, 1], 1e-3)
    assert np.median(ratio[hi]) > 1.5 * np.median(ratio[lo])


def test_jitter_differs_within_bounds_and_is_seeded(tiles):
    t = tiles[0]
    a = hed_jitter(t, np.random.default_rng(5), 0.05, 0.05)
    b = hed_jitter(t, np.random.default_rng(5), 0.05, 0.05)
    c = hed_jitter(t, np.random.default_rng(6), 0.05, 0.05)
    assert (a == b).all() and not (a == c).all() and not (a == t).all()
    # bounds: each stain concentration moved by at most sigma * |c| + bias (uint8 rounding aside)
    hed_t, hed_a = rgb_to_hed(t), rgb_to_hed(a)
    unclipped = (a > 0).all(axis=-1) & (a < 255).all(axis=-1)
    limit = 0.05 * np.abs(hed_t) + 0.05 + 0.02
    assert (np.abs(hed_a - hed_t)[unclipped] <= limit[unclipped]).all()
    assert (hed_jitter(t, np.random.default_rng(5), 0.0, 0.0) == t).all()
    with pytest.raises(ValueError, match="sigma"):
        hed_jitter(t, np.random.default_rng(0), 1.5, 0.0)


def test_restain_scales_haematoxylin(tiles):
    t = tiles[1]
    more_h = restain(t, (1.4, 1.0, 1.0))
    tissue = ~(t > 220).all(axis=-1)
    assert rgb_to_hed(more_h)[tissue, 0].mean() > 1.3 * rgb_to_hed(t)[tissue, 0].mean()


def test_tf_augment_jitters_flips_and_is_deterministic(tiles):
    import tensorflow as tf

    t = tiles[2].astype(np.float32)
    fn = tf_augment("hed", 0.1, 0.1, seed=3)
    out = [fn(tf.constant(i, tf.int64), (tf.constant(t), tf.constant(1.0)))[0].numpy() for i in range(12)]
    again = [fn(tf.constant(i, tf.int64), (tf.constant(t), tf.constant(1.0)))[0].numpy() for i in range(12)]
    assert all((x == y).all() for x, y in zip(out, again))
    assert all(not np.allclose(x, t, atol=1) for x in out)  # every tile jittered
    # without jitter, only flips: each output is one of the four flips, and more than one occurs
    flips_only = tf_augment("hed", 0.0, 0.0, seed=3)
    variants = {"id": t, "lr": t[:, ::-1], "ud": t[::-1], "both": t[::-1, ::-1]}
    seen = set()
    for i in range(16):
        x = flips_only(tf.constant(i, tf.int64), (tf.constant(t), tf.constant(0.0)))[0].numpy()
        match = [k for k, v in variants.items() if np.abs(x - v).max() < 0.05]
        assert match, i
        seen.add(match[0])
    assert len(seen) >= 3
    with pytest.raises(ValueError, match="stain"):
        tf_augment("none")


def _stream(tmp_path, tile, augment, seed=0, n=8):
    path = tmp_path / "s.tfrecord"
    with TileWriter(path) as w:
        for i in range(4):
            w.write(tile, i, 0)
    ds = train_dataset(SlideSet(["s"], [str(path)], [1]), tile.shape[0], 4, seed, deterministic=True, augment=augment)
    return np.concatenate([x.numpy() for x, _ in ds.take(n // 4)])


def test_off_by_default_training_input_is_flips_of_the_stored_tile(tmp_path, tiles):
    assert TrainingConfig().augment.stain == "none"
    tile = tiles[3]
    stored = _stream(tmp_path, tile, None, n=4)[0]  # what the decoder gives back for this tile (JPEG)
    variants = [stored, stored[:, ::-1], stored[::-1], stored[::-1, ::-1]]
    for x in _stream(tmp_path, tile, TrainingConfig().augment):
        assert any(np.array_equal(x, v) for v in variants)
    hed = AugmentConfig(stain="hed", hed_sigma=0.1, hed_bias=0.05)
    a, b = _stream(tmp_path, tile, hed, seed=1), _stream(tmp_path, tile, hed, seed=1)
    assert np.array_equal(a, b)  # same seed, same tiles
    assert not any(np.allclose(x, v, atol=1) for x in a for v in variants)  # every tile jittered


def test_augment_settings_are_bounded():
    with pytest.raises(ValueError):
        AugmentConfig(stain="macenko")
    with pytest.raises(ValueError):
        AugmentConfig(hed_sigma=0.9)
