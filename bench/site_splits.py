"""Site-preserved splits on a synthetic TCGA-BRCA-like cohort: solve time and class balance against
random site assignments and the per-patient split (docs/sites-and-splits.md).

    python -m bench.site_splits            # 40 sites, 1,000 patients, 10 traits -> bench/site_splits.json

Sites have log-normal sizes (a few large, many small, as TCGA's tissue source sites) and every trait's
expression is shifted per site, so its high and low classes are unevenly spread over sites.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pathomch_assets.labels import label_table
from pathomch_assets.splits import (
    assign_splits,
    balance_deviation,
    site_preserved_splits,
    split_counts,
    split_fractions,
)


def synthetic_site_cohort(
    n_sites: int = 40, n_patients: int = 1000, n_traits: int = 10, site_effect: float = 1.0, seed: int = 0
) -> tuple[pd.Series, pd.DataFrame]:
    """``(sites, labels)``: ``patient_id -> site`` (TCGA-style barcodes whose TSS is the site) and a
    ``labels`` table (SPEC 3.2 percentile labels) of ``n_traits`` traits whose expression is a per-site
    shift (standard deviation ``site_effect``) plus patient noise (standard deviation 1)."""
    rng = np.random.default_rng(seed)
    weight = rng.lognormal(0.0, 1.0, n_sites)
    sizes = np.maximum(1, np.round(weight / weight.sum() * n_patients)).astype(int)
    names = [f"{chr(65 + i // 10)}{i % 10}" for i in range(n_sites)]
    site = np.repeat(names, sizes)
    pids = [f"TCGA-{s}-{i:04d}" for i, s in enumerate(site)]
    expr = []
    for t in range(n_traits):
        value = np.repeat(rng.normal(0.0, site_effect, n_sites), sizes) + rng.normal(size=len(pids))
        expr.append(pd.DataFrame({"trait": f"T{t}", "patient_id": pids, "value": value}))
    labels = label_table(pd.concat(expr, ignore_index=True), "synthetic", 20.0, 80.0, 10.0)
    return pd.Series(site, index=pids, name="site"), labels


def random_site_splits(
    sites: pd.Series, seed: int, test_fraction: float = 0.1, val_fraction: float = 0.1, rounds: int = 5
) -> pd.DataFrame:
    """A seeded random site-preserved split (the baseline): sites in random order join test until it holds
    ``test_fraction`` of the patients; per round, the other sites in random order join validation until it
    holds ``val_fraction``; at least one site stays in each split.  Rows ``round, patient_id, split, site``."""
    rng = np.random.default_rng(seed)
    size = sites.value_counts().sort_index()
    n = size.sum()

    def take(pool: list, target: float) -> set:
        chosen, total = set(), 0
        for s in rng.permutation(pool):
            if total >= target or len(chosen) >= len(pool) - 1:
                break
            chosen.add(s)
            total += size[s]
        return chosen

    test = take(list(size.index), test_fraction * n)
    rest = [s for s in size.index if s not in test]
    rows = []
    for r in range(rounds):
        val = take(rest, val_fraction * n)
        split = {s: "test" if s in test else "val" if s in val else "train" for s in size.index}
        rows += [(r, pid, split[s], s) for pid, s in sites.items()]
    return pd.DataFrame(rows, columns=["round", "patient_id", "split", "site"])


def deviation(
    splits: pd.DataFrame, labels: pd.DataFrame, test_fraction: float = 0.1, val_fraction: float = 0.1
) -> float:
    """Mean absolute deviation (percentage points) of each trait's class shares from the split targets."""
    slides = pd.DataFrame({"patient_id": splits["patient_id"].unique()}).assign(slide_id=lambda d: d["patient_id"])
    fractions = split_fractions(test_fraction, val_fraction)
    return balance_deviation(split_counts(splits, slides, labels, fractions), fractions)


def measure(n_sites: int, n_patients: int, n_traits: int, n_random: int, seed: int) -> dict:
    sites, labels = synthetic_site_cohort(n_sites, n_patients, n_traits, seed=seed)
    start = time.process_time()
    res = site_preserved_splits(sites, labels, seed=seed)
    cpu = time.process_time() - start
    random_devs = [deviation(random_site_splits(sites, seed=k), labels) for k in range(n_random)]
    return {
        "sites": n_sites,
        "patients": int(len(sites)),
        "traits": n_traits,
        "solver_status": res.status,
        "solver_cpu_s": round(cpu, 2),
        "solver_nodes": int(res.steps["nodes"].sum()),
        "deviation_site_preserved_pp": round(deviation(res.splits, labels), 2),
        "deviation_random_sites_best_pp": round(min(random_devs), 2),
        "deviation_random_sites_median_pp": round(float(np.median(random_devs)), 2),
        "deviation_patient_split_pp": round(deviation(assign_splits(sites.index, seed), labels), 2),
        "n_random": n_random,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", type=int, nargs="+", default=[40])
    p.add_argument("--patients", type=int, default=1000)
    p.add_argument("--traits", type=int, nargs="+", default=[2, 10])
    p.add_argument("--random", type=int, default=100, help="random site assignments to compare with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).with_name("site_splits.json")))
    args = p.parse_args(argv)
    rows = [measure(s, args.patients, t, args.random, args.seed) for s in args.sites for t in args.traits]
    for row in rows:
        print(json.dumps(row))
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
