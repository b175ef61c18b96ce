"""Evidence for ``maps.min_auc`` (issue 29): how often the validity gate lets a chance-level trait through, and
how often it keeps a learned one, on validation sets of the demo's and of the paper's size.

Simulated, not trained: per cohort, five rounds; each round's validation patients (labelled, half high) are
drawn from the non-test labelled pool, and the round's kept model is the best of ``evals`` checkpoints by
validation AUC (as ``training.monitor: slide_auc`` keeps weights).  A checkpoint's scores are binormal of
true AUC ``auc`` (0.5: a model at chance): ``d * label + sqrt(rho) * u + sqrt(1 - rho) * e``, with ``u`` the
round model's own view of each slide (shared by its checkpoints) and ``e`` fresh per checkpoint, so ``rho``
is the correlation of two checkpoints' scores (``rho`` 0: independent checkpoints, the worst case).  That
selection on the validation set is what makes the gate's data optimistic; the simulation keeps it.  The
gate (``validity.validity_row``) then pools the rounds' validation slides and bootstraps over patients.

    .venv/bin/python bench/validity_gate.py [--cohorts 200] [--rho 0.9 0.0] [--out bench/validity_gate.json]

Prints a Markdown table: per size, true AUC and ``min_auc``, the share of cohorts whose trait passes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from pathomch_assets.evaluation import slide_auc
from pathomch_assets.validity import validity_row

#: (name, non-test labelled patients, validation patients per round, checkpoints evaluated)
SIZES = (
    ("demo (brca: 200 patients, val 15%)", 56, 12, 32),
    ("paper (BRCA: 761 patients, val 10%)", 274, 30, 64),
)
TRUE_AUC = (0.5, 0.6, 0.7, 0.8)
MIN_AUC = (0.5, 0.55, 0.6, 0.65, 0.7)


def simulate(pool: int, per_round: int, evals: int, auc: float, rho: float, rng, rounds: int = 5):
    """``labels``, ``splits`` and round ``slide_scores`` of one simulated cohort (one slide per patient)."""
    d = np.sqrt(2) * norm.ppf(auc)  # binormal separation of true AUC ``auc``
    pids = [f"TCGA-AA-{i:04d}" for i in range(pool)]
    y = np.arange(pool) % 2
    labels = pd.DataFrame({"trait": "T", "patient_id": pids, "label": y, "subset": "labeled"})
    splits, scores = [], []
    for r in range(rounds):
        val = rng.choice(pool, per_round, replace=False)
        split = np.full(pool, "train", dtype=object)
        split[val] = "val"
        splits.append(pd.DataFrame({"round": r, "patient_id": pids, "split": split}))
        best, best_auc = None, -1.0
        u = rng.normal(0, 1, pool)
        for _ in range(evals):
            s = d * y + np.sqrt(rho) * u + np.sqrt(1 - rho) * rng.normal(0, 1, pool)
            a = slide_auc(y[val], s[val])
            if a > best_auc:
                best, best_auc = s, a
        scores.append(
            pd.DataFrame({"trait": "T", "model": f"round_{r}", "patient_id": pids, "slide_id": pids, "score": best})
        )
    return labels, pd.concat(splits, ignore_index=True), pd.concat(scores, ignore_index=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohorts", type=int, default=200)
    ap.add_argument("--rho", type=float, nargs="+", default=[0.9, 0.0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("validity_gate.json"))
    args = ap.parse_args(argv)
    rows = []
    for rho, (name, pool, per_round, evals) in ((r, s) for r in args.rho for s in SIZES):
        for auc in TRUE_AUC:
            rng = np.random.default_rng(2020)
            lows, pooled = [], []
            for _ in range(args.cohorts):
                labels, splits, scores = simulate(pool, per_round, evals, auc, rho, rng)
                r = validity_row("T", labels, splits, scores, 0.6, False, n_boot=1000, seed=1)
                lows.append(r["ci_low"])
                pooled.append(r["auc"])
            lows = np.array(lows)
            row = {"size": name, "rho": rho, "true_auc": auc, "pooled_val_auc_mean": float(np.mean(pooled))}
            row.update({f"passes_{m}": float(np.mean(lows >= m)) for m in MIN_AUC})
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps({"cohorts": args.cohorts, "rows": rows}, indent=1))
    df = pd.DataFrame(rows)
    print(df.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
