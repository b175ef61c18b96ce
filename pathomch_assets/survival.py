"""Survival by heterogeneity (SPEC 3.10), with lifelines.

The survival set of a trait pair: patients of the held-out test set plus patients
out-of-distribution for both traits (never used to train or validate either model), one
primary (DX1) slide each.  Groups: HTI > 0.5 vs <= 0.5, and the contrast HTI > 0.7 vs <= 0.3;
Kaplan-Meier curves with 95% confidence intervals and the log-rank test.  Baselines: bulk
expression above vs below the median, per trait.  A Cox model takes HTI as a continuous covariate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def survival_set(labels: pd.DataFrame, splits: pd.DataFrame, pair: list[str]) -> set[str]:
    """Test patients plus patients in ``ood_all`` for both traits of ``pair``."""
    test = set(splits.loc[splits["split"] == "test", "patient_id"])
    ood = [set(labels.loc[(labels["trait"] == t) & (labels["subset"] == "ood_all"), "patient_id"]) for t in pair]
    return test | set.intersection(*ood)


def leaked_patients(patients: set[str], labels: pd.DataFrame, splits: pd.DataFrame, pair: list[str]) -> set[str]:
    """Survival-set patients that a model of ``pair`` trained or validated on (should be empty)."""
    used = labels[labels["trait"].isin(pair) & (labels["subset"] == "labeled")].merge(splits, on="patient_id")
    used = set(used.loc[used["split"].isin(["train", "val"]), "patient_id"])
    return patients & used


@dataclass
class GroupTest:
    grouping: str
    n_low: int
    n_high: int
    logrank_p: float
    test_statistic: float
    data: pd.DataFrame  # os_months, os_event, group (0 low, 1 high)


def logrank_groups(df: pd.DataFrame, high: pd.Series, low: pd.Series, grouping: str) -> GroupTest:
    """Log-rank test of ``df`` rows where ``high`` vs where ``low`` (boolean masks)."""
    from lifelines.statistics import logrank_test

    d = pd.concat([df[low].assign(group=0), df[high].assign(group=1)])
    a, b = d[d["group"] == 1], d[d["group"] == 0]
    if len(a) < 2 or len(b) < 2:
        return GroupTest(grouping, len(b), len(a), float("nan"), float("nan"), d)
    res = logrank_test(a["os_months"], b["os_months"], a["os_event"], b["os_event"])
    return GroupTest(grouping, len(b), len(a), float(res.p_value), float(res.test_statistic), d)


def hti_groupings(df: pd.DataFrame, split: float = 0.5, contrast_low: float = 0.3,
                  contrast_high: float = 0.7) -> list[GroupTest]:
    """HTI > ``split`` vs <= ``split``; HTI > ``contrast_high`` vs <= ``contrast_low``."""
    h = df["hti"]
    return [logrank_groups(df, h > split, h <= split, f"hti>{split:g} vs <={split:g}"),
            logrank_groups(df, h > contrast_high, h <= contrast_low, f"hti>{contrast_high:g} vs <={contrast_low:g}")]


def expression_groupings(df: pd.DataFrame, traits: list[str]) -> list[GroupTest]:
    """Baseline: bulk expression above vs below the cohort median (percentile 50), per trait."""
    out = []
    for t in traits:
        q = df[f"percentile_{t}"]
        out.append(logrank_groups(df, q > 50, q <= 50, f"{t} expression >median vs <=median"))
    return out


@dataclass
class CoxResult:
    hazard_ratio: float
    p_value: float
    ci_low: float
    ci_high: float
    n: int


def cox_hti(df: pd.DataFrame) -> CoxResult:
    """Cox proportional hazards with HTI (0-1) as the only covariate; HR per unit HTI."""
    from lifelines import CoxPHFitter

    d = df[["os_months", "os_event", "hti"]].dropna()
    if len(d) < 5 or d["hti"].nunique() < 2 or d["os_event"].sum() < 2:
        return CoxResult(np.nan, np.nan, np.nan, np.nan, len(d))
    cph = CoxPHFitter().fit(d, duration_col="os_months", event_col="os_event")
    s = cph.summary.loc["hti"]
    return CoxResult(float(s["exp(coef)"]), float(s["p"]), float(s["exp(coef) lower 95%"]),
                     float(s["exp(coef) upper 95%"]), len(d))


def plot_km(test: GroupTest, ax=None, labels=("low", "high")):
    """Kaplan-Meier curves with 95% CI for the two groups of ``test``; returns the axes."""
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter

    if ax is None:
        ax = plt.gca()
    for g, name, colour in ((0, labels[0], "tab:blue"), (1, labels[1], "tab:red")):
        d = test.data[test.data["group"] == g]
        if len(d):
            KaplanMeierFitter().fit(d["os_months"], d["os_event"], label=f"{name} (n={len(d)})").plot_survival_function(
                ax=ax, ci_show=True, color=colour)
    ax.set_title(f"{test.grouping}\nlog-rank p = {test.logrank_p:.3g}", fontsize=8)
    ax.set_xlabel("months")
    ax.set_ylabel("overall survival")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    return ax
