"""Cost of artifact QC at tiling time (issue 28): the same slide tiled with ``qc`` on and off, interleaved.

    python bench/qc_overhead.py [--size 20480] [--rounds 5] [--threads 1] [--out bench/qc_overhead.json]

The slide is ``bench/performance.py``'s TCGA-shaped 40x pyramid (real TCGA tiles on about half the grid, no 20x
level: the DCT-scaled path).  Each round tiles it once with QC off and once on (order alternating), in this
process; wall and CPU seconds, median over rounds, and the per-round ratio's median.  CPU seconds are the
steadier measure on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from performance import make_bench_slide  # noqa: E402

from pathomch_assets.qc import QcParams  # noqa: E402
from pathomch_assets.tiling import TilingParams, tile_slide  # noqa: E402


def once(slide: Path, out: Path, qc: QcParams | None, threads: int) -> tuple[float, float, int, int]:
    t0, c0 = time.perf_counter(), time.process_time()
    res = tile_slide("bench", "bench", slide, out, TilingParams(20, 512, threads=threads, qc=qc))
    assert res.status == "ok", res.error
    return time.perf_counter() - t0, time.process_time() - c0, res.n_kept, res.n_qc_dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20480, help="slide side at 20x, px")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qc_bench_"))
    slide = make_bench_slide(work / "bench40x.svs", args.size)
    once(slide, work / "warm.tfrecord", QcParams(), args.threads)  # page cache, imports, the colour table
    runs: dict[str, list[tuple[float, float, int, int]]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
            runs[name].append(
                once(slide, work / f"{name}.tfrecord", QcParams() if name == "on" else None, args.threads)
            )
    wall = [on[0] / off[0] for on, off in zip(runs["on"], runs["off"])]
    cpu = [on[1] / off[1] for on, off in zip(runs["on"], runs["off"])]
    result = {
        "slide_px_20x": args.size,
        "threads": args.threads,
        "rounds": args.rounds,
        "tiles_kept_off": runs["off"][0][2],
        "tiles_kept_on": runs["on"][0][2],
        "tiles_qc_dropped": runs["on"][0][3],
        "wall_s_off": statistics.median(x[0] for x in runs["off"]),
        "wall_s_on": statistics.median(x[0] for x in runs["on"]),
        "cpu_s_off": statistics.median(x[1] for x in runs["off"]),
        "cpu_s_on": statistics.median(x[1] for x in runs["on"]),
        "wall_ratio_median": statistics.median(wall),
        "cpu_ratio_median": statistics.median(cpu),
        "wall_ratios": [round(x, 3) for x in wall],
        "cpu_ratios": [round(x, 3) for x in cpu],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
