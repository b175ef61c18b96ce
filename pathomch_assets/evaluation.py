r"""Slide scores, AUCs, the ensemble vote, and correlations with expression (SPEC 3.5-3.7).

- Slide score: the percentage of a slide's tiles predicted positive (:math:`p \ge 0.5`).
- Ensemble: the ``size`` rounds with the best validation AUC; a tile is positive when at
  least ``min_votes`` of them call it positive (2 of 3: majority vote).
- Correlation: Spearman's :math:`\rho` between ensemble slide score and expression percentile,
  per trait and evaluation set, with Benjamini-Hochberg FDR across the traits of a cohort.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def slide_scores_from_tiles(probs: np.ndarray, threshold: float = 0.5) -> float:
    """Percentage (0-100) of tiles with probability at or above ``threshold``.

    Examples
    --------
    >>> slide_scores_from_tiles(np.array([0.9, 0.2, 0.5, 0.1]))
    50.0
    """
    probs = np.asarray(probs)
    return float(100.0 * (probs >= threshold).mean()) if probs.size else float("nan")


def slide_auc(labels, scores) -> float:
    """ROC AUC of slide scores against 1/0 labels; NaN when a class is missing."""
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores, float)
    ok = ~np.isnan(scores)
    labels, scores = labels[ok], scores[ok]
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def select_ensemble(val_auc: dict[str, float], size: int = 3) -> list[str]:
    """The ``size`` models with the best validation AUC (ties broken by name).

    Examples
    --------
    >>> select_ensemble({"round_0": .7, "round_1": .9, "round_2": .6, "round_3": .8, "round_4": .75})
    ['round_1', 'round_3', 'round_4']
    """
    ranked = sorted(val_auc, key=lambda m: (-np.nan_to_num(val_auc[m], nan=-1.0), m))
    return ranked[:size]


def ensemble_calls(probs: np.ndarray, threshold: float = 0.5, min_votes: int = 2) -> np.ndarray:
    """Tile calls by vote: ``probs`` is (n_models, n_tiles); positive when ``min_votes`` models agree.

    Examples
    --------
    >>> ensemble_calls(np.array([[0.9, 0.1, 0.6], [0.8, 0.7, 0.2], [0.1, 0.2, 0.55]])).tolist()
    [True, False, True]
    """
    votes = (np.asarray(probs) >= threshold).sum(axis=0)
    return votes >= min_votes


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
    """AUC per evaluation set; ``scores`` has ``patient_id, score`` (one primary slide each)."""
    rows = []
    for name, truth in sets.items():
        m = truth.merge(scores, on="patient_id").dropna(subset=["score"])
        rows.append({"eval_set": name, "auc": slide_auc(m["label"], m["score"]), "n_slides": len(m)})
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
            rows.append({"trait": trait, "eval_set": name, "spearman_rho": float(rho), "p_value": float(p),
                         "n_slides": len(m)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df.assign(fdr=pd.Series(dtype=float))
    df["fdr"] = np.nan
    for name, idx in df.groupby("eval_set").groups.items():
        df.loc[idx, "fdr"] = bh_fdr(df.loc[idx, "p_value"])
    return df
