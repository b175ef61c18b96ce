"""The benchmark's code paths, run small: slides, methods, worker and pool (no wall-clock assertions)."""

import keras
import numpy as np
import pytest

from bench import performance as bench
from bench.performance import bench_accelerators


def test_accelerator_bench_runs_both_precisions_and_restores_the_policy():
    rows = bench_accelerators(architecture="small_cnn", input_px=32, batch_size=4, seconds=0.2)
    assert [(r["precision"], r["devices"]) for r in rows] == [("float32", 1), ("mixed_float16", 1)]
    assert all(r["training_tiles_per_s"] > 0 and r["inference_tiles_per_s"] > 0 for r in rows)
    assert rows[0]["device"].startswith("CPU")
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return {
        "tcga40x": bench.make_bench_slide(d / "tcga40x.svs", 2048, seed=3, tissue_share=0.6, pyramid="tcga40x"),
        "svs20x": bench.make_bench_slide(d / "svs20x.svs", 2048, seed=4, tissue_share=0.6, pyramid="svs20x"),
    }


def test_bench_slides_have_the_pyramids_users_have(slides):
    import openslide

    with openslide.OpenSlide(slides["tcga40x"]) as s:
        assert s.properties["openslide.objective-power"] == "40"
        assert [round(d) for d in s.level_downsamples] == [1, 4, 16, 64]  # no 20x level
    with openslide.OpenSlide(slides["svs20x"]) as s:
        assert s.properties["openslide.objective-power"] == "20"
        assert [round(d) for d in s.level_downsamples] == [1, 4, 16]


@pytest.mark.parametrize("name,level,read_px,scale", [("tcga40x", 0, 1024, 0.5), ("svs20x", 0, 512, 1.0)])
def test_floor_and_peer_work_on_the_tilers_cells(tmp_path, slides, name, level, read_px, scale):
    slide = str(slides[name])
    ours = bench.run_tiler(slide, str(tmp_path / "t.tfrecord"), threads=2)
    assert (ours["level"], ours["read_px"], ours["decode_scale"]) == (level, read_px, scale)
    assert ours["tiles"] == len(ours["kept"]) > 0
    assert set(map(tuple, ours["kept"])) <= set(map(tuple, ours["candidates"]))
    # the floor decodes exactly the stored 256 px JPEG tiles under the kept tiles
    floor = bench.run_floor(slide, level, read_px, ours["kept"], threads=2)
    assert floor["jpeg_tiles"] == ours["tiles"] * (read_px // 256) ** 2
    exact = bench.run_tiler(slide, str(tmp_path / "e.tfrecord"), threads=1, scaled=False)
    assert exact["decode_scale"] == 1.0 and exact["kept"] == ours["kept"]
    pytest.importorskip("pyvips")
    peer = bench.run_vips(slide, level, read_px, ours["candidates"], threads=2)
    assert peer["tiles"] == exact["tiles"]  # libvips' box shrink and the exact path keep the same tiles


def test_scaled_vs_exact_is_measured_on_tissue(tmp_path, slides):
    ours = bench.run_tiler(str(slides["tcga40x"]), str(tmp_path / "t.tfrecord"))
    m = bench.scaled_vs_exact(str(slides["tcga40x"]), 0, 1024, ours["kept"])
    assert m["factor"] == 2 and m["tiles_compared"] == ours["tiles"]
    assert 0 < m["mean_abs_diff"] < 1.0


def test_worker_starts_without_tensorflow_and_the_pool_tiles_every_slide(tmp_path, slides):
    w = bench.bench_worker(slides["tcga40x"])
    assert not w["tensorflow_loaded"] and "tensorflow" not in w["ready"]["loaded"]
    assert w["after_tiling"]["status"] == "ok" and w["after_tiling"]["tiles"] > 0
    assert w["startup_seconds"] > 0 and w["peak_rss_mb"] > 0
    pool = bench.run_pool([str(slides["tcga40x"]), str(slides["svs20x"])], str(tmp_path), 2, 20, 512, 1)
    assert pool["slides"] == 2 and pool["tiles"] > 0 and np.isfinite(pool["slides_per_hour"])
    assert sorted(p.name for p in tmp_path.glob("*.tfrecord")) == ["svs20x.tfrecord", "tcga40x.tfrecord"]


def test_resolution_bounds_smooth_over_tissue_only_and_read_the_truth():
    from bench.resolution import oracle_calls, smoothed

    mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
    flat = np.full((mask.sum(), 1), 0.3)
    np.testing.assert_allclose(smoothed(flat, mask), flat)  # blank tiles do not pull the average to 0
    spike = np.zeros((mask.sum(), 1))
    spike[0] = 1.0
    s = smoothed(spike, mask)[:, 0]
    assert 0 < s[0] < 1 and s[1:].max() < s[0] and s[-1] < s[1]  # spread to neighbours, less with distance
    # a per-slide shift the 0.5 threshold gets wrong: the bound finds the threshold that makes the calls true
    truth = np.array([[True], [False], [True], [False], [True]])
    p = np.array([[0.42], [0.30], [0.45], [0.31], [0.40]])
    assert (oracle_calls(p, truth) == truth).all() and not ((p >= 0.5) == truth).all()
