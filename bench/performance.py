"""Benchmarks (`make bench`): ratios measured in one run on one machine, written to bench/results.json.

Tiling, on the pyramids users have, at the paper's 20x / 512 px (real TCGA tissue on white):
- ``tcga40x``: a 40x Aperio-style SVS with levels at downsample 1, 4, 16, 64 and no 20x level (how
  TCGA's 40x slides are stored): each 20x tile is a 1024 px read of level 0;
- ``svs20x``: a 20x SVS (levels 1, 4, 16): level 0 as it is.
Against this project's tiler (1 and 2 threads, DCT-scaled decode on, and the exact path):
- the decode floor: decoding exactly the stored JPEG tiles under the kept tissue tiles (libjpeg-turbo,
  full size), nothing else, with the tiler's thread count;
- libvips per tile, as slideflow reads (crop + shrink of the level, ``tiffload``; same candidate cells,
  same tissue rule, same JPEG encoder);
- the naive method of the original study (level-0 ``read_region`` per tile, PIL resize, a JPEG file each).
Each measurement runs in a fresh process (its peak RSS its own), the methods interleaved round by
round, medians reported: the machine may be shared, and ratios within a round see the same load.
Also: a tiling worker's start-up and peak RSS (no TensorFlow), slides per hour with the worker
pool (1 vs 2 workers) on a sample of the demo cohort and on TCGA-shaped slides, and the input
pipeline (``tf.data`` from the tile store) against training, and one new slide's sensor run against the
cohort size (:mod:`bench.one_slide`).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
SLIDE_DIR = Path(os.environ.get("PATHOMCH_BENCH_SLIDES") or ROOT / "data" / "bench")

#: what a child process runs first to use this module (it lives outside the package, found by path)
CHILD_PRELUDE = f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from bench import performance as bench; "

#: level px per 20x px, and the objective power of level 0
PYRAMIDS = {
    "tcga40x": (40, (2.0, 0.5, 0.125, 0.03125)),  # downsample 1, 4, 16, 64: no 20x level
    "svs20x": (20, (1.0, 0.25, 0.0625)),
}


# --------------------------------------------------------------------------- the bench slides
def make_bench_slide(
    path: str | Path, size_20x: int, seed: int = 0, tissue_share: float = 0.5, pyramid="tcga40x", borders=False
) -> Path:
    """A pyramid of ``size_20x`` px at 20x, written tile by tile (never whole in memory): real TCGA
    tiles (512 px at 20x) on about ``tissue_share`` of the grid, the rest white.

    ``borders``: the tissue lies in contiguous pieces (a smoothed random field, thresholded) shifted by half a
    20x tile, so the tiler's cells cut through the pieces' edges as they cut real tissue: border cells with
    some tissue, below or above the tissue rule; otherwise each 20x cell is all tissue or all white."""
    import tifffile
    from PIL import Image

    from pathomch_assets.demo_cohort import load_source_tiles

    path = Path(path)
    if path.exists():
        return path
    mag, scales = PYRAMIDS[pyramid]
    rng = np.random.default_rng(seed)
    sources = [t for ts in load_source_tiles().values() for t in ts]
    n = size_20x // 512 + 1
    if borders:
        from scipy.ndimage import gaussian_filter

        field = gaussian_filter(rng.random((n, n)), 1.5)
        mask = field > np.quantile(field, 1 - tissue_share)
    else:
        mask = rng.random((n, n)) < tissue_share
    pick = rng.integers(len(sources), size=(n, n))
    resized = {}

    def block(level: int, r: int, c: int) -> np.ndarray:
        px = int(512 * scales[level])
        if r >= n or c >= n or not mask[r, c]:
            return np.full((px, px, 3), 255, np.uint8)
        key = (level, pick[r, c])
        if key not in resized:
            resized[key] = np.asarray(Image.fromarray(sources[pick[r, c]]).resize((px, px), Image.Resampling.BOX))
        return resized[key]

    def tiles(level: int, shape):
        bpx = int(512 * scales[level])
        o = bpx // 2 if borders else 0  # level px by which the tissue is shifted (up and left)
        for y in range(0, shape[0], 256):
            for x in range(0, shape[1], 256):
                out = np.full((256, 256, 3), 255, np.uint8)
                for by in range((y + o) // bpx, (y + o + 255) // bpx + 1):
                    for bx in range((x + o) // bpx, (x + o + 255) // bpx + 1):
                        b = block(level, by, bx)
                        y0, x0 = by * bpx - o, bx * bpx - o
                        ys, xs = max(y, y0), max(x, x0)
                        ye, xe = min(y + 256, y0 + bpx, shape[0]), min(x + 256, x0 + bpx, shape[1])
                        if ye > ys and xe > xs:
                            out[ys - y : ye - y, xs - x : xe - x] = b[ys - y0 : ye - y0, xs - x0 : xe - x0]
                yield out

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    w0 = int(size_20x * scales[0])
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level, s in enumerate(scales):
            side = int(size_20x * s)
            kw: dict[str, Any] = dict(
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
                    f"Aperio Image Library v12.0.15\r\n{w0}x{w0} (256x256) JPEG/RGB Q=80|AppMag = {mag}"
                    f"|MPP = {10 / mag:.4f}"
                )
            tif.write(tiles(level, (side, side)), **kw)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- the methods
def run_tiler(slide: str, out: str, threads: int = 2, scaled: bool = True) -> dict:
    """This project's tiler on one slide (the worker's imports are timed apart, see ``bench_worker``)."""
    from pathomch_assets.tiling import TilingParams, candidate_cells, grid_shape, tile_slide

    params = TilingParams(20, 512, threads=threads, scaled_decode=scaled)
    # what a pool worker has imported before its first slide (its start-up is measured apart, bench_worker)
    import imagecodecs  # noqa: F401
    import openslide  # noqa: F401
    import simplejpeg  # noqa: F401
    import tifffile  # noqa: F401

    from pathomch_assets import files  # noqa: F401

    t0, c0 = time.perf_counter(), time.process_time()
    res = tile_slide("bench", "bench", slide, out, params)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert res.status == "ok", res.error
    # the cells the tiler read (its QC thumbnail's candidates), for the peer: not timed

    from pathomch_assets.slides import LevelChoice, slide_info
    from pathomch_assets.tiling import qc_read

    with openslide.OpenSlide(slide) as s:
        info = slide_info(s, slide)
        choice = LevelChoice(res.info["level"], res.info["level_magnification"], res.info["read_px"])
        keep = candidate_cells(qc_read(s, info, slide), info, choice, params)
    n_cols, n_rows = grid_shape(info, choice)
    keep = np.ones((n_rows, n_cols), bool) if keep is None else keep
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tiles": len(res.tiles),
        "tiles_per_s": len(res.tiles) / seconds,
        "level": res.info["level"],
        "read_px": res.info["read_px"],
        "decode_scale": res.info["decode_scale"],
        "threads": threads,
        "kept": res.tiles[["col", "row"]].values.tolist(),
        "candidates": np.argwhere(keep)[:, ::-1].tolist(),  # (col, row)
    }


def _stored_tiles(page, read_px: int, cells) -> list[list[int]]:
    """Per 20x grid cell, the indices of the level's stored tiles under it."""
    across = -(-page.imagewidth // page.tilewidth)
    out = []
    for col, row in cells:
        x0, y0 = col * read_px, row * read_px
        tx = range(x0 // page.tilewidth, (x0 + read_px - 1) // page.tilewidth + 1)
        ty = range(y0 // page.tilelength, (y0 + read_px - 1) // page.tilelength + 1)
        out.append([y * across + x for y in ty for x in tx])
    return out


def _in_threads(fn, items, threads: int) -> list:
    from concurrent.futures import ThreadPoolExecutor

    if threads <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


def run_floor(slide: str, level: int, read_px: int, cells: list, threads: int = 1) -> dict:
    """Decode exactly the stored JPEG tiles under ``cells`` (full size), nothing else, on ``threads`` threads."""
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(slide) as tif:
        page = [p for p in tif.pages if isinstance(p, tifffile.TiffPage) and p.is_tiled][level]
        tables = page.jpegtables
        cs = "RGB" if page.photometric == 2 else "YCBCR"
        offsets, counts = page.dataoffsets, page.databytecounts
        groups = _stored_tiles(page, read_px, cells)
        fd = os.open(slide, os.O_RDONLY)
        try:
            # one 20x grid row of cells per task, as the tiler's bands
            rows: dict[int, list[int]] = {}
            for (_, row), idx in zip(cells, groups):
                rows.setdefault(row, []).extend(idx)

            def decode(indices):
                for i in indices:
                    imagecodecs.jpeg8_decode(
                        os.pread(fd, counts[i], offsets[i]), tables=tables, colorspace=cs, outcolorspace="RGB"
                    )
                return len(indices)

            t0, c0 = time.perf_counter(), time.process_time()
            n = sum(_in_threads(decode, list(rows.values()), threads))
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            os.close(fd)
    return {"seconds": seconds, "cpu_seconds": cpu, "jpeg_tiles": n, "threads": threads}


def run_vips(slide: str, level: int, read_px: int, cells: list, threads: int = 1, tile_px: int = 512) -> dict:
    """libvips per tile, as slideflow reads: crop the tile's region of the level, shrink it to ``tile_px``,
    then the tiler's tissue rule and JPEG encoder; ``cells``: the tiler's candidate cells."""
    os.environ["VIPS_CONCURRENCY"] = str(threads)
    import imagecodecs
    import pyvips

    from pathomch_assets.tiling import tissue_fraction

    image = pyvips.Image.tiffload(slide, page=level, access="random")
    factor = read_px / tile_px
    rows: dict[int, list[int]] = {}
    for col, row in cells:
        rows.setdefault(row, []).append(col)

    def work(item):
        row, cols = item
        kept = 0
        for col in cols:
            region = image.crop(col * read_px, row * read_px, read_px, read_px)
            if factor != 1:
                region = region.shrink(factor, factor)
            tile = region.numpy()
            if tissue_fraction(tile) >= 0.5:
                imagecodecs.jpeg8_encode(tile, level=90)
                kept += 1
        return kept

    t0, c0 = time.perf_counter(), time.process_time()
    kept = sum(_in_threads(work, list(rows.items()), threads))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_seconds": cpu, "tiles": kept, "tiles_per_s": kept / seconds, "threads": threads}


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
            tile = s.read_region((col * px, row * px), 0, (px, px)).convert("RGB")
            if px != 512:
                tile = tile.resize((512, 512))
            a = np.asarray(tile)
            if np.all(a > 220, axis=-1).mean() <= 0.5:
                tile.save(os.path.join(out_dir, f"{col}_{row}.jpeg"), quality=90)
                n += 1
    return {"seconds": time.perf_counter() - t0, "tiles": n}


def scaled_vs_exact(slide: str, level: int, read_px: int, cells: list, max_cells: int = 200) -> dict:
    """Mean absolute pixel difference of the DCT-scaled decode against the exact path (full decode,
    box resize to 512 px) over kept tissue tiles, before JPEG encoding."""
    import openslide
    from PIL import Image

    from pathomch_assets.slides import slide_info
    from pathomch_assets.tiling import TiffLevelReader

    with openslide.OpenSlide(slide) as s:
        info = slide_info(s, slide)
    factor = read_px // 512
    scaled, exact = TiffLevelReader.open(slide, info, level, factor), TiffLevelReader.open(slide, info, level)
    if scaled is None or exact is None:
        raise ValueError(
            f"{slide}: level {level} is not a tiled RGB TIFF level that tifffile reads; compare TIFF slides only"
        )
    diffs = []
    for col, row in cells[:: max(1, len(cells) // max_cells)]:
        a = scaled.read(col * read_px, row * read_px, read_px, read_px)
        b = exact.read(col * read_px, row * read_px, read_px, read_px)
        b = np.asarray(Image.fromarray(np.ascontiguousarray(b)).resize((512, 512), Image.Resampling.BOX))
        diffs.append(np.abs(a.astype(np.int16) - b).ravel())
    scaled.close()
    exact.close()
    d = np.concatenate(diffs)
    return {
        "factor": factor,
        "tiles_compared": len(diffs),
        "mean_abs_diff": float(d.mean()),
        "p99_abs_diff": float(np.percentile(d, 99)),
        "share_over_8": float((d > 8).mean()),
        "max_abs_diff": int(d.max()),
    }


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
        CHILD_PRELUDE
        + f"r = bench.{method}(*{list(args)!r}); r['peak_rss_mb'] = bench.peak_rss_mb(); print(json.dumps(r))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if out.returncode:
        raise RuntimeError(f"bench.{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(runs: list[dict]) -> dict:
    """The run with the median time, with every round's seconds beside it."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    out = dict(ordered[len(ordered) // 2])
    out["seconds_all_rounds"] = [r["seconds"] for r in runs]
    return out


def bench_slide(slide: Path, rounds: int = 5, naive: bool = True, vips: bool = True) -> dict:
    """Every method on one slide, interleaved round by round; ratios of medians and per round."""
    try:
        import pyvips  # noqa: F401
    except Exception as err:  # ImportError, or libvips missing (OSError)
        print(f"libvips peer skipped: pyvips is not importable ({err}); pip install pyvips pyvips-binary")
        vips = False
    runs: dict[str, list[dict]] = {}
    ratios: dict[str, list[float]] = {
        "time_vs_floor": [],
        "time_vs_floor_1_thread": [],
        "vips_time_over_ours": [],
        "speedup_2_threads": [],
        "time_vs_floor_candidates": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tfrecord = os.path.join(tmp, "t.tfrecord")
        for _ in range(rounds):
            r = {}
            for threads in (2, 1):
                r[f"tiler_{threads}"] = t = _child("run_tiler", str(slide), tfrecord, threads)
                cells, candidates = t.pop("kept"), t.pop("candidates")
                kept_cells = cells
                r[f"floor_{threads}"] = _child("run_floor", str(slide), t["level"], t["read_px"], cells, threads)
                if threads == 2:  # every candidate cell decoded whole: what an exact tiler examines, at most
                    r["floor_candidates_2"] = _child("run_floor", str(slide), t["level"], t["read_px"], candidates, 2)
                if vips:
                    r[f"vips_{threads}"] = _child("run_vips", str(slide), t["level"], t["read_px"], candidates, threads)
            r["tiler_exact_2"] = _child("run_tiler", str(slide), tfrecord, 2, False)
            r["tiler_exact_2"].pop("kept"), r["tiler_exact_2"].pop("candidates")
            for k, v in r.items():
                runs.setdefault(k, []).append(v)
            ratios["time_vs_floor"].append(r["tiler_2"]["seconds"] / r["floor_2"]["seconds"])
            ratios["time_vs_floor_1_thread"].append(r["tiler_1"]["seconds"] / r["floor_1"]["seconds"])
            ratios["speedup_2_threads"].append(r["tiler_1"]["seconds"] / r["tiler_2"]["seconds"])
            ratios["time_vs_floor_candidates"].append(r["tiler_2"]["seconds"] / r["floor_candidates_2"]["seconds"])
            if vips:
                ratios["vips_time_over_ours"].append(r["vips_2"]["seconds"] / r["tiler_2"]["seconds"])
        if naive:
            runs["naive"] = [_child("run_naive", str(slide), tmp)]
    med = {k: _median(v) for k, v in runs.items()}
    assert med["tiler_1"]["tiles"] == med["tiler_2"]["tiles"], (med["tiler_1"], med["tiler_2"])
    out = {
        "slide": slide.name,
        "tissue_tiles": med["tiler_2"]["tiles"],
        "tissue_tiles_by_method": {k: m["tiles"] for k, m in med.items() if "tiles" in m},
        "level": med["tiler_2"]["level"],
        "read_px": med["tiler_2"]["read_px"],
        "decode_scale": med["tiler_2"]["decode_scale"],
        "rounds": rounds,
        **med,
        "ratios_per_round": ratios,
        "time_vs_floor": statistics.median(ratios["time_vs_floor"]),
        "time_vs_floor_1_thread": statistics.median(ratios["time_vs_floor_1_thread"]),
        "speedup_2_threads": statistics.median(ratios["speedup_2_threads"]),
        "candidate_cells": len(candidates),
        "time_vs_floor_candidates": statistics.median(ratios["time_vs_floor_candidates"]),
        "floor_speedup_2_threads": med["floor_1"]["seconds"] / med["floor_2"]["seconds"],
        "exact_path_time_vs_floor": med["tiler_exact_2"]["seconds"] / med["floor_2"]["seconds"],
    }
    if vips:
        out["vips_time_over_ours"] = statistics.median(ratios["vips_time_over_ours"])
    if naive:
        out["naive_time_over_ours"] = med["naive"]["seconds"] / med["tiler_2"]["seconds"]
        out["naive_time_over_ours_1_thread"] = med["naive"]["seconds"] / med["tiler_1"]["seconds"]
    if med["tiler_2"]["decode_scale"] < 1:
        out["scaled_vs_exact"] = scaled_vs_exact(str(slide), out["level"], out["read_px"], kept_cells)
    return out


# --------------------------------------------------------------------------- worker and cohort throughput
def worker_probe() -> dict:
    """Run in a pool worker: what it loaded to be ready to tile, and its memory."""
    import imagecodecs  # noqa: F401
    import openslide  # noqa: F401
    import tifffile  # noqa: F401

    from pathomch_assets import tilestore, tiling  # noqa: F401

    heavy = ("tensorflow", "keras", "pandas", "duckdb", "dagster")
    return {"pid": os.getpid(), "peak_rss_mb": peak_rss_mb(), "loaded": [m for m in heavy if m in sys.modules]}


def _tile_and_probe(job) -> dict:
    from pathomch_assets.tiling import tile_slide

    res = tile_slide(*job)
    return {"status": res.status, "tiles": len(res.tiles), "seconds": res.seconds, **worker_probe()}


def bench_worker(slide: Path, threads: int = 2) -> dict:
    """A tiling worker as ``tile_slides`` starts it (spawned, exits with its parent): seconds from start
    to ready (imports done), then its peak RSS after tiling ``slide``."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from pathomch_assets.tiling import TilingParams, exit_with_parent

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:  # fmt: skip
            ready = pool.submit(worker_probe).result()
            startup = time.perf_counter() - t0
            job = (
                "bench",
                "bench",
                str(slide),
                os.path.join(tmp, "t.tfrecord"),
                TilingParams(20, 512, threads=threads),
            )
            after = pool.submit(_tile_and_probe, job).result()
    # what pandas and duckdb cost on top of numpy (which the tiler needs) in a fresh interpreter
    cost = {}
    for mod in ("pandas", "duckdb"):
        code = f"import time, numpy; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t)"
        cost[mod] = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    return {
        "startup_seconds": startup,
        # pandas and duckdb come with slides.py and tables.py's module-level imports, not the tiling
        "startup_seconds_less_pandas_duckdb": startup
        - sum(cost[m] for m in ("pandas", "duckdb") if m in ready["loaded"]),
        "ready": ready,
        "after_tiling": after,
        "peak_rss_mb": after["peak_rss_mb"],
        "tensorflow_loaded": "tensorflow" in after["loaded"],
        "import_seconds_fresh_process": cost,
    }


def demo_sample(n: int, slides_dir: Path) -> list[Path]:
    """The first ``n`` slides the demo plans for its first cohort (its sizes and three styles)."""
    from dataclasses import asdict

    from pathomch_assets.demo_cohort import (
        DEFAULT_COHORTS,
        _build_slide,
        demo_tiles_dir,
        load_source_tiles,
        plan_cohort,
    )

    spec = DEFAULT_COHORTS[0]
    plans = plan_cohort(spec, 0, sorted(load_source_tiles()))[-1][:n]
    paths = []
    for p in plans:
        path = slides_dir / p.file
        if not path.exists():
            _build_slide((asdict(p), str(slides_dir), str(demo_tiles_dir())))
        paths.append(path)
    return paths


def run_pool(slides: list[str], out_dir: str, workers: int, magnification: float, tile_px: int, threads: int) -> dict:
    """``tile_slides`` over ``slides`` with ``workers`` processes: wall time from the start of the pool."""
    from pathomch_assets.tiling import TilingParams, tile_slides

    params = TilingParams(magnification, tile_px, threads=threads)
    jobs = [("b", Path(s).stem, s, os.path.join(out_dir, f"{Path(s).stem}.tfrecord"), params) for s in slides]
    t0 = time.perf_counter()
    results = list(tile_slides(jobs, workers=workers))
    seconds = time.perf_counter() - t0
    assert all(r.status in ("ok", "no_tissue") for r in results), [r.error for r in results if r.status == "error"]
    return {
        "workers": workers,
        "slides": len(slides),
        "seconds": seconds,
        "slides_per_hour": len(slides) / seconds * 3600,
        "tiles": sum(len(r.tiles) for r in results),
    }


def bench_throughput(name: str, slides: list[Path], magnification: float, tile_px: int, threads: int) -> dict:
    """Slides per hour with 1 and 2 workers (1, 2, 2, 1: interleaved), each pool in a fresh process."""
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2, 2, 1):
            args = ([str(s) for s in slides], tmp, workers, magnification, tile_px, threads)
            runs[workers].append(_child("run_pool", *args))
    med = {w: _median(r) for w, r in runs.items()}
    return {
        "set": name,
        "slides": len(slides),
        "settings": f"{magnification:g}x / {tile_px} px, {threads} thread(s) per slide",
        "workers_1": med[1],
        "workers_2": med[2],
        "speedup_2_workers": med[1]["seconds"] / med[2]["seconds"],
    }


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

    from pathomch_assets.config import TrainingConfig
    from pathomch_assets.training import SlideSet, build_model, train_dataset

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

    from pathomch_assets.training import build_model

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
                            model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)  # tf.data
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
    quick = os.environ.get("PATHOMCH_BENCH_QUICK") == "1"  # smaller slides, one round: to try the bench out
    size, rounds = (10240, 1) if quick else (20480, 5)
    slides = {
        "tcga40x": SLIDE_DIR / f"tcga40x_{2 * size}.svs",
        "tcga40x_borders": SLIDE_DIR / f"tcga40x_borders_{2 * size}.svs",
        "svs20x": SLIDE_DIR / f"svs20x_{size}.svs",
    }
    cohort = [SLIDE_DIR / f"tcga40x_set_{i}.svs" for i in range(4 if quick else 6)]
    for path, pyramid, size_20x, seed, borders in [
        (slides["tcga40x"], "tcga40x", size, 0, False),
        (slides["tcga40x_borders"], "tcga40x", size, 0, True),
        (slides["svs20x"], "svs20x", size, 1, False),
        *[(p, "tcga40x", 10240, 10 + i, False) for i, p in enumerate(cohort)],
    ]:  # generated in a child: the parent stays small
        code = CHILD_PRELUDE + (
            f"bench.make_bench_slide({str(path)!r}, {size_20x}, {seed}, pyramid={pyramid!r}, borders={borders})"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
    demo = demo_sample(8 if quick else 24, SLIDE_DIR / "demo_sample")
    load = os.getloadavg()
    # the naive method (a minute a slide) only where its ratio is quoted
    tiling = {
        name: bench_slide(path, rounds, naive=not quick and "borders" not in name) for name, path in slides.items()
    }
    worker = bench_worker(slides["tcga40x"])
    throughput = [
        bench_throughput("demo cohort sample (the demo's settings)", demo, 5, 128, 1),
        bench_throughput("TCGA-shaped 40x slides (20,480 px, no 20x level)", cohort, 20, 512, 2),
    ]
    load_after = os.getloadavg()
    from pathomch_assets.tiling import TilingParams, tile_slide

    tiles = {}
    for store, params in (("paper", TilingParams(20, 512)), ("demo", TilingParams(5, 128))):
        path = BENCH_DIR / f"{store}.tfrecord"
        tiles[store] = (path, len(tile_slide("bench", "bench", slides["svs20x"], path, params).tiles))
    try:
        inputs = [] if quick else bench_input(tiles)
    except Exception as err:  # the tiling figures are kept whatever happens here
        inputs = [{"error": f"{type(err).__name__}: {err}"}]
    for path, _ in tiles.values():
        path.unlink(missing_ok=True)
    import tensorflow as tf

    # Inception v3 at 512 px per accelerator setting; on a CPU that takes hours in mixed precision
    # (emulated), so only a GPU machine runs it (tests run the same code on the CPU, small)
    accelerators = bench_accelerators() if tf.config.list_physical_devices("GPU") else []
    from bench.one_slide import bench_one_slide  # alone: python -m bench.one_slide

    one_slide = bench_one_slide(
        SLIDE_DIR / "one_slide", (100, 1_000) if quick else (100, 1_000, 10_000), 1 if quick else 3
    )
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1_5_15_min_before_tiling": load,
            "load_average_after_tiling": load_after,
        },
        "tiling": tiling,
        "worker": worker,
        "throughput": throughput,
        "input_pipeline": inputs,
        "accelerators": accelerators,
        "one_slide_run": one_slide,
    }
    (SLIDE_DIR / "results.quick.json" if quick else BENCH_DIR / "results.json").write_text(
        json.dumps(results, indent=1)
    )
    report(results)


def report(results: dict) -> None:
    print(f"machine: {results['machine']}")
    print("tiling at 20x / 512 px (medians over rounds; ratios per round, then their median):")
    for name, r in results["tiling"].items():
        t2, t1 = r["tiler_2"], r["tiler_1"]
        line = (
            f"  {name} ({r['slide']}, level {r['level']}, {r['read_px']} px reads, decode scale {r['decode_scale']}): "
            f"{r['tissue_tiles']} tissue tiles; tiler {t2['seconds']:.2f} s with 2 threads ({t2['tiles_per_s']:.0f} "
            f"tiles/s), {t1['seconds']:.2f} s with 1 -> x{r['speedup_2_threads']:.2f}; tissue decode floor "
            f"{r['floor_2']['seconds']:.2f} s / {r['floor_1']['seconds']:.2f} s -> {r['time_vs_floor']:.2f}x the floor "
            f"(1 thread {r['time_vs_floor_1_thread']:.2f}x; exact path {r['exact_path_time_vs_floor']:.2f}x); "
            f"{r['candidate_cells']} candidate cells, all decoded whole {r['floor_candidates_2']['seconds']:.2f} s "
            f"-> {r['time_vs_floor_candidates']:.2f}x that"
        )
        if "vips_time_over_ours" in r:
            line += f"; libvips per tile {r['vips_2']['seconds']:.2f} s -> {r['vips_time_over_ours']:.2f}x our time"
        if "naive_time_over_ours" in r:
            line += f"; naive {r['naive']['seconds']:.1f} s -> {r['naive_time_over_ours']:.1f}x"
        print(line)
        if "scaled_vs_exact" in r:
            m = r["scaled_vs_exact"]
            print(
                f"    DCT-scaled decode (1/{m['factor']}) vs exact path on {m['tiles_compared']} tissue tiles: mean "
                f"|diff| {m['mean_abs_diff']:.2f} grey levels, 99th percentile {m['p99_abs_diff']:.0f}, "
                f"{m['share_over_8']:.2%} over 8"
            )
    w = results["worker"]
    print(
        f"tiling worker: ready {w['startup_seconds']:.2f} s after start, peak RSS {w['peak_rss_mb']:.0f} MB after a "
        f"40x slide; TensorFlow loaded: {w['tensorflow_loaded']}; also loaded: {w['ready']['loaded']} "
        f"(import cost in a fresh process: {w['import_seconds_fresh_process']})"
    )
    for t in results["throughput"]:
        print(
            f"  {t['set']}, {t['slides']} slides, {t['settings']}: {t['workers_1']['slides_per_hour']:.0f} slides/h "
            f"with 1 worker, {t['workers_2']['slides_per_hour']:.0f} with 2 (x{t['speedup_2_workers']:.2f})"
        )
    print("input pipeline vs training on this CPU:")
    for r in results["input_pipeline"]:
        if "error" in r:
            print(f"  not measured: {r['error']}")
            continue
        print(
            f"  {r['config']} on {r['device']}: tf.data {r['pipeline_tiles_per_s']:.0f} tiles/s, training "
            f"{r['training_tiles_per_s']:.1f} tiles/s -> {r['pipeline_over_training']:.1f}x; inference "
            f"{r['inference_tiles_per_s']:.1f} tiles/s; {r['tile_bytes'] / 1024:.0f} KiB per stored tile"
        )
    for r in results["accelerators"]:
        print(
            f"  {r['architecture']} {r['input_px']} px on {r['devices']} x {r['device']}, {r['precision']}: training "
            f"{r['training_tiles_per_s']:.0f} tiles/s, inference {r['inference_tiles_per_s']:.0f} tiles/s"
        )
    if not results["accelerators"]:
        print("no GPU: accelerator figures (float32 / mixed precision, one / all GPUs) not measured")


if __name__ == "__main__":
    main()
