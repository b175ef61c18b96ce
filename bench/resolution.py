"""Model input size against slide AUC, HTI error and wall time (issue 19): evidence for ``training.input_px``.

For the demo's planted traits (``brca``: dark nuclei, blue tint) and the harder family (``hard``: a fine
nuclear texture and a blue tint), a small cohort of each is generated once, then the whole pipeline
(tiling, training, scoring, maps, survival) runs from scratch at each model input size in a fresh process,
with the demo's settings otherwise.  Reported per family and size: the ensemble's slide AUC on the test
patients per trait, the error of the paper's HTI and of the robust HTI against the planted HTI on the
held-out slides (the survival set, DX1), mean absolute error and Spearman, and the pipeline's wall and CPU
time.  Beside them, with the planted tile truth: the HTI normalised as ``hta`` does (``hti_present``), a
confusion-matrix correction of the combination shares (validation slides' error rates), and an upper bound
for any re-deciding of tiles from their probabilities (the per-slide threshold that is right most often),
alone and after smoothing over the grid.  ``--grid-scale 2 4`` builds the families' slides with 2 or 4 times
as many tiles across (60-100 and 250-400 tissue tiles instead of the demo's 15-25; real slides have more).

    .venv/bin/python bench/resolution.py [--patients 80] [--sizes 32 64 128] [--grid-scale 1] [--work DIR]
                                         [--reuse [--rescore]] [--out bench/resolution.json]

Writes ``--out`` and prints a Markdown table (``make bench-resolution``: both tables of docs/hti-evidence.md).
``--reuse`` keeps finished runs in ``--work`` and only re-reads their tables (after a change to the HTI
code, re-run with ``--rescore``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAMILIES = ("brca", "hard")
SPLITS = {"test_fraction": 0.3, "val_fraction": 0.15}  # the demo's


def family_spec(name: str, n_patients: int, grid_scale: int = 1):
    """The cohort spec of a family with only its survival pair as traits (the HTI's traits; fewer models)."""
    from pathomch_assets.demo_cohort import DEFAULT_COHORTS, HARDER_COHORT

    spec = HARDER_COHORT if name == "hard" else next(c for c in DEFAULT_COHORTS if c.name == name)
    traits = {t: spec.traits[t] for t in spec.survival_pair}
    return dataclasses.replace(spec, traits=traits, n_patients=n_patients, grid_scale=grid_scale)


def build_family(work: Path, name: str, n_patients: int, grid_scale: int = 1) -> Path:
    """Slides, tables and ground truth of one family under ``work/name`` (``name_g2`` for larger slides; built
    once)."""
    from bench.cohorts import UNGATED, balanced_seed
    from pathomch_assets.demo_cohort import build_demo

    out = work / (name if grid_scale == 1 else f"{name}_g{grid_scale}")
    if (out / "pathomch.yaml").exists():
        return out
    spec = family_spec(name, n_patients, grid_scale)
    build_demo(
        out,
        seed=balanced_seed((spec,), splits=SPLITS),
        cohorts=(spec,),
        workers=2,
        progress=lambda *a: None,
        overrides=UNGATED,
    )
    return out


def run_config(family_dir: Path, px: int) -> Path:
    """``pathomch_<px>.yaml`` beside the family's data: the family's config with ``input_px`` and its own outputs."""
    import yaml

    cfg = yaml.safe_load((family_dir / "pathomch.yaml").read_text())
    cfg["training"]["input_px"] = px
    cfg["data_dir"] = f"output_{px}"
    cfg["duckdb_path"] = f"output_{px}/pathomch.duckdb"
    path = family_dir / f"pathomch_{px}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_pipeline(config: Path) -> dict:
    """Child process: the whole pipeline from scratch for one config; its wall time."""
    os.environ["DAGSTER_HOME"] = str(config.parent / f"dagster_home_{config.stem}")
    from pathomch_assets.config import load_config
    from pathomch_assets.definitions import build_definitions
    from pathomch_assets.runner import materialize_all

    cfg = load_config(config)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    summary = materialize_all(build_definitions(cfg), cfg, log=lambda *a: None)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - cpu0, "failed": list(summary.failed)}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (tiling workers): less sensitive to a shared machine."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def rescore(config: Path) -> None:
    """Child process: re-materialize the maps (HTI) of a finished run with the current HTI code."""
    os.environ["DAGSTER_HOME"] = str(config.parent / f"dagster_home_{config.stem}")
    from pathomch_assets.config import load_config
    from pathomch_assets.definitions import build_definitions
    from pathomch_assets.runner import materialize_all

    cfg = load_config(config)
    materialize_all(build_definitions(cfg), cfg, selection="slide_cartography", log=lambda *a: None)


def evaluate(config: Path, cohort: str) -> dict:
    """Slide AUC per trait and HTI error (paper, robust) against the planted HTI on the held-out slides."""
    import numpy as np
    import pandas as pd
    from scipy.stats import spearmanr

    from pathomch_assets.config import load_config
    from pathomch_assets.slides import primary_slides
    from pathomch_assets.survival import survival_set
    from pathomch_assets.tables import TableStore

    cfg = load_config(config, check_files=False)
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    auc = store.read("model_metrics", "cohort = ? AND model = 'ensemble' AND eval_set = 'test'", [cohort])
    truth = pd.read_csv(config.parent / "ground_truth_slides.csv")
    pair = truth["traits"].iloc[0].split("+")
    labels, splits = store.read("labels", "cohort = ?", [cohort]), store.read("splits", "cohort = ?", [cohort])
    held = survival_set(labels, splits, pair)
    slides = primary_slides(store.read("slides", "cohort = ?", [cohort]))
    stats = store.read("hti_stats", "cohort = ? AND traits = ?", [cohort, "+".join(pair)])
    m = stats[stats["slide_id"].isin(slides.loc[slides["patient_id"].isin(held), "slide_id"])].merge(
        truth[["slide_id", "planted_hti"]], on="slide_id"
    )
    out = {"slide_auc": {r.trait: round(float(r.auc), 3) for r in auc.itertuples()}, "held_out_slides": len(m)}
    m = m.merge(other_estimates(cfg, store, config.parent, cohort, pair, held), on="slide_id")
    for col, name in (
        ("hti", "paper"),
        ("hti_robust", "robust"),
        ("hti_present", "present"),
        ("hti_confusion", "confusion"),
        ("hti_oracle_threshold", "oracle_threshold"),
        ("hti_oracle_smoothed", "oracle_smoothed"),
    ):
        out[f"{name}_mae"] = round(float(np.abs(m[col] - m["planted_hti"]).mean()), 3)
        out[f"{name}_spearman"] = round(float(spearmanr(m[col], m["planted_hti"]).statistic), 2)
    return out


def em_shares(counts, confusion, iters: int = 500):
    r"""Combination shares :math:`p` (all :math:`2^N` codes, 0 = no trait) on the simplex that maximise the
    multinomial likelihood of the observed code counts under :math:`q = M p` (EM for a known confusion matrix
    :math:`M_{ij} = P(\text{called } i \mid \text{true } j)`); :math:`M = I` returns the observed shares."""
    import numpy as np

    counts = np.asarray(counts, float)
    p = np.full(len(counts), 1 / len(counts))
    for _ in range(iters):
        q = confusion @ p
        p = p * (confusion.T @ np.divide(counts, q, out=np.zeros_like(q), where=q > 0)) / counts.sum()
        p = p / p.sum()
    return p


#: grid smoothing of the smoothed oracle, in tiles: the best of 0.5-1.3 on both families (wider erases small regions)
ORACLE_SIGMA = 0.6


def smoothed(p, mask, sigma: float = ORACLE_SIGMA):
    """``p`` (tiles x traits, the tissue tiles of ``mask`` in row-major order) averaged over the tile grid."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    weight = gaussian_filter(mask.astype(float), sigma, mode="constant")
    out = np.empty_like(p)
    for k in range(p.shape[1]):
        grid = np.zeros(mask.shape)
        grid[mask] = p[:, k]
        out[:, k] = gaussian_filter(grid, sigma, mode="constant")[mask] / weight[mask]
    return out


def oracle_calls(p, t):
    """Per trait, the calls ``p >= c`` of the threshold ``c`` that makes the most of them equal the truth ``t``."""
    import numpy as np

    calls = np.zeros_like(t)
    for k in range(t.shape[1]):
        cands = np.r_[np.unique(p[:, k]), np.inf]
        best = max(cands, key=lambda c, k=k: (((p[:, k] >= c) == t[:, k]).mean(), -abs(c - 0.5)))
        calls[:, k] = p[:, k] >= best
    return calls


def other_estimates(cfg, store, family_dir: Path, cohort: str, pair: list[str], held: set[str]):
    """Two HTI estimates beside the pipeline's, per held-out slide, with the planted tile truth:

    - ``hti_confusion``: the paper's HTI of the combination shares corrected by the ensemble's joint confusion
      matrix over the :math:`2^N` combinations, estimated on the validation patients' slides (planted truth
      there; no survival-set patient), the shares by EM (:func:`em_shares`);
    - ``hti_oracle_threshold``: an upper bound for re-deciding tiles from their probability: per slide and
      trait, the threshold on the members' mean probability that makes the most tile calls right *by the
      planted truth of that slide* (not an estimator: it reads the answer);
    - ``hti_oracle_smoothed``: the same bound for re-deciding tiles from their neighbourhood too: the
      probabilities first averaged over the tile grid (a Gaussian of ``ORACLE_SIGMA`` tiles, normalised over
      tissue), then the per-slide threshold of the planted truth.
    """
    import numpy as np
    import pandas as pd

    from pathomch_assets import layout
    from pathomch_assets.heterogeneity import combination_codes, combination_counts, hti_from_calls
    from pathomch_assets.predictions import members_of
    from pathomch_assets.tables import read_parquet

    truth = pd.read_csv(family_dir / "ground_truth_tiles.csv")
    truth = truth[(truth["cohort"] == cohort) & truth["trait"].isin(pair)]
    splits = store.read("splits", "cohort = ?", [cohort])
    rounds = {layout.round_index(r) for t in pair for r in members_of(cfg, cohort, t) or []}
    val = set(splits.loc[splits["round"].isin(rounds) & (splits["split"] == "val"), "patient_id"]) - held
    n_codes = 2 ** len(pair)

    def tiles(sid):
        calls = read_parquet(layout.slide_calls_file(cfg, cohort, sid))
        calls = calls[calls["trait"].isin(pair)]
        wide = calls.pivot_table(index=["row", "col"], columns="trait", values=["call", "p"], aggfunc="first")
        t = truth[truth["slide_id"] == sid].pivot_table(index=["row", "col"], columns="trait", values="planted_on")
        t = t.reindex(wide.index).fillna(0).astype(bool)
        rows, cols = (wide.index.get_level_values(n).to_numpy() for n in ("row", "col"))
        mask = np.zeros((rows.max() + 1, cols.max() + 1), bool)
        mask[rows, cols] = True  # row-major like the sorted (row, col) index
        return wide["call"][pair].to_numpy(bool), wide["p"][pair].to_numpy(float), t[pair].to_numpy(bool), mask

    slides = store.read("slides", "cohort = ? AND status = 'ok'", [cohort])
    confusion = np.zeros((n_codes, n_codes))
    for sid in slides.loc[slides["patient_id"].isin(val), "slide_id"]:
        calls, _, t, _ = tiles(sid)
        np.add.at(confusion, (combination_codes(calls), combination_codes(t)), 1)
    confusion = confusion / np.maximum(confusion.sum(axis=0, keepdims=True), 1)
    confusion[:, confusion.sum(axis=0) == 0] = np.eye(n_codes)[:, confusion.sum(axis=0) == 0]
    rows = []
    for sid in slides.loc[slides["patient_id"].isin(held), "slide_id"]:
        calls, p, t, mask = tiles(sid)
        shares = em_shares(combination_counts(calls), confusion)[1:]
        shares = shares / shares.sum() if shares.sum() > 0 else shares
        nz = shares[shares > 1e-12]
        h = float(-(nz * np.log(nz)).sum() / np.log(n_codes - 1)) if n_codes > 2 else 0.0
        rows.append(
            {
                "slide_id": sid,
                "hti_confusion": h,
                "hti_oracle_threshold": hti_from_calls(oracle_calls(p, t)),
                "hti_oracle_smoothed": hti_from_calls(oracle_calls(smoothed(p, mask), t)),
            }
        )
    return pd.DataFrame(rows)


def _child(fn: str, config: Path) -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from bench.resolution import {fn}; from pathlib "
    code += f"import Path; print('RESULT', json.dumps({fn}(Path({str(config)!r}))))"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{fn}({config}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=80)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument(
        "--grid-scale", type=int, nargs="+", default=[1], help="slides this many times as many tiles across"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/pathomch-resolution"))
    ap.add_argument("--reuse", action="store_true", help="keep finished runs in --work")
    ap.add_argument("--rescore", action="store_true", help="with --reuse: recompute the maps and HTI of kept runs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "resolution.json")
    args = ap.parse_args(argv)
    work = args.work
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for family, grid_scale in ((f, g) for g in args.grid_scale for f in args.families):
        fdir = build_family(work, family, args.patients, grid_scale)
        for px in args.sizes:
            config = run_config(fdir, px)
            done = fdir / f"run_{px}.json"
            load_before = load_average()
            if args.reuse and done.exists():
                timing = json.loads(done.read_text())
                if args.rescore:
                    _child("rescore", config)
            else:
                shutil.rmtree(fdir / f"output_{px}", ignore_errors=True)
                shutil.rmtree(fdir / f"dagster_home_{config.stem}", ignore_errors=True)
                timing = {**_child("run_pipeline", config), "load_before": load_before, "load_after": load_average()}
                done.write_text(json.dumps(timing))
            row = {
                "family": family,
                "input_px": px,
                "grid_scale": grid_scale,
                **timing,
                **evaluate(config, family),
            }
            runs.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "patients_per_family": args.patients,
        "note": "seconds: wall time of the whole pipeline; cpu_seconds: its CPU time (process and tiling workers); "
        "load_before/after: 1, 5, 15 min load averages around each run (the machine may be shared)",
        "runs": runs,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(runs))
    return result


def table(runs: list[dict]) -> str:
    lines = [
        "| family | grid scale | input px | slide AUC (test) | HTI MAE paper / robust | Spearman paper / robust "
        "| MAE confusion-corrected / oracle threshold / smoothed oracle | wall time | CPU time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        auc = ", ".join(f"{t} {v:.2f}" for t, v in r["slide_auc"].items())
        cpu = f"{r['cpu_seconds']:.0f} s" if "cpu_seconds" in r else "not recorded"
        lines.append(
            f"| {r['family']} | {r['grid_scale']} | {r['input_px']} | {auc} | "
            f"{r['paper_mae']:.3f} / {r['robust_mae']:.3f} | "
            f"{r['paper_spearman']:.2f} / {r['robust_spearman']:.2f} | {r['confusion_mae']:.3f} / "
            f"{r['oracle_threshold_mae']:.3f} / {r['oracle_smoothed_mae']:.3f} | "
            f"{r['seconds']:.0f} s | {cpu} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
