"""Benchmarks (`make bench`): ratios measured in one run on one machine, written to bench/results.json.

Tiling: on the same generated 40x slide (levels 40x, 20x, 5x, 1.25x; real TCGA tissue on white),
this project's tiler at the paper's settings (20x, 512 px) against
- the naive method of the original study: a level-0 ``read_region`` of 1024 px per tile, a PIL
  resize to 512, one JPEG file written per tile;
- the floor: decoding every JPEG tile of the level the tiler reads, nothing else.
Each is run in a fresh process, so its peak RSS is its own; two slide sizes show that memory
does not grow with the slide.  Input pipeline: tiles/s delivered by ``tf.data`` from the tile
store against the training step rate of the demo and paper models on this CPU.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
SLIDE_DIR = ROOT / "data" / "bench"


# --------------------------------------------------------------------------- the bench slide
def make_bench_slide(path: Path, size_20x: int, seed: int = 0, tissue_share: float = 0.5) -> Path:
    """A 40x pyramid (2 * size_20x px square) written tile by tile: never whole in memory."""
    import tifffile
    from PIL import Image

    from .demo_cohort import load_source_tiles

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    sources = [t for ts in load_source_tiles().values() for t in ts]
    n = size_20x // 512 + 1
    mask = rng.random((n, n)) < tissue_share
    pick = rng.integers(len(sources), size=(n, n))
    scales = [2.0, 1.0, 0.25, 0.0625]  # level px per 20x px
    resized = {}

    def block(level: int, r: int, c: int) -> np.ndarray:
        s = scales[level]
        px = int(512 * s)
        if r >= n or c >= n or not mask[r, c]:
            return np.full((px, px, 3), 255, np.uint8)
        key = (level, pick[r, c])
        if key not in resized:
            resized[key] = np.asarray(Image.fromarray(sources[pick[r, c]]).resize((px, px), Image.Resampling.BOX))
        return resized[key]

    def tiles(level: int, shape):
        s = scales[level]
        bpx = int(512 * s)
        for y in range(0, shape[0], 256):
            for x in range(0, shape[1], 256):
                out = np.full((256, 256, 3), 255, np.uint8)
                for by in range(y // bpx, (y + 255) // bpx + 1):
                    for bx in range(x // bpx, (x + 255) // bpx + 1):
                        b = block(level, by, bx)
                        y0, x0 = by * bpx, bx * bpx
                        ys, xs = max(y, y0), max(x, x0)
                        ye, xe = min(y + 256, y0 + bpx, shape[0]), min(x + 256, x0 + bpx, shape[1])
                        if ye > ys and xe > xs:
                            out[ys - y : ye - y, xs - x : xe - x] = b[ys - y0 : ye - y0, xs - x0 : xe - x0]
                yield out

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    w0 = 2 * size_20x
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level, s in enumerate(scales):
            side = int(size_20x * s)
            kw = dict(
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(256, 256),
                compression="jpeg",
                compressionargs={"level": 80},
                photometric="rgb",
                metadata=None,
                subfiletype=0 if level == 0 else 1,
                maxworkers=os.cpu_count(),
            )
            if level == 0:
                kw["description"] = (
                    f"Aperio Image Library v12.0.15\r\n{w0}x{w0} (256x256) JPEG/RGB Q=80|AppMag = 40|MPP = 0.2500"
                )
            tif.write(tiles(level, (side, side)), **kw)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- the three methods
def run_tiler(slide: str, out: str, threads: int = 2) -> dict:
    """This project's tiler, timed warm: a pool worker imports TensorFlow (the TFRecord writer)
    once for all its slides, so that one-time cost is reported apart."""
    t0 = time.perf_counter()
    import tensorflow  # noqa: F401

    from .tiling import TilingParams, tile_slide

    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = tile_slide("bench", "bench", slide, out, TilingParams(20, 512, threads=threads))
    return {
        "seconds": time.perf_counter() - t0,
        "worker_startup_seconds": startup,
        "tiles": len(res.tiles),
        "status": res.status,
        "level": res.info.get("level"),
        "read_px": res.info.get("read_px"),
        "threads": threads,
    }


def run_naive(slide: str, out_dir: str) -> dict:
    """The original study's way: level 0, 512 * mag / 20 px per tile, PIL resize, a JPEG file each."""
    import openslide

    t0 = time.perf_counter()
    s = openslide.OpenSlide(slide)
    mag = float(s.properties["openslide.objective-power"])
    px = int(512 * mag / 20)
    w, h = s.dimensions
    n = 0
    for row in range(h // px):
        for col in range(w // px):
            tile = s.read_region((col * px, row * px), 0, (px, px)).convert("RGB").resize((512, 512))
            a = np.asarray(tile)
            if np.all(a > 220, axis=-1).mean() <= 0.5:
                tile.save(os.path.join(out_dir, f"{col}_{row}.jpeg"), quality=90)
                n += 1
    return {"seconds": time.perf_counter() - t0, "tiles": n}


def run_floor(slide: str, level: int) -> dict:
    """Decode every JPEG tile of ``level`` (tifffile page), nothing else."""
    import imagecodecs
    import tifffile

    t0 = time.perf_counter()
    n = 0
    with tifffile.TiffFile(slide) as tif:
        page = [p for p in tif.pages if p.is_tiled][level]
        fh = tif.filehandle
        tables = page.jpegtables
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            fh.seek(offset)
            imagecodecs.jpeg8_decode(fh.read(count), tables=tables, colorspace="RGB", outcolorspace="RGB")
            n += 1
    side = page.shape[0]
    return {"seconds": time.perf_counter() - t0, "jpeg_tiles": n, "tiles_512_equivalent": (side // 512) ** 2}


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(method: str, *args) -> dict:
    """Run one method in a fresh process; adds its peak RSS."""
    # VmHWM belongs to this process's own address space; ru_maxrss would carry the forking
    # parent's high-water mark across exec on Linux
    code = (
        "import json; from pathomch_assets import bench; "
        f"r = bench.{method}(*{list(args)!r}); r['peak_rss_mb'] = bench.peak_rss_mb(); print(json.dumps(r))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_tiling(sizes=(20480, 40960 // 2 * 1)) -> list[dict]:
    rows = []
    for size_20x in sizes:
        slide = make_bench_slide(SLIDE_DIR / f"bench40x_{2 * size_20x}.svs", size_20x)
        with tempfile.TemporaryDirectory() as tmp:
            ours = _child("run_tiler", str(slide), os.path.join(tmp, "t.tfrecord"), 2)
            single = _child("run_tiler", str(slide), os.path.join(tmp, "s.tfrecord"), 1)
            naive = _child("run_naive", str(slide), tmp)
            floor = _child("run_floor", str(slide), ours["level"] or 0)
        assert ours["tiles"] == naive["tiles"], (ours, naive)
        rows.append(
            {
                "slide_px_40x": 2 * size_20x,
                "tissue_tiles": ours["tiles"],
                "tiler": ours,
                "tiler_1_thread": single,
                "naive": naive,
                "floor": floor,
                "speedup_vs_naive_1_thread": naive["seconds"] / single["seconds"],
                "speedup_vs_naive": naive["seconds"] / ours["seconds"],
                "time_vs_decode_floor": ours["seconds"] / floor["seconds"],
            }
        )
    return rows


# --------------------------------------------------------------------------- input pipeline
def device_name() -> str:
    """The first GPU TensorFlow sees, else the CPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
    return f"CPU ({os.cpu_count()} cores)"


def tiles_per_s(step, batch: int, seconds: float) -> float:
    """Rate of ``step()`` (one batch) after a warm-up call, over at least ``seconds`` and 2 steps."""
    step()
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or steps < 2:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - t0)


def bench_input(tiles: dict[str, tuple[Path, int]], seconds: float = 8.0) -> list[dict]:
    """tf.data throughput from the tile store against training throughput, per configuration.

    ``tiles``: store name -> (tile file, number of tiles in it)."""
    import keras

    from .config import TrainingConfig
    from .training import SlideSet, build_model, train_dataset

    out = []
    configs = (
        (
            "demo: small_cnn 32 px from 128 px tiles, cached",
            "demo",
            TrainingConfig(architecture="small_cnn", input_px=32, batch_size=64, cache_decoded=True),
        ),
        ("paper: inception_v3 512 px from 512 px tiles", "paper", TrainingConfig(input_px=512, batch_size=8)),
    )
    for name, store, cfg in configs:
        path, n_tiles = tiles[store]
        slides = SlideSet(["a", "b"], [str(path)] * 2, [0, 1])
        ds = iter(train_dataset(slides, cfg.input_px, cfg.batch_size, seed=0, cache=cfg.cache_decoded))
        for _ in range(20 if cfg.cache_decoded else 1):  # fill the cache (first epoch), as in training
            next(ds)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            n += int(next(ds)[0].shape[0])
        pipeline = n / (time.perf_counter() - t0)
        model = build_model(cfg.architecture, cfg.input_px)
        x = np.random.default_rng(0).integers(0, 255, (cfg.batch_size, cfg.input_px, cfg.input_px, 3)).astype("float32")
        y = np.zeros((cfg.batch_size, 1), "float32")
        train = tiles_per_s(lambda: model.train_on_batch(x, y), cfg.batch_size, seconds)
        infer = tiles_per_s(lambda: model.predict_on_batch(x), cfg.batch_size, seconds / 2)
        out.append(
            {
                "config": name,
                "store": store,
                "device": device_name(),
                "tile_bytes": path.stat().st_size / max(n_tiles, 1),
                "pipeline_tiles_per_s": pipeline,
                "training_tiles_per_s": train,
                "inference_tiles_per_s": infer,
                "pipeline_over_training": pipeline / train,
            }
        )
        keras.backend.clear_session()
    return out


def bench_accelerators(
    architecture: str = "inception_v3", input_px: int = 512, batch_size: int = 32, seconds: float = 10.0
) -> list[dict]:
    """Training and inference tiles/s for each accelerator setting: float32 and mixed precision,
    on one device and, with several GPUs, on all of them (``MirroredStrategy``, the batch per GPU
    kept).  Without a GPU it runs on the CPU, which is how tests cover the code path."""
    import keras
    import tensorflow as tf

    from .training import build_model

    gpus = tf.config.list_physical_devices("GPU")
    spans = [1] + ([len(gpus)] if len(gpus) > 1 else [])
    out = []
    for precision in ("float32", "mixed_float16"):
        for n in spans:
            keras.mixed_precision.set_global_policy(precision)
            try:
                strategy = (
                    tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(n)])
                    if n > 1
                    else tf.distribute.get_strategy()
                )
                with strategy.scope():
                    model = build_model(architecture, input_px)
                batch = batch_size * n
                x = np.random.default_rng(0).integers(0, 255, (batch, input_px, input_px, 3)).astype("float32")
                data = tf.data.Dataset.from_tensors((x, np.zeros((batch, 1), "float32"))).repeat()
                rates = {}
                for phase in ("training", "inference"):

                    def run(steps):
                        if phase == "training":
                            model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
                        else:
                            model.predict(data.map(lambda a, b: a), steps=steps, verbose=0)

                    run(2)  # build and warm up
                    t0, steps = time.perf_counter(), 2
                    run(steps)
                    per_step = (time.perf_counter() - t0) / steps
                    steps = max(2, int(seconds / 2 / max(per_step, 1e-6)))
                    t0 = time.perf_counter()
                    run(steps)
                    rates[phase] = steps * batch / (time.perf_counter() - t0)
            finally:
                keras.mixed_precision.set_global_policy("float32")
                keras.backend.clear_session()
            out.append(
                {
                    "device": device_name(),
                    "devices": n,
                    "precision": precision,
                    "architecture": architecture,
                    "input_px": input_px,
                    "batch_per_device": batch_size,
                    "training_tiles_per_s": rates["training"],
                    "inference_tiles_per_s": rates["inference"],
                }
            )
    return out


def main() -> None:
    BENCH_DIR.mkdir(exist_ok=True)
    for size in (10240, 20480):  # generated in a child: the parent stays small
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"from pathomch_assets import bench; bench.make_bench_slide("
                f"bench.SLIDE_DIR / 'bench40x_{2 * size}.svs', {size})",
            ],
            check=True,
        )
    tiling = bench_tiling((10240, 20480))
    from .tiling import TilingParams, tile_slide

    tiles = {}
    for store, params in (("paper", TilingParams(20, 512)), ("demo", TilingParams(5, 128))):
        path = BENCH_DIR / f"{store}.tfrecord"
        tiles[store] = (path, len(tile_slide("bench", "bench", SLIDE_DIR / "bench40x_20480.svs", path, params).tiles))
    inputs = bench_input(tiles)
    for path, _ in tiles.values():
        path.unlink(missing_ok=True)
    import tensorflow as tf

    # Inception v3 at 512 px per accelerator setting; on a CPU that takes hours in mixed precision
    # (emulated), so only a GPU machine runs it (tests run the same code on the CPU, small)
    accelerators = bench_accelerators() if tf.config.list_physical_devices("GPU") else []
    results = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "tiling": tiling,
        "input_pipeline": inputs,
        "accelerators": accelerators,
    }
    (BENCH_DIR / "results.json").write_text(json.dumps(results, indent=1))
    print(f"machine: {results['machine']}")
    print("tiling at 20x / 512 px on a generated 40x slide (same process type, fresh process each):")
    for r in tiling:
        print(
            f"  {r['slide_px_40x']:>6} px: {r['tissue_tiles']} tiles; tiler {r['tiler']['seconds']:.2f} s "
            f"(1 thread {r['tiler_1_thread']['seconds']:.2f} s; peak RSS {r['tiler']['peak_rss_mb']:.0f} MB with "
            f"TensorFlow loaded; naive {r['naive']['peak_rss_mb']:.0f} MB), "
            f"naive {r['naive']['seconds']:.1f} s, decode floor {r['floor']['seconds']:.2f} s -> "
            f"{r['speedup_vs_naive']:.1f}x naive ({r['speedup_vs_naive_1_thread']:.1f}x on 1 thread), "
            f"{r['time_vs_decode_floor']:.2f}x floor time"
        )
    print("input pipeline vs training on this CPU:")
    for r in inputs:
        print(
            f"  {r['config']} on {r['device']}: tf.data {r['pipeline_tiles_per_s']:.0f} tiles/s, training "
            f"{r['training_tiles_per_s']:.1f} tiles/s -> {r['pipeline_over_training']:.1f}x; inference "
            f"{r['inference_tiles_per_s']:.1f} tiles/s; {r['tile_bytes'] / 1024:.0f} KiB per stored tile"
        )
    for r in accelerators:
        print(
            f"  {r['architecture']} {r['input_px']} px on {r['devices']} x {r['device']}, {r['precision']}: training "
            f"{r['training_tiles_per_s']:.0f} tiles/s, inference {r['inference_tiles_per_s']:.0f} tiles/s"
        )
    if not accelerators:
        print("no GPU: accelerator figures (float32 / mixed precision, one / all GPUs) not measured")
    print(f"written to {BENCH_DIR / 'results.json'}")


if __name__ == "__main__":
    main()
