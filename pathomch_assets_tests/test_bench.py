"""The GPU benchmark's code path (precisions, device spans), run small on the CPU."""

import keras

from pathomch_assets.bench import bench_accelerators


def test_accelerator_bench_runs_both_precisions_and_restores_the_policy():
    rows = bench_accelerators(architecture="small_cnn", input_px=32, batch_size=4, seconds=0.2)
    assert [(r["precision"], r["devices"]) for r in rows] == [("float32", 1), ("mixed_float16", 1)]
    assert all(r["training_tiles_per_s"] > 0 and r["inference_tiles_per_s"] > 0 for r in rows)
    assert rows[0]["device"].startswith("CPU")
    assert keras.mixed_precision.global_policy().name == "float32"
