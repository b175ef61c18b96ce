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


#: the ``model`` of the Table 1 rows summarising the rounds (not ``round_...``: ``LIKE 'round_%'`` must not match)
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
    r = metrics[metrics["model"].str.startswith("round_")].dropna(subset=["auc"])
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


def missing_class(rows: pd.DataFrame, splits=("train", "val")) -> str | None:
    """Why a round cannot be trained or validated, or ``None``: a split of ``rows`` (labelled slides of one
    trait and round: ``split, label, patient_id, slide_id``) without both classes.

    Examples
    --------
    >>> df = pd.DataFrame({"split": ["train", "train", "val", "val"], "label": [0, 1, 1, 1],
    ...                    "patient_id": list("abcd"), "slide_id": list("abcd")})
    >>> missing_class(df)
    'the val split has only high (label 1) patients (2 patients, 2 slides)'
    """
    problems = []
    for split in splits:
        g = rows[rows["split"] == split]
        classes = set(g["label"].astype(int))
        if len(classes) < 2:
            has = "no labelled" if not classes else f"only {'high (label 1)' if 1 in classes else 'low (label 0)'}"
            problems.append(
                f"the {split} split has {has} patients ({g['patient_id'].nunique()} patients, "
                f"{g['slide_id'].nunique()} slides)"
            )
    return "; ".join(problems) or None


def exclusion_advice(cohort: str, trait: str, model: str, reason: str) -> str:
    """The warning for a round left out of its trait's ensemble: which, why, and what to change."""
    return (
        f"{cohort}/{trait} {model} is excluded from the ensemble: {reason}. The cohort is too small for "
        f"this split: add patients, raise splits.val_fraction (now too few labelled patients land in "
        f"validation), or widen labels.low_percentile/high_percentile; other rounds and traits go on"
    )


def too_few_rounds(cohort: str, trait: str, usable: list[str], excluded: dict[str, str], size: int) -> str:
    """The failure message of a trait left with fewer usable rounds than ``ensemble.size``."""
    why = "; ".join(f"{m}: {r}" for m, r in sorted(excluded.items()))
    return (
        f"{cohort}/{trait}: only {len(usable)} usable rounds ({', '.join(usable) or 'none'}) but ensemble.size is "
        f"{size}; excluded: {why}. Add patients, raise splits.val_fraction or splits.rounds, or lower "
        f"ensemble.size/min_votes for this deployment; the other traits are not affected"
    )


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
