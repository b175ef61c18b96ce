"""Issue 28's evidence on the TCGA-like family (docs/tcga-like-family.md, "Measured on the family").

    python -m bench.tcga_like --stain               # 150 patients, shipped tiles -> bench/tcga_like.json
    python -m bench.tcga_like --patients 150 --tiles-dir DIR --work /tmp/tcga_like_bench
    python -m bench.tcga_like --only qc             # the QC table alone (a few minutes)

Builds the family (``demo_cohort.build_tcga_like``) into ``--work`` (reused when it is already there with the same
patients, seed and source tiles), then:

1. **QC**: tiles every slide with the pipeline's tiler (``tiling.tile_slides``) with ``qc.enabled`` false and true,
   at the family's tiling (the demo's 5x / 128 px: one tile per 512 px cell at 20x, the truth's grid) and at the
   small-cohort profile's (10x / 128 px: four tiles per cell), and scores each tile against
   ``ground_truth_artifacts.csv`` and ``ground_truth_tiles.csv`` (:func:`score_qc`).
2. **Sites**: the whole pipeline (``pathomch materialize``, its own data folder and ``DAGSTER_HOME``) with the
   small-cohort profile (``pathomch_assets/configs/small_cohort.yaml``: tiling, splits, training; QC at its default,
   on) under ``splits.method: patient`` and ``site_preserved``; per trait the ensemble's test / OOD AUCs
   (``model_metrics``), the ``site_effects`` row and the ``trait_validity`` decision.
3. **Stain** (``--stain``): the same two runs with ``stain.normalize: macenko``.

``maps.include_invalid`` is true in these runs so that every HTI is computed (and its error measurable); the
gate's decision is still recorded (``trait_validity.valid``, ``hti.valid``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "pathomch_assets" / "configs" / "small_cohort.yaml"
TRUTH_PX_20X = 512  # ground_truth_*.csv cells: 512 px at 20x
PEN_LEVEL = 0.05  # a cell is "inked" when at least this share of it is under pen ink (QC drops tiles at 0.02)
TILINGS = {"family_5x_128": (5.0, 128), "profile_10x_128": (10.0, 128)}
TRAITS = ("MKI67", "FOXC1", "ESR1", "EGFR")
RUNS = {  # name: splits.method, stain.normalize (the macenko runs with --stain)
    "patient": ("patient", "none"),
    "site_preserved": ("site_preserved", "none"),
    "patient_macenko": ("patient", "macenko"),
    "site_preserved_macenko": ("site_preserved", "macenko"),
}


def cpu() -> float:
    """CPU seconds of this process and its finished children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def cells_per_tile(magnification: float, tile_px: int) -> float:
    """How many truth cells (512 px at 20x) one tile spans along an axis: 1 at 5x / 128 px, 0.5 at 10x / 128 px.

    >>> cells_per_tile(5, 128), cells_per_tile(10, 128), cells_per_tile(20, 512)
    (1.0, 0.5, 1.0)
    """
    return tile_px * 20.0 / magnification / TRUTH_PX_20X


def score_qc(
    tiles: pd.DataFrame,
    artifacts: pd.DataFrame,
    planted: pd.DataFrame,
    per_tile: float,
    pen_level: float = PEN_LEVEL,
    tile_pen: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Each tissue tile of ``tiles`` (``slide_id, col, row, idx, qc``; ``idx`` null: dropped by QC) with the
    truth of the cell it lies in.

    ``per_tile``: truth cells a tile spans (:func:`cells_per_tile`); a tile at ``(col, row)`` lies in the cell
    ``(floor(col * per_tile), floor(row * per_tile))`` (both grids start at the slide's origin; tiles
    smaller than a cell take the cell's truth). ``artifacts``: ``ground_truth_artifacts.csv`` (``slide_id, col,
    row, tissue, pen, blurred``); ``planted``: ``ground_truth_tiles.csv`` (``slide_id, col, row, trait,
    planted_on``). Columns added: ``tissue``, ``pen``, ``blurred`` (false off the truth grid), ``kept``, and
    ``category``: ``ink`` (pen share >= ``pen_level``), ``trace_ink`` (some ink, less), ``blurred``, ``clean``,
    or ``off_truth`` (a tile on no truth cell), plus ``planted_<trait>`` per trait. ``tile_pen``
    (``slide_id, col, row, pen`` on the tiles' own grid, :func:`pen_per_tile`) replaces the cell's pen share for
    tiles smaller than a cell, which may hold none of their cell's ink; tiles it does not list have none.

    >>> t = pd.DataFrame({"slide_id": ["s"] * 3, "col": [0, 1, 2], "row": [0, 0, 1], "idx": [0, None, 1],
    ...                   "qc": [None, "pen", None]})
    >>> a = pd.DataFrame({"slide_id": ["s"] * 3, "col": [0, 0, 1], "row": [0, 0, 0], "tissue": [1, 1, 1],
    ...                   "pen": [0.0, 0.0, 0.3], "blurred": [0, 0, 0]}).iloc[[0, 2]]
    >>> p = pd.DataFrame({"slide_id": ["s"], "col": [0], "row": [0], "trait": ["MKI67"], "planted_on": [1]})
    >>> score_qc(t, a, p, 0.5)[["cell_col", "category", "kept", "planted_MKI67"]].values.tolist()
    [[0, 'clean', True, True], [0, 'clean', False, True], [1, 'ink', True, False]]
    """
    out = tiles[["slide_id", "col", "row", "idx", "qc"]].copy()
    out["cell_col"] = np.floor(out["col"].to_numpy() * per_tile).astype(int)
    out["cell_row"] = np.floor(out["row"].to_numpy() * per_tile).astype(int)
    truth = artifacts[["slide_id", "col", "row", "tissue", "pen", "blurred"]].rename(
        columns={"col": "cell_col", "row": "cell_row"}
    )
    out = out.merge(truth, on=["slide_id", "cell_col", "cell_row"], how="left", validate="many_to_one")
    out["kept"] = out["idx"].notna()
    on_grid = out["tissue"].notna()
    out["pen"] = out["pen"].fillna(0.0)
    if tile_pen is not None:
        fine = out[["slide_id", "col", "row"]].merge(tile_pen, on=["slide_id", "col", "row"], how="left")
        out["pen"] = fine["pen"].fillna(0.0).to_numpy()
    out["blurred"] = out["blurred"].fillna(0).astype(bool)
    out["category"] = np.select(
        [~on_grid, out["pen"] >= pen_level, out["pen"] > 0, out["blurred"]],
        ["off_truth", "ink", "trace_ink", "blurred"],
        "clean",
    )
    on = planted[planted["planted_on"].astype(bool)]
    for trait in sorted(planted["trait"].unique()):
        cells = on[on["trait"] == trait][["slide_id", "col", "row"]]
        keys = set(zip(cells["slide_id"], cells["col"], cells["row"]))
        out[f"planted_{trait}"] = [k in keys for k in zip(out["slide_id"], out["cell_col"], out["cell_row"])]
    return out.reset_index(drop=True)


def pen_per_tile(family: Path, seed: int, tiles_dir: str | None, per_tile: float) -> pd.DataFrame:
    """The share of each tile (``per_tile`` truth cells wide) under the planted pen stroke, from the family's plan
    (``demo_cohort.plan_tcga_like`` and ``pen_mask``, 20x pixels): ``slide_id, col, row, pen`` of pen slides."""
    import dataclasses

    from pathomch_assets.demo_cohort import (
        TCGA_LIKE_COHORT,
        demo_tiles_dir,
        load_source_tiles,
        pen_mask,
        plan_tcga_like,
    )

    stamp = json.loads((family / "demo.json").read_text())["cohorts"][0]
    spec = dataclasses.replace(TCGA_LIKE_COHORT, n_patients=stamp["n_patients"])
    sources = sorted(load_source_tiles(Path(tiles_dir) if tiles_dir else demo_tiles_dir()))
    block = int(round(TRUTH_PX_20X * per_tile))
    rows = []
    for plan in plan_tcga_like(spec, seed, sources)[-1]:
        if not plan.pen:
            continue
        mask = pen_mask(plan)
        h, w = mask.shape[0] // block, mask.shape[1] // block
        share = mask[: h * block, : w * block].reshape(h, block, w, block).mean(axis=(1, 3))
        rows += [(plan.slide_id, c, r, float(share[r, c])) for r in range(h) for c in range(w) if share[r, c] > 0]
    return pd.DataFrame(rows, columns=["slide_id", "col", "row", "pen"])


def qc_table(off: pd.DataFrame, on: pd.DataFrame) -> list[dict]:
    """Rows of the QC table from :func:`score_qc` frames of the same slides tiled with QC off and on: per
    category, tissue tiles (QC off: all kept), tiles QC kept, and QC's reasons."""

    def groups(frame: pd.DataFrame) -> dict[str, pd.Series]:
        clean = frame["category"] == "clean"
        mki67, foxc1 = (frame.get(f"planted_{t}", pd.Series(False, index=frame.index)) for t in ("MKI67", "FOXC1"))
        return {
            "ink over tissue": (frame["category"] == "ink") & (frame["tissue"] == 1),
            "ink over background": (frame["category"] == "ink") & (frame["tissue"] == 0),
            "trace ink (under the pen level)": frame["category"] == "trace_ink",
            "blurred": frame["category"] == "blurred",
            "clean tissue": clean,
            "clean, MKI67 planted": clean & mki67,
            "clean, FOXC1 planted": clean & foxc1,
            "clean, nothing planted": clean & ~mki67 & ~foxc1,
        }

    rows = []
    g_off, g_on = groups(off), groups(on)
    for name in g_off:
        a, b = off[g_off[name]], on[g_on[name]]
        reasons = b.loc[~b["kept"], "qc"].value_counts().to_dict()
        rows.append(
            {
                "tiles": name,
                "tiled_qc_off": int(a["kept"].sum()),
                "kept_qc_on": int(b["kept"].sum()),
                "dropped_qc_on": int((~b["kept"]).sum()),
                "dropped_share": round(float((~b["kept"]).mean()), 4) if len(b) else None,
                "reasons": {str(k): int(v) for k, v in reasons.items()},
            }
        )
    return rows


def tile_all(family: Path, work: Path, magnification: float, tile_px: int, qc: bool) -> tuple[pd.DataFrame, dict]:
    """Every slide of the family through the pipeline's tiler; the tiles (with ``slide_id``) and run facts."""
    from pathomch_assets.qc import QcParams
    from pathomch_assets.tiling import TilingParams, tile_slides

    out = work / f"tiles_{magnification:g}x_{tile_px}_qc_{'on' if qc else 'off'}"
    done = out / "tiles.parquet"
    if done.exists():  # tiled before on this build (a new build removes the work folder's tiles)
        return pd.read_parquet(done), json.loads((out / "facts.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    params = TilingParams(magnification=magnification, tile_px=tile_px, qc=QcParams() if qc else None)
    slides = sorted((family / "tcga" / "slides").glob("*.*"))
    jobs = [
        ("tcga", p.name.rsplit(".", 1)[0], str(p), str(out / (p.name.rsplit(".", 1)[0] + ".tfrecord")), params)
        for p in slides
    ]
    c0, t0 = cpu(), time.perf_counter()
    frames: list[pd.DataFrame] = []
    status: dict[str, int] = {}
    for res in tile_slides(jobs, workers=2):
        status[res.status] = status.get(res.status, 0) + 1
        frames.append(res.tiles.assign(slide_id=res.slide_id))
    facts = {
        "slides": len(jobs),
        "status": status,
        "cpu_s": round(cpu() - c0, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    tiles = pd.concat(frames, ignore_index=True)
    tiles.to_parquet(done)
    (out / "facts.json").write_text(json.dumps(facts))
    return tiles, facts


def run_qc(family: Path, work: Path, tilings: dict[str, tuple[float, int]], seed: int, tiles_dir) -> dict:
    """The QC table at each tiling."""
    artifacts = pd.read_csv(family / "ground_truth_artifacts.csv")
    planted = pd.read_csv(family / "ground_truth_tiles.csv")
    # the plan's pen mask reproduces the written truth (cells of 512 px at 20x)
    cell_pen = pen_per_tile(family, seed, tiles_dir, 1.0)
    check = artifacts.merge(cell_pen, on=["slide_id", "col", "row"], how="left", suffixes=("", "_plan"))
    pen_check = float((check["pen"] - check["pen_plan"].fillna(0.0)).abs().max())
    ink_cells = artifacts[artifacts["pen"] >= PEN_LEVEL]
    result: dict[str, Any] = {
        "pen_plan_vs_truth_max_abs_diff": round(pen_check, 5),
        "truth_cells_inked": {
            "over_tissue": int((ink_cells["tissue"] == 1).sum()),
            "over_background": int((ink_cells["tissue"] == 0).sum()),
        },
        "truth_cells_blurred": int(artifacts["blurred"].sum()),
    }
    for name, (mag, px) in tilings.items():
        per_tile = cells_per_tile(mag, px)
        tile_pen = pen_per_tile(family, seed, tiles_dir, per_tile) if per_tile < 1 else None
        off, off_facts = tile_all(family, work, mag, px, qc=False)
        on, on_facts = tile_all(family, work, mag, px, qc=True)
        s_off = score_qc(off, artifacts, planted, per_tile, tile_pen=tile_pen)
        s_on = score_qc(on, artifacts, planted, per_tile, tile_pen=tile_pen)
        # grid check: the share of QC-off tiles whose truth cell is planted tissue (the tiler's tissue rule and the
        # truth's tissue differ at tissue edges and where ink over glass passes the tissue rule)
        result[name] = {
            "magnification": mag,
            "tile_px": px,
            "truth_cells_per_tile": per_tile,
            "pen_level": PEN_LEVEL,
            "pen_truth": "per tile, from the plan's pen mask"
            if per_tile < 1
            else "per cell (ground_truth_artifacts.csv)",
            "qc_off": off_facts,
            "qc_on": on_facts,
            "grid_check_tiles_on_truth_tissue": round(float((s_off["tissue"] == 1).mean()), 4),
            "tiles_off_truth_grid": int((s_off["category"] == "off_truth").sum()),
            "table": qc_table(s_off, s_on),
        }
        print(json.dumps({name: result[name]["table"]}, indent=1), flush=True)
    return result


def run_config(family: Path, name: str, split_method: str, normalize: str) -> Path:
    """A YAML beside the family's: its cohort, the small-cohort profile's tiling, splits and training, QC at its
    default (on), the given split method and stain normalisation, outputs under ``out_<name>``."""
    import yaml

    fam = yaml.safe_load((family / "pathomch.yaml").read_text())
    prof = yaml.safe_load(PROFILE.read_text())
    cfg = {k: v for k, v in fam.items() if k not in ("tiling", "qc", "splits", "training")}
    for section in ("tiling", "splits", "training"):
        cfg[section] = dict(prof[section])
    cfg["splits"]["method"] = split_method
    cfg["stain"] = {"normalize": normalize}
    cfg["maps"] = {**fam.get("maps", {}), "include_invalid": True}
    cfg["data_dir"] = f"out_{name}"
    cfg["duckdb_path"] = f"out_{name}/pathomch.duckdb"
    path = family / f"pathomch_{name}.yaml"
    path.write_text(f"# bench/tcga_like.py run {name}\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_pipeline(family: Path, work: Path, name: str, split_method: str, normalize: str = "none") -> dict:
    """``pathomch materialize`` on the family with its own data folder and Dagster instance; the tables read."""
    from pathomch_assets.config import load_config
    from pathomch_assets.tables import TableStore

    config = run_config(family, name, split_method, normalize)
    home = work / f"dagster_home_{name}"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    c0, t0 = cpu(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pathomch_assets.cli", "materialize", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
    )
    (work / f"run_{name}.log").write_text(proc.stdout + proc.stderr)
    facts = {
        "config": config.name,
        "returncode": proc.returncode,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(cpu() - c0, 1),
        "split_method": split_method,
        "stain_normalize": normalize,
    }
    cfg = load_config(config)
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    return {**facts, **read_results(store, family)}


def read_results(store, family: Path) -> dict:
    """Per trait: ensemble AUCs, the site_effects row, the trait_validity decision; the HTI error."""
    metrics = store.query("select trait, eval_set, auc, n_slides from model_metrics where model = 'ensemble'")
    site = store.query("select * from site_effects")
    valid = store.query("select * from trait_validity")
    traits = {}
    for trait in TRAITS:
        m = metrics[metrics["trait"] == trait].set_index("eval_set")
        s = site[site["trait"] == trait]
        v = valid[valid["trait"] == trait]
        row: dict[str, Any] = {f"auc_{k}": _num(m.loc[k, "auc"]) for k in m.index}
        row.update({f"n_{k}": int(m.loc[k, "n_slides"]) for k in m.index})
        if len(s):
            s = s.iloc[0]
            row["site_effects"] = {
                k: _num(s[k]) if isinstance(s[k], float | np.floating) else (None if pd.isna(s[k]) else s[k])
                for k in (
                    "test",
                    "p_value",
                    "cramers_v",
                    "site_dependent",
                    "auc_seen_sites",
                    "n_seen_slides",
                    "auc_unseen_sites",
                    "n_unseen_slides",
                    "site_from_scores_bacc",
                    "site_from_scores_chance",
                    "site_from_stain_bacc",
                    "note",
                )
            }
        if len(v):
            v = v.iloc[0]
            row["validity"] = {
                "valid": bool(v["valid"]),
                "auc": _num(v["auc"]),
                "ci_low": _num(v["ci_low"]),
                "auc_unseen_sites": _num(v["auc_unseen_sites"]),
                "n_unseen_slides": _int(v["n_unseen_slides"]),
                "reason": v["reason"],
            }
        traits[trait] = row
    for k, val in list(traits.items()):
        traits[k] = json.loads(json.dumps(val, default=_plain))
    splits = store.query("select distinct split, site from splits where round = 0 order by split, site")
    sites = {k: sorted(g["site"].dropna().unique().tolist()) for k, g in splits.groupby("split")}
    truth = pd.read_csv(family / "ground_truth_slides.csv")
    hti = store.query(
        "select slide_id, patient_id, hti, valid, n_tiles_qc_dropped from hti where traits = 'MKI67+FOXC1'"
    )
    test = set(store.query("select distinct patient_id from splits where split = 'test'")["patient_id"])
    h = hti.merge(truth[["slide_id", "planted_hti"]], on="slide_id")
    h = h[h["slide_id"].str.contains("-DX1.")]
    ht = h[h["patient_id"].isin(test)]
    return {
        "sites_round0": sites,
        "traits": traits,
        "hti_mae_dx1_all": _num((h["hti"] - h["planted_hti"]).abs().mean()) if len(h) else None,
        "hti_mae_dx1_test": _num((ht["hti"] - ht["planted_hti"]).abs().mean()) if len(ht) else None,
        "n_hti_dx1_test": len(ht),
        "hti_valid": None if not len(hti) else bool(hti["valid"].fillna(False).all()),
        "qc_dropped_tiles": int(hti["n_tiles_qc_dropped"].fillna(0).sum()) if len(hti) else None,
    }


def _num(x) -> float | None:
    return None if x is None or pd.isna(x) else round(float(x), 4)


def _int(x) -> int | None:
    return None if x is None or pd.isna(x) else int(x)


def _plain(x):
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return str(x)


def work_of(family: Path) -> Path:
    """The work folder that holds ``family`` (``--work``)."""
    return family.parent


def build(family: Path, patients: int, seed: int, tiles_dir: str | None) -> dict:
    """Build the family unless ``family`` already holds this build."""
    from pathomch_assets.demo_cohort import build_tcga_like

    stamp = family / "demo.json"
    want = {"n_patients": patients, "seed": seed, "tiles_dir": tiles_dir}
    mark = family / "bench_build.json"
    if stamp.exists() and mark.exists() and json.loads(mark.read_text()) == want:
        return {**want, "built": False}
    c0, t0 = cpu(), time.perf_counter()
    import shutil

    stale = [*work_of(family).glob("tiles_*x_*_qc_*"), *work_of(family).glob("dagster_home_*"), *family.glob("out_*")]
    for old in stale:  # tiles and runs of an earlier build
        shutil.rmtree(old)
    build_tcga_like(family, n_patients=patients, seed=seed, tiles_dir=tiles_dir, workers=2)
    mark.write_text(json.dumps(want))
    return {**want, "built": True, "cpu_s": round(cpu() - c0, 1), "wall_s": round(time.perf_counter() - t0, 1)}


def _f(x, digits: int = 2) -> str:
    return "-" if x is None else (("yes" if x else "no") if isinstance(x, bool) else f"{x:.{digits}f}")


def markdown(result: dict) -> str:
    """The tables of docs/tcga-like-family.md ("Measured on the family") from ``bench/tcga_like.json``."""
    lines = []
    for q in result.get("qc", {}).values():
        if not isinstance(q, dict) or "table" not in q:
            continue
        per = q["truth_cells_per_tile"]
        lines += [
            f"QC, tiled at {q['magnification']:g}x / {q['tile_px']} px ({per:g} truth cells per tile):",
            "",
            "| tiles | QC off: tiled | QC on: kept | dropped | why dropped |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in q["table"]:
            share = "-" if r["dropped_share"] is None else f"{100 * r['dropped_share']:.1f} %"
            why = ", ".join(f"{k} {v}" for k, v in r["reasons"].items()) or "-"
            lines.append(f"| {r['tiles']} | {r['tiled_qc_off']} | {r['kept_qc_on']} | {share} | {why} |")
        lines.append("")
    runs = result.get("runs", {})
    if runs:
        lines += [
            "| run | trait | test AUC | OOD-near | OOD-all | labels by site: p (Cramer's V) | site-dependent "
            "| AUC seen / unseen sites | site from scores (chance) | gate: val AUC [low] / unseen | gate |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for run, r in runs.items():
            for trait, t in r.get("traits", {}).items():
                se, v = t.get("site_effects", {}), t.get("validity", {})
                lines.append(
                    f"| {run} | {trait} | {_f(t.get('auc_test'))} | {_f(t.get('auc_ood_near'))} "
                    f"| {_f(t.get('auc_ood_all'))} | {se.get('p_value', float('nan')):.2g} ({_f(se.get('cramers_v'))}) "
                    f"| {_f(se.get('site_dependent'))} | {_f(se.get('auc_seen_sites'))} / "
                    f"{_f(se.get('auc_unseen_sites'))} | {_f(se.get('site_from_scores_bacc'))} "
                    f"({_f(se.get('site_from_scores_chance'))}) | {_f(v.get('auc'))} [{_f(v.get('ci_low'))}] / "
                    f"{_f(v.get('auc_unseen_sites'))} | {'passes' if v.get('valid') else 'fails'} |"
                )
        lines += ["", "| run | HTI MAE, DX1 test slides (n) | HTI MAE, all DX1 | wall s |", "| --- | --- | --- | --- |"]
        for run, r in runs.items():
            lines.append(
                f"| {run} | {_f(r.get('hti_mae_dx1_test'), 3)} ({r.get('n_hti_dx1_test')}) "
                f"| {_f(r.get('hti_mae_dx1_all'), 3)} | {r.get('wall_s')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=150)
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--tiles-dir", help="more source slides, laid out as data/tcga_tiles (default: the shipped tiles)")
    ap.add_argument("--work", default="/tmp/tcga_like_bench", help="family, tiles and runs (reused when present)")
    ap.add_argument("--only", choices=("qc", "sites"), help="one part only")
    ap.add_argument("--stain", action="store_true", help="also the stain.normalize: macenko runs")
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), help="these pipeline runs only (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "tcga_like.json"))
    ap.add_argument("--tables", action="store_true", help="print the tables of --out as Markdown; run nothing")
    args = ap.parse_args(argv)
    if args.tables:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    work = Path(args.work)
    family = work / "family"
    out = Path(args.out)
    result: dict = {}
    result["family"] = build(family, args.patients, args.seed, args.tiles_dir)
    truth = pd.read_csv(family / "ground_truth_slides.csv")
    result["family"].update(
        {
            "slides": len(truth),
            "sites": sorted(truth["site"].unique().tolist()),
            "slides_with_pen": int((truth["pen"].fillna("") != "").sum()),
            "slides_with_blur": int((truth["blurred_cells"] > 0).sum()),
        }
    )
    result["measured"] = time.strftime("%Y-%m-%d")

    def save():  # parts of earlier invocations (--only) are kept; this one's replace theirs
        old = json.loads(out.read_text()) if out.exists() else {}
        runs = {**old.get("runs", {}), **result.get("runs", {})}
        merged = {**old, **result, **({"runs": runs} if runs else {})}
        out.write_text(json.dumps(merged, indent=1, default=_plain) + "\n")

    if args.only in (None, "qc"):
        result["qc"] = run_qc(family, work, TILINGS, args.seed, args.tiles_dir)
        save()
    if args.only in (None, "sites"):
        runs = result.setdefault("runs", {})
        plan = [(name, *RUNS[name]) for name in args.runs or RUNS if args.stain or RUNS[name][1] == "none"]
        for name, method, normalize in plan:
            runs[name] = run_pipeline(family, work, name, method, normalize)
            save()
            print(json.dumps({name: runs[name]}, indent=1, default=_plain), flush=True)
    save()


if __name__ == "__main__":
    main()
