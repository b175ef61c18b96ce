"""``pathomch``: build the demo, materialize assets, query the results with SQL."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import DEMO_CONFIG, ENV_VAR, ConfigError, load_config


def _defs_and_config(config: str | None):
    if config:
        os.environ[ENV_VAR] = str(Path(config).resolve())
    cfg = load_config(config)
    from .definitions import build_definitions

    return build_definitions(cfg), cfg


def announce_config(cfg, given: str | None) -> None:
    """Say which configuration a command uses (stdout), and loudly (stderr) when it is the shipped demo's
    because neither ``--config`` nor ``$PATHOMCH_CONFIG`` named one."""
    if not given and not os.environ.get(ENV_VAR) and cfg.source and Path(cfg.source).resolve() == DEMO_CONFIG:
        print(
            f"pathomch: WARNING: no --config and no ${ENV_VAR}: using the shipped demo configuration {DEMO_CONFIG} "
            f"(outputs in {cfg.data_dir}); pass --config FILE or set ${ENV_VAR} for your own cohorts",
            file=sys.stderr,
        )
    print(f"config: {cfg.source}")


def cmd_materialize(args) -> int:
    from .runner import materialize_all

    given = args.config or None
    defs, cfg = _defs_and_config(args.config)
    announce_config(cfg, given)
    parts = [p for p in (args.partition or "").split(",") if p] or None
    summary = materialize_all(
        defs, cfg, args.select, parts, missing_only=args.missing, executor=args.executor, parallel=args.parallel
    )
    print(
        f"{summary.runs} runs in {summary.seconds:.0f} s"
        + (f" ({summary.already} partitions already materialized)" if args.missing else "")
        + f"; results in {cfg.duckdb_path}"
    )
    return _report_failures(summary)


def _report_failures(summary) -> int:
    if summary.skipped:
        print("skipped (upstream failed):\n  " + "\n  ".join(summary.skipped), file=sys.stderr)
    if summary.failed:
        print("failed:\n  " + "\n  ".join(summary.failed), file=sys.stderr)
        return 1
    return 0


def demo_dir(cfg) -> Path:
    """The folder the demo config's cohorts live in (``data/demo``)."""
    first = next(iter(cfg.cohorts.values()))
    return Path(first.slides_dir).parent.parent


def cmd_demo(args) -> int:
    from .demo_cohort import build_demo
    from .runner import materialize_all

    # the shipped demo config points into the source checkout (data/demo, data/output); --dir builds the
    # cohorts and their own config (outputs in DIR/output) anywhere, e.g. from an installed package
    config = Path(args.dir).resolve() / "pathomch.yaml" if args.dir else DEMO_CONFIG
    cfg = load_config(DEMO_CONFIG, check_files=False)
    out = config.parent if args.dir else demo_dir(cfg)
    stamp = out / "demo.json"
    built = stamp.exists() and json.loads(stamp.read_text()).get("seed") == cfg.seed and config.exists()
    family = getattr(args, "family", "demo")
    if built and json.loads(stamp.read_text()).get("family", "demo") != family:
        built = False  # another family was built there: rebuild
    if family != "demo":
        if not args.dir:
            print(f"pathomch demo: --family {family} needs --dir (a folder for its slides and config)", file=sys.stderr)
            return 2
    if args.rebuild or not built:
        print(f"building the {family} cohorts in {out} (seed {cfg.seed}) ...")
        try:
            if family == "tcga_like":
                from .demo_cohort import build_tcga_like

                build_tcga_like(out, n_patients=args.patients, seed=cfg.seed, workers=cfg.tiling.workers)
            else:
                build_demo(out, seed=cfg.seed, workers=cfg.tiling.workers, write_config=bool(args.dir))
        except (FileNotFoundError, FileExistsError) as err:
            print(f"pathomch demo: {err}", file=sys.stderr)
            return 2
    else:
        print(f"demo cohorts already built in {out} (use --rebuild to rebuild)")
    os.environ[ENV_VAR] = str(config)  # for the runs of this process and what it starts
    if args.no_materialize:
        return 0
    defs, cfg = _defs_and_config(str(config))
    summary = materialize_all(defs, cfg)
    from .tables import TableStore

    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    counts = store.query(
        " UNION ALL ".join(
            f"SELECT '{t}' AS table_name, count(*) AS n_rows FROM {t}" for t in ("slides", "tiles", "labels", "splits")
        )
    )
    print(counts.to_markdown(index=False, tablefmt="simple"))
    print("\nSlide-level AUC of the ensembles (paper Table 1 layout):")
    auc = store.query(
        "pivot (select cohort, trait, eval_set, round(auc, 2) auc from model_metrics "
        "where model = 'ensemble') on eval_set using first(auc) order by all"
    )
    print(auc.to_markdown(index=False, tablefmt="simple"))
    print("\nSurvival by heterogeneity (log-rank):")
    sv = store.query(
        "select cohort, traits, grouping, n_low, n_high, logrank_p from survival "
        "where method = 'logrank' and grouping like 'hti%' order by all"
    )
    print(sv.to_markdown(index=False, tablefmt="simple", floatfmt=".3g"))
    print(f"\n{summary.runs} runs in {summary.seconds:.0f} s.")
    print(f'Results: {cfg.duckdb_path} (DuckDB; try: pathomch sql "select status, count(*) from slides group by 1")')
    print(
        f"Files:   {cfg.data_dir} (maps: cartography/<cohort>/<slide>.png|.npz|.geojson; Kaplan-Meier: survival/*.png)"
    )
    home = os.environ.get("DAGSTER_HOME")
    ui = "make ui" if not args.dir else f"PATHOMCH_CONFIG={config} DAGSTER_HOME={home} dagster dev -m pathomch_assets"
    print(f"UI:      {ui}   (dagster dev on http://127.0.0.1:3000, DAGSTER_HOME={home})")
    return _report_failures(summary)


def cmd_sql(args) -> int:
    """Run a query on the result tables: read-only and sandboxed unless ``--write``; an error is one line."""
    import duckdb

    from .tables import ReadOnlyError, TableStore

    cfg = load_config(args.config, check_files=False)
    try:
        df = TableStore(cfg.tables_dir, cfg.duckdb_path).query(args.query, read_only=not args.write)
    except (duckdb.Error, ReadOnlyError) as err:
        print(f"pathomch sql: {_first_line(err)}", file=sys.stderr)
        return 1
    print(df.to_markdown(index=False, tablefmt="psql", floatfmt=".4g") if len(df.columns) else "(no columns)")
    print(f"({len(df)} rows)")
    return 0


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


#: slides that are usable but have no HTI row yet: tiled and not yet mapped, or whose run failed after tiling
UNMAPPED_SQL = """select s.cohort, s.slide_id, 'no HTI yet' as status, 'tiled, but not scored and mapped' as error
from slides s where s.status = 'ok' and not exists
  (select 1 from hti h where h.cohort = s.cohort and h.slide_id = s.slide_id)"""


#: slides whose ensemble scores (and so calls, maps and HTI) were made on other tiles than the slide's current ones:
#: re-tiled since (another file, other tiling settings), or scored before scores recorded their tiles
STALE_SQL = """select s.cohort, s.slide_id, 'stale' as status,
  'scored on other tiles than its current ones (re-tiled since): re-run slide_predictions and slide_cartography'
  as error
from slides s where s.status = 'ok' and exists
  (select 1 from slide_scores c where c.cohort = s.cohort and c.slide_id = s.slide_id and c.model = 'ensemble'
   and c.tiles_digest is distinct from s.tiles_digest)"""


def cmd_status(args) -> int:
    """Which slides are not processed, and why: `slides` rows that are not ok, usable slides without an
    HTI, slides whose scores are of other tiles than their current ones (stale), and slides whose runs failed
    until the new-slide sensor gave up (with the run's error)."""
    import pandas as pd

    from .runner import instance_for
    from .sensors import unprocessed_slides
    from .tables import TableStore

    cfg = load_config(args.config, check_files=False)
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    frames = [
        store.query("select cohort, slide_id, status, error from slides where status <> 'ok'"),
        store.query(UNMAPPED_SQL),
        store.query(STALE_SQL),
    ]
    failed = unprocessed_slides(instance_for(cfg))
    if failed:
        frames.append(
            pd.DataFrame(
                [
                    {
                        "cohort": f["partition_key"].partition("/")[0],
                        "slide_id": f["partition_key"].partition("/")[2],
                        "status": "run failed",
                        "error": f"{f['error']} (run {f['run_id']})",
                    }
                    for f in failed
                ]
            )
        )
    out = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else None
    if out is None:
        print("every slide is processed")
        return 0
    print(out.to_markdown(index=False, tablefmt="psql"))
    print(f"({len(out)} slides not processed)")
    return 0


def cmd_sizing(args) -> int:
    from .sizing import report

    cfg = load_config(args.config, check_files=False)
    given = {k: getattr(args, k) for k in ("tiles_per_slide", "epochs", "tiling_workers", "accelerators")}
    print(report(cfg, args.bench, **{k: v for k, v in given.items() if v is not None}))  # else sizing.ASSUMPTIONS
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pathomch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="build the demo cohorts and materialize every asset")
    p.add_argument("--rebuild", action="store_true", help="rebuild the demo cohorts even if present")
    p.add_argument("--no-materialize", action="store_true", help="only build the demo cohorts")
    p.add_argument(
        "--dir",
        help="build the demo cohorts, their config (pathomch.yaml) and outputs in this folder "
        "(default: data/demo and data/output of the source checkout)",
    )
    p.add_argument(
        "--family",
        choices=("demo", "tcga_like"),
        default="demo",
        help="demo: the demo cohorts; tcga_like: one cohort with tissue source sites, per-site stain, a site-only "
        "trait, pen marks, blur, DX2 slides and 40x slides (docs/tcga-like-family.md; needs --dir)",
    )
    p.add_argument("--patients", type=int, default=100, help="patients with slides (--family tcga_like)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("materialize", help="materialize assets for every partition")
    p.add_argument("--config", help=f"YAML configuration (default: ${ENV_VAR} or the demo)")
    p.add_argument(
        "--select",
        help="assets: a name selects it in every cohort ('slide_tiles'), cohort/name in one ('brca/trait_model+'); "
        "or Dagster's selection syntax ('key:brca/labels+', 'group:luad')",
    )
    p.add_argument("--partition", help="only these partition keys (comma separated)")
    p.add_argument(
        "--missing", action="store_true", help="only partitions not materialized yet (resume after an interrupted run)"
    )
    p.add_argument(
        "--executor",
        choices=["in_process", "multiprocess"],
        default="in_process",
        help="in_process: one process; multiprocess: a process per step (Dagster's multiprocess_executor)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="partition runs in flight at once (with --executor multiprocess)",
    )
    p.set_defaults(func=cmd_materialize)
    p = sub.add_parser("sizing", help="resources for a configuration, from measured rates (bench/results.json)")
    p.add_argument("--config", help=f"YAML configuration whose cohorts name GDC manifests (default: ${ENV_VAR})")
    p.add_argument("--bench", default="bench/results.json", help="rates measured by `make bench`")
    p.add_argument("--tiles-per-slide", type=float, help="assumed tissue tiles per slide at 20x")
    p.add_argument("--epochs", type=float, help="assumed epochs per model")
    p.add_argument("--tiling-workers", type=int)
    p.add_argument("--accelerators", type=int, help="training devices working in parallel")
    p.set_defaults(func=cmd_sizing)
    p = sub.add_parser("status", help="slides that are not processed, and why")
    p.add_argument("--config", help=f"YAML configuration (default: ${ENV_VAR} or the demo)")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("sql", help="run a SQL query against the result tables")
    p.add_argument("query")
    p.add_argument("--config", help=f"YAML configuration (default: ${ENV_VAR} or the demo)")
    p.add_argument(
        "--write",
        action="store_true",
        help="allow statements that write or reach outside the tables (COPY ... TO, ATTACH, read_csv of any "
        "file); by default a query only reads the tables",
    )
    p.set_defaults(func=cmd_sql)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"pathomch: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from .runner import OutputsLocked

        if not isinstance(err, OutputsLocked):
            raise
        print(f"pathomch: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
