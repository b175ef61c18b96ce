"""One new slide's sensor run against the cohort size (`make bench`, or alone: ``python -m bench.one_slide``).

A cohort of N slides (N = 100, 1,000, 10,000) is laid out as a deployment holds it: N - 1 slide files in
``slides_dir`` (hard links to one small file: never opened by the run), their rows of ``slides`` and
``tiles`` (one Parquet file per slide, ``TILES_PER_SLIDE`` tiles each) and the stored tile predictions of
an ensemble of 3 members (one file per member and slide).  A new slide (a real 20x pyramid) is dropped
in, the sensor's tick finds it, and its run's work is done in a fresh process:

- ``after``: what ``process_slides`` does now: the slide the sensor handed over (run tag, checked again),
  its ``slides``/``tiles`` partition files, its own prediction files;
- ``before``: the same work as the run did it before (the cohort folder listed, the cohort's ``slides``
  read three times, its whole ``tiles`` table, every member's cohort-wide predictions file).

Both tile the new slide for real.  Model inference on the new slide (the members run on its tiles: the
same cost whatever the cohort) is left out of both.  Measured per run: wall seconds and bytes read
(``rchar`` of ``/proc/self/io``: every byte a ``read`` returned, page cache included).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = (100, 1_000, 10_000)
TILES_PER_SLIDE = 400
MEMBERS = ("round_0", "round_1", "round_2")
TRAIT = "MKI67"
NEW = "TCGA-ZZ-ZZZZ-01Z-00-DX1"


def sid(i: int) -> str:
    return f"TCGA-A{i // 4096:01X}-{i % 4096:04X}-01Z-00-DX1"


def config(root: Path):
    from pathomch_assets.config import CohortConfig, PathomchConfig

    (root / "slides").mkdir(parents=True, exist_ok=True)
    (root / "m.tsv").touch()
    return PathomchConfig(
        data_dir=root / "out",
        duckdb_path=root / "out" / "p.duckdb",
        cohorts={"brca": CohortConfig(slides_dir=root / "slides", mrna=root / "m.tsv", traits=[TRAIT])},
    )


def build_cohort(root: Path, n: int, new_slide: Path) -> None:
    """N - 1 processed slides (files, table rows, stored predictions of every member) and one new slide."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pathomch_assets import layout
    from pathomch_assets.files import partition_filename
    from pathomch_assets.tables import TableStore

    cfg = config(root)
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    blank = root / "blank.svs"
    blank.write_bytes(b"II*\x00" + bytes(4092))
    ids = [sid(i) for i in range(n - 1)]
    for s in ids:
        os.link(blank, cfg.cohorts["brca"].slides_dir / f"{s}.svs")
    side = int(np.ceil(np.sqrt(TILES_PER_SLIDE)))
    cols, rows = np.divmod(np.arange(TILES_PER_SLIDE), side)
    rng = np.random.default_rng(0)
    slide_row = store.conform("slides", pd.DataFrame([{
        "cohort": "brca", "slide_id": ids[0], "patient_id": ids[0][:12], "path": "x", "status": "ok", "error": None,
        "n_tiles": TILES_PER_SLIDE, "tiles_digest": "d" * 32,
    }]))  # fmt: skip
    tiles = store.conform("tiles", pd.DataFrame({
        "cohort": "brca", "slide_id": ids[0], "col": cols, "row": rows, "tissue_fraction": 0.9,
        "idx": np.arange(TILES_PER_SLIDE),
    }))  # fmt: skip
    store.ensure_schema_file("slides")
    store.ensure_schema_file("tiles")
    t_slide, t_tiles = pa.Table.from_pandas(slide_row, preserve_index=False), pa.Table.from_pandas(tiles)
    legacy: dict[str, list] = {m: [] for m in MEMBERS}
    for s in ids:
        key = partition_filename(f"brca/{s}")
        col = pa.array([s] * TILES_PER_SLIDE)
        pq.write_table(
            t_slide.set_column(1, "slide_id", pa.array([s])).set_column(2, "patient_id", pa.array([s[:12]])),
            store.tables_dir / "slides" / f"{key}.parquet",
        )
        pq.write_table(t_tiles.set_column(1, "slide_id", col), store.tables_dir / "tiles" / f"{key}.parquet")
        for m in MEMBERS:
            p = pa.table({"col": cols, "row": rows, "slide_id": col, "p": rng.random(TILES_PER_SLIDE),
                          "tiles_digest": ["d" * 32] * TILES_PER_SLIDE})  # fmt: skip
            f = layout.member_predictions_file(cfg, "brca", TRAIT, m, s)
            f.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(p, f)
            legacy[m].append(p)
    for m in MEMBERS:  # the single file per member the run read before (beside the per-slide ones)
        pq.write_table(pa.concat_tables(legacy[m]), layout.predictions_file(cfg, "brca", TRAIT, m))
    layout.ensemble_file(cfg, "brca", TRAIT).parent.mkdir(parents=True, exist_ok=True)
    layout.ensemble_file(cfg, "brca", TRAIT).write_text(json.dumps({"members": list(MEMBERS)}))
    store.ensure_views()  # a deployment's views file is there already (written once, not per run)
    shutil.copy(new_slide, cfg.cohorts["brca"].slides_dir / f"{NEW}.svs")


def sensor_tag(root: Path) -> str:
    """The tick's run request for the new slide: its ``pathomch/slide`` tag."""
    import dagster as dg

    from pathomch_assets import sensors
    from pathomch_assets.partitions import slide_job_name, slides, slides_name
    from pathomch_assets.slides import SLIDE_TAG

    cfg = config(root)

    @dg.job(name=slide_job_name("brca"), partitions_def=slides("brca"))
    def job():
        pass

    with dg.instance_for_test() as instance:  # the cohort's slides are partitions already: the new one is new
        old = [f"brca/{p.stem}" for p in cfg.cohorts["brca"].slides_dir.iterdir() if p.stem != NEW]
        instance.add_dynamic_partitions(slides_name("brca"), old)
        result = sensors.build(cfg, {"brca": job})(dg.build_sensor_context(instance=instance))
    (req,) = [r for r in result.run_requests if r.partition_key == f"brca/{NEW}"]
    return req.tags[SLIDE_TAG]


class _Log:
    def info(self, msg):
        pass

    warning = error = info


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def run(root: Path, mode: str, tag: str) -> dict:
    """The new slide's run (``after`` or ``before``), in this process: seconds and bytes read."""
    import pandas as pd  # noqa: F401  (imports paid before the clock starts)

    from pathomch_assets.ingest import tile_partitions, tile_positions
    from pathomch_assets.predictions import MemberModels
    from pathomch_assets.slides import discover_cohort
    from pathomch_assets.tables import TableStore

    cfg = config(root)
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    key = f"brca/{NEW}"
    b0, t0 = rchar(), time.perf_counter()
    if mode == "after":
        out = tile_partitions(cfg, store, [key], _Log(), slide_tag=tag)
        slides = store.read("slides", "cohort = ?", ["brca"], partitions=[key])  # slide_predictions
        pos = tile_positions(store, "brca", [NEW])
        members = MemberModels(cfg, "brca", [NEW])
        store.read("slides", "cohort = ?", ["brca"], partitions=[key])  # slide_cartography
    else:
        discover_cohort("brca", cfg.cohorts["brca"])  # slide_refs listed the folder
        store.read("slides", "cohort = ?", ["brca"])  # tile_partitions: every slide's earlier row
        out = tile_partitions(cfg, store, [key], _Log(), slide_tag=tag)
        slides = store.read("slides", "cohort = ?", ["brca"])
        pos = tile_positions(store, "brca")
        members = MemberModels(cfg, "brca")
        store.read("slides", "cohort = ?", ["brca"])
    seconds, read = time.perf_counter() - t0, rchar() - b0
    (row,) = [r for r in out.rows.values()]
    assert row["status"] == "ok" and NEW in set(slides["slide_id"]) and len(pos[NEW]) == row["n_tiles"], row
    return {"seconds": seconds, "bytes_read": read, "new_slide_tiles": int(row["n_tiles"]),
            "stored_predictions_loaded": sum(len(v) for v in members.stored.values())}  # fmt: skip


def _child(root: Path, mode: str, tag: str) -> dict:
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; from bench import one_slide; "
        f"print('RESULT ' + json.dumps(one_slide.run(Path({str(root)!r}), {mode!r}, {tag!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))


def reset_new_slide(root: Path) -> None:
    """Forget the new slide's outputs, so the next run processes it as new again."""
    from pathomch_assets import layout
    from pathomch_assets.tables import TableStore

    cfg = config(root)
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    for table in ("slides", "tiles"):
        store.delete(table, f"brca/{NEW}")
    layout.tile_file(cfg, "brca", NEW).unlink(missing_ok=True)


def bench_one_slide(work: Path, sizes=SIZES, rounds: int = 3) -> dict:
    """Per cohort size: medians over ``rounds`` of the new slide's run now and as it was; the ratios
    largest / smallest cohort (``per_slide_run_ratio_*``: the goal is <= 1.25 for the run now)."""
    import statistics

    from bench.performance import make_bench_slide

    work.mkdir(parents=True, exist_ok=True)
    new_slide = make_bench_slide(work / "new.svs", 2048, seed=5, tissue_share=0.6, pyramid="svs20x")
    out: dict = {"tiles_per_slide": TILES_PER_SLIDE, "members": len(MEMBERS), "sizes": {}}
    for n in sizes:
        root = work / f"cohort_{n}"
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        build_cohort(root, n, new_slide)
        tag = sensor_tag(root)
        res: dict = {"setup_seconds": round(time.perf_counter() - t0, 1)}
        for mode in ("after", "before"):
            runs = []
            for _ in range(rounds):
                reset_new_slide(root)
                runs.append(_child(root, mode, tag))
            res[mode] = {
                "seconds": statistics.median(r["seconds"] for r in runs),
                "bytes_read": int(statistics.median(r["bytes_read"] for r in runs)),
                "new_slide_tiles": runs[0]["new_slide_tiles"],
                "stored_predictions_loaded": runs[0]["stored_predictions_loaded"],
            }
        out["sizes"][str(n)] = res
        shutil.rmtree(root, ignore_errors=True)
        print(f"{n} slides: {json.dumps(res)}", flush=True)
    lo, hi = out["sizes"][str(sizes[0])], out["sizes"][str(sizes[-1])]
    for mode in ("after", "before"):
        out[f"per_slide_run_ratio_seconds_{hi_lo(sizes)}_{mode}"] = round(hi[mode]["seconds"] / lo[mode]["seconds"], 3)
        out[f"per_slide_run_ratio_bytes_{hi_lo(sizes)}_{mode}"] = round(
            hi[mode]["bytes_read"] / lo[mode]["bytes_read"], 3
        )
    out["measured"] = time.strftime("%Y-%m-%d", time.gmtime())
    return out


def hi_lo(sizes) -> str:
    return f"{sizes[-1]}_over_{sizes[0]}"


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "pathomch-one-slide")
    ap.add_argument(
        "--results", type=Path, default=ROOT / "bench" / "results.json", help="merged under 'one_slide_run'"
    )
    args = ap.parse_args(argv)
    res = bench_one_slide(args.work, tuple(args.sizes), args.rounds)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results["one_slide_run"] = res
    args.results.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k.startswith("per_slide")}, indent=1))


if __name__ == "__main__":
    main()
