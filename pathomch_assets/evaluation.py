r"""Slide-level AUCs, the paper's Table 1, and correlations with expression (SPEC 3.5-3.7).

- AUC: over slides, each with its patient's label, per evaluation set (test, validation, OOD).
- Table 1: per trait the test AUC of the ensemble and the mean (min-max) of the trained rounds.
- Correlation: Spearman's :math:`\rho` between ensemble slide score and expression percentile,
  per trait and evaluation set, with Benjamini-Hochberg FDR across the traits of a cohort.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .layout import is_round


def slide_auc(labels, scores) -> float:
    r"""ROC AUC of slide scores against 1/0 labels; NaN when a class is missing.

    The Mann-Whitney form, :math:`(R_1 - n_1(n_1+1)/2) / (n_1 n_0)` with :math:`R_1` the sum of the
    positives' mid-ranks: equal to scikit-learn's ``roc_auc_score`` (ties count one half), without its
    input checks, as training computes it at every evaluation.

    >>> slide_auc([0, 0, 1, 1], [10.0, 40.0, 35.0, 80.0])
    0.75
    >>> slide_auc([0, 1, 1], [5.0, 5.0, 9.0])
    0.75
    """
    from scipy.stats import rankdata

    labels, scores = np.asarray(labels), np.asarray(scores, float)
    ok = ~np.isnan(scores)
    labels, scores = labels[ok] == 1, scores[ok]
    n1 = int(labels.sum())
    n0 = len(labels) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def evaluation_sets(labels: pd.DataFrame, splits: pd.DataFrame, round_: int | None) -> dict[str, pd.DataFrame]:
    """Patients and ground truth per evaluation set for one trait.

    ``val`` and ``test``: labelled patients of that split (``round_`` picks the round; the test
    set is the same in every round).  ``ood_near`` and ``ood_all``: the OOD subsets with their
    above/below-median truth.  Returns ``{eval_set: frame(patient_id, label)}``.
    """
    sp = splits[splits["round"] == (round_ if round_ is not None else splits["round"].min())]
    lab = labels[labels["subset"] == "labeled"].merge(sp[["patient_id", "split"]], on="patient_id")
    out = {"test": lab[lab["split"] == "test"][["patient_id", "label"]]}
    if round_ is not None:
        out["val"] = lab[lab["split"] == "val"][["patient_id", "label"]]
    for subset in ("ood_near", "ood_all"):
        out[subset] = labels[labels["subset"] == subset][["patient_id", "label"]]
    return out


def metrics_rows(scores: pd.DataFrame, sets: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Slide-level AUC per evaluation set (SPEC 3.5): ``scores`` has ``patient_id, score``, one row per
    slide (a patient with two diagnostic slides counts twice, each slide with the patient's label)."""
    rows = []
    for name, truth in sets.items():
        m = truth.merge(scores, on="patient_id").dropna(subset=["score"])
        rows.append(
            {
                "eval_set": name,
                "auc": slide_auc(m["label"], m["score"]),
                "n_slides": len(m),
                "n_patients": m["patient_id"].nunique(),
            }
        )
    return pd.DataFrame(rows)


#: the ``model`` of the Table 1 rows summarising the rounds (not a round name: ``LIKE 'round_%'`` must not match)
ROUNDS_MEAN = "mean_of_rounds"


def rounds_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per evaluation set, the mean AUC of the trained rounds with its min-max range (paper Table 1: test
    5-run mean).  ``metrics``: ``model_metrics`` rows of one trait; rounds without an AUC are left out.

    Examples
    --------
    >>> m = pd.DataFrame({"model": ["round_0", "round_1", "round_2", "ensemble"], "eval_set": ["test"] * 4,
    ...                   "auc": [0.6, 0.8, 0.7, 0.9], "n_slides": [10] * 4})
    >>> rounds_summary(m)[["eval_set", "auc", "auc_min", "auc_max", "n_models"]].round(2).values.tolist()
    [['test', 0.7, 0.6, 0.8, 3]]
    """
    r = metrics[metrics["model"].map(is_round).astype(bool)].dropna(subset=["auc"])
    rows = [
        {
            "model": ROUNDS_MEAN,
            "eval_set": name,
            "auc": float(g["auc"].mean()),
            "auc_min": float(g["auc"].min()),
            "auc_max": float(g["auc"].max()),
            "n_models": int(g["model"].nunique()),
            "n_slides": int(g["n_slides"].max()),
        }
        for name, g in r.groupby("eval_set", sort=False)
    ]
    return pd.DataFrame(rows, columns=["model", "eval_set", "auc", "auc_min", "auc_max", "n_models", "n_slides"])


def table_one(metrics: pd.DataFrame, traits: list[str]) -> pd.DataFrame:
    """Paper Table 1 layout: per trait, the test mean of the trained rounds with its min and max and how many
    rounds, test ensemble, OOD-near and OOD-all ensemble (slide-level AUCs).  ``metrics``: the cohort's
    ``model_metrics`` rows; a trait without rows (no model, no ensemble) gets NaN.

    Examples
    --------
    >>> m = pd.DataFrame({"trait": ["A"] * 3, "model": ["round_0", "round_1", "ensemble"], "eval_set": ["test"] * 3,
    ...                   "auc": [0.6, 0.8, 0.9], "n_slides": [10] * 3})
    >>> table_one(m, ["A", "B"]).round(2).values.tolist()
    [['A', 0.7, 0.6, 0.8, 2, 0.9, nan, nan], ['B', nan, nan, nan, 0, nan, nan, nan]]
    """
    rows = []
    for trait in traits:
        m = metrics[metrics["trait"] == trait]
        test = rounds_summary(m).set_index("eval_set")
        ens = m[m["model"] == "ensemble"].set_index("eval_set")["auc"]
        has = "test" in test.index
        rows.append(
            {
                "trait": trait,
                "test (mean of runs)": test.at["test", "auc"] if has else np.nan,
                "min": test.at["test", "auc_min"] if has else np.nan,
                "max": test.at["test", "auc_max"] if has else np.nan,
                "runs": int(test.at["test", "n_models"]) if has else 0,
                "test (ensemble)": ens.get("test", np.nan),
                "OOD-near (ensemble)": ens.get("ood_near", np.nan),
                "OOD-all (ensemble)": ens.get("ood_all", np.nan),
            }
        )
    return pd.DataFrame(rows)


def bh_fdr(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (statsmodels), NaN kept as NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return out


def correlation_rows(scores: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """Spearman of ensemble slide score vs expression percentile, per trait and set, BH FDR per set.

    ``scores``: ``trait, patient_id, score`` (ensemble); ``labels``: the cohort's labels table.
    """
    from scipy.stats import spearmanr

    test_patients = set(splits.loc[splits["split"] == "test", "patient_id"])
    rows = []
    for trait, lab in labels.groupby("trait"):
        sc = scores[scores["trait"] == trait][["patient_id", "score"]]
        pct = lab.drop_duplicates("patient_id")[["patient_id", "percentile"]]
        sets = {
            "test": lab[(lab["subset"] == "labeled") & lab["patient_id"].isin(test_patients)]["patient_id"],
            "ood_near": lab[lab["subset"] == "ood_near"]["patient_id"],
            "ood_all": lab[lab["subset"] == "ood_all"]["patient_id"],
        }
        for name, pids in sets.items():
            m = pct[pct["patient_id"].isin(set(pids))].merge(sc, on="patient_id").dropna()
            if len(m) >= 3 and m["score"].nunique() > 1:
                rho, p = spearmanr(m["score"], m["percentile"])
            else:
                rho, p = np.nan, np.nan
            rows.append(
                {"trait": trait, "eval_set": name, "spearman_rho": float(rho), "p_value": float(p), "n_slides": len(m)}
            )
    df = pd.DataFrame(rows)
    if df.empty:
        return df.assign(fdr=pd.Series(dtype=float))
    df["fdr"] = np.nan
    for idx in df.groupby("eval_set").groups.values():
        df.loc[idx, "fdr"] = bh_fdr(df.loc[idx, "p_value"])
    return df
