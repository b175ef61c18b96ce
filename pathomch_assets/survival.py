r"""Survival by heterogeneity (SPEC 3.10), with lifelines.

The survival set of a trait pair: patients of the held-out test set plus patients
out-of-distribution for both traits (never used to train or validate either model), one
primary (DX1) slide each.  Groups: HTI > 0.5 vs <= 0.5, and the contrast HTI > 0.7 vs <= 0.3;
Kaplan-Meier curves with 95% confidence intervals and the log-rank test.  Baselines: bulk
expression above vs below the median, per trait.  A Cox model takes HTI as a continuous covariate.
Beyond the paper (issue 19): Harrell's concordance index of HTI, number-at-risk tables under every
Kaplan-Meier plot, the same groupings by the robust HTI, and HTI by above/below-median expression
(paper Figure 5b).
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


def survival_frame(
    pair: list[str],
    labels: pd.DataFrame,
    splits: pd.DataFrame,
    primary: pd.DataFrame,
    hti: pd.DataFrame,
    stats: pd.DataFrame,
    clinical: pd.DataFrame,
) -> tuple[pd.DataFrame, set[str]]:
    """One row per survival-set patient of ``pair`` with its DX1 slide's HTI and robust HTI, survival, and
    expression percentile per trait (``percentile_<trait>``); and the survival set itself.

    Parameters
    ----------
    pair: list of str
        The two traits.
    labels, splits: DataFrame
        The cohort's ``labels`` rows and ``splits`` rows of round 0.
    primary: DataFrame
        One slide per patient (``slides.primary_slides``): ``patient_id, slide_id``.
    hti, stats: DataFrame
        The pair's ``hti`` and ``hti_stats`` rows.
    clinical: DataFrame
        The cohort's ``clinical`` rows.
    """
    patients = survival_set(labels, splits, pair)
    hti = hti[["slide_id", "hti"]].merge(
        stats[["slide_id", "hti_robust", "ci_low", "ci_high", "p_spatial"]], on="slide_id", how="left"
    )
    df = primary[primary["patient_id"].isin(patients)][["patient_id", "slide_id"]]
    df = df.merge(hti, on="slide_id").merge(
        clinical[["patient_id", "os_months", "os_event", "er_status", "subtype"]], on="patient_id"
    )
    for t in pair:
        pct = labels[labels["trait"] == t].drop_duplicates("patient_id").set_index("patient_id")["percentile"]
        df[f"percentile_{t}"] = df["patient_id"].map(pct)
    return df, patients


def leaked_patients(patients: set[str], labels: pd.DataFrame, splits: pd.DataFrame, pair: list[str]) -> set[str]:
    """Survival-set patients that a model of ``pair`` trained or validated on (should be empty)."""
    used = labels[labels["trait"].isin(pair) & (labels["subset"] == "labeled")].merge(splits, on="patient_id")
    used = set(used.loc[used["split"].isin(["train", "val"]), "patient_id"])
    return patients & used


@dataclass
class GroupTest:
    r"""A log-rank test of overall survival between two groups of patients (lifelines ``logrank_test``).

    Null hypothesis: the two groups have the same survival function,
    :math:`H_0: S_{high}(t) = S_{low}(t)` for all :math:`t` (equivalently, the same hazard).  With
    :math:`O_{j}` the deaths in the high group at death time :math:`t_j`, :math:`E_{j}` those expected
    under :math:`H_0` and :math:`V_j` its hypergeometric variance,

    .. math::

        Z = \frac{\left(\sum_j (O_j - E_j)\right)^2}{\sum_j V_j} \sim \chi^2_1 \text{ under } H_0 .

    Attributes
    ----------
    grouping: str
        What was compared, e.g. ``hti>0.5 vs <=0.5``.
    n_low, n_high: int
        Patients in the low and the high group.
    logrank_p: float
        :math:`P(\chi^2_1 \ge Z)`; NaN when a group has fewer than 2 patients.
    test_statistic: float
        :math:`Z` above; NaN likewise.
    data: DataFrame
        ``os_months, os_event, group`` (0 low, 1 high): what the Kaplan-Meier plot draws.
    reason: str or None
        Why ``logrank_p`` is NaN (:func:`untestable`), None when the test was made.
    """

    grouping: str
    n_low: int
    n_high: int
    logrank_p: float
    test_statistic: float
    data: pd.DataFrame
    reason: str | None = None  # why there is no test (NaN p) when there is none


def logrank_groups(df: pd.DataFrame, high: pd.Series, low: pd.Series, grouping: str) -> GroupTest:
    """Log-rank test of ``df`` rows where ``high`` vs where ``low`` (boolean masks)."""
    from lifelines.statistics import logrank_test

    d = pd.concat([df[low].assign(group=0), df[high].assign(group=1)])
    a, b = d[d["group"] == 1], d[d["group"] == 0]
    why = "a group has fewer than 2 patients" if len(a) < 2 or len(b) < 2 else untestable(d, min_events=1, pairs=False)
    if why:
        return GroupTest(grouping, len(b), len(a), float("nan"), float("nan"), d, why)
    res = logrank_test(a["os_months"], b["os_months"], a["os_event"], b["os_event"])
    return GroupTest(grouping, len(b), len(a), float(res.p_value), float(res.test_statistic), d)


def untestable(
    d: pd.DataFrame, min_patients: int = 2, min_events: int = 2, column: str | None = None, pairs: bool = True
) -> str | None:
    """Why ``d`` (``os_months, os_event`` and ``column``) supports no survival test, or None.

    Degenerate data are stated, not tested: no patient; every patient censored (a log-rank p of 1 with no
    death says nothing); no *admissible pair*, e.g. every patient dead at month 0: with ``pairs`` (concordance,
    Cox) no patient was followed longer than a death; without (log-rank) at every death time everyone at risk
    died, so the test's variance is 0; too few deaths or one covariate value.

    Examples
    --------
    >>> untestable(pd.DataFrame({"os_months": [0.0, 0.0, 0.0], "os_event": [1, 1, 1]}))
    'no admissible pair: no patient was followed longer than a death (3 deaths, all at month 0)'
    """
    if len(d) < min_patients:
        return f"{len(d)} patients (fewer than {min_patients})"
    events = d["os_event"].astype(bool)
    if not events.any():
        return f"every patient is censored (0 deaths among {len(d)}): no survival difference can be tested"
    t = d["os_months"]
    if pairs:
        informative = bool((t[events] < t.max()).any())
    else:  # some death time with a survivor at risk: a non-zero hypergeometric variance
        informative = any((t >= s).sum() > (events & (t == s)).sum() for s in t[events].unique())
    if not informative:
        times = t[events].unique()
        when = f"all at month {times[0]:g}" if len(times) == 1 else f"at {len(times)} times"
        why = "no patient was followed longer than a death" if pairs else "at each death time everyone at risk died"
        return f"no admissible pair: {why} ({int(events.sum())} deaths, {when})"
    if events.sum() < min_events:
        return f"{int(events.sum())} deaths (fewer than {min_events})"
    if column is not None and d[column].nunique() < 2:
        return f"{column} has a single value ({d[column].iloc[0]:g}) among {len(d)} patients"
    return None


def hti_groupings(
    df: pd.DataFrame, split: float = 0.5, contrast_low: float = 0.3, contrast_high: float = 0.7, column: str = "hti"
) -> list[GroupTest]:
    """HTI > ``split`` vs <= ``split``; HTI > ``contrast_high`` vs <= ``contrast_low`` (``column``: ``hti``
    or ``hti_robust``, which names the groupings)."""
    h = df[column]
    return [
        logrank_groups(df, h > split, h <= split, f"{column}>{split:g} vs <={split:g}"),
        logrank_groups(df, h > contrast_high, h <= contrast_low, f"{column}>{contrast_high:g} vs <={contrast_low:g}"),
    ]


def concordance(df: pd.DataFrame, column: str = "hti") -> tuple[float, int]:
    """Harrell's C of ``column`` as a risk score (lifelines ``concordance_index``) and the patients used.

    Above 0.5: patients with a higher HTI die sooner; 0.5: no information.  NaN below 5 patients or 2 events.
    """
    from lifelines.utils import concordance_index

    d = df[["os_months", "os_event", column]].dropna()
    if untestable(d, 5, 2, column):
        return float("nan"), len(d)
    return float(concordance_index(d["os_months"], -d[column], d["os_event"])), len(d)


def expression_groupings(df: pd.DataFrame, traits: list[str]) -> list[GroupTest]:
    """Baseline: bulk expression above vs below the cohort median (percentile 50), per trait."""
    out = []
    for t in traits:
        q = df[f"percentile_{t}"]
        out.append(logrank_groups(df, q > 50, q <= 50, f"{t} expression >median vs <=median"))
    return out


@dataclass
class CoxResult:
    r"""A Cox proportional-hazards model with one covariate :math:`x` (the HTI, 0-1), fitted by lifelines'
    ``CoxPHFitter`` (Efron's method for tied deaths, as R's ``survival::coxph``).

    Model: :math:`h(t \mid x) = h_0(t) \exp(\beta x)`.  Null hypothesis of ``p_value`` (Wald test):
    :math:`H_0: \beta = 0` (HTI does not change the hazard), with

    .. math::

        z = \hat\beta / \widehat{se}(\hat\beta), \qquad p = 2\,(1 - \Phi(|z|)) .

    Attributes
    ----------
    hazard_ratio: float
        :math:`\exp(\hat\beta)`: the hazard ratio between HTI 1 and HTI 0 (per unit of the covariate).
    p_value: float
        Two-sided Wald p-value above.
    ci_low, ci_high: float
        95% confidence interval of the hazard ratio, :math:`\exp(\hat\beta \pm 1.96\,\widehat{se})`.
    n: int
        Patients with a time, an event flag and the covariate.  All NaN (``n`` kept) below 5 patients,
        2 events or 2 distinct covariate values, with no admissible pair, or when the fit does not converge.
    reason: str or None
        Why the values are NaN, None when the model was fitted.
    """

    hazard_ratio: float
    p_value: float
    ci_low: float
    ci_high: float
    n: int
    reason: str | None = None  # why the model was not fitted (all NaN), None when it was


def cox_hti(df: pd.DataFrame, column: str = "hti") -> CoxResult:
    """Cox proportional hazards with ``column`` (0-1) as the only covariate; HR per unit (see :class:`CoxResult`).

    ``df`` has ``os_months, os_event`` and ``column``; rows missing any are left out.
    """
    from lifelines.exceptions import ConvergenceError

    d = df[["os_months", "os_event", column]].dropna()
    if why := untestable(d, 5, 2, column):
        return CoxResult(np.nan, np.nan, np.nan, np.nan, len(d), why)
    try:
        s = cox_summary(d, [column]).loc[column]
    except ConvergenceError as err:  # e.g. complete separation: stated, not raised
        return CoxResult(np.nan, np.nan, np.nan, np.nan, len(d), f"the Cox fit did not converge: {err}".split("\n")[0])
    return CoxResult(float(s["hazard_ratio"]), float(s["p_value"]), float(s["ci_low"]), float(s["ci_high"]), len(d))


def pair_rows(
    cohort: str, pair: list[str], df: pd.DataFrame, split: float, contrast_low: float, contrast_high: float
) -> tuple[list[dict], list[list[GroupTest]]]:
    """The ``survival`` rows of one trait pair and the Kaplan-Meier panels they come from.

    ``df`` is :func:`survival_frame`'s.  Rows: the log-rank tests of the HTI groupings (paper HTI, and the
    robust HTI where there is one), of the bulk-expression baseline, a Cox model and Harrell's C per HTI
    column.  Each row says ``status`` (``ok``, or ``untestable`` with the ``reason``, :func:`untestable`).
    """
    name = "+".join(pair)
    columns = ["hti"] + (["hti_robust"] if df["hti_robust"].notna().any() else [])
    panels = [hti_groupings(df, split, contrast_low, contrast_high, c) for c in columns]
    panels.append(expression_groupings(df, pair))
    base = {"cohort": cohort, "traits": name}
    rows: list[dict] = []
    for t in (t for panel in panels for t in panel):
        rows.append(
            {
                **base,
                "grouping": t.grouping,
                "n_low": t.n_low,
                "n_high": t.n_high,
                "logrank_p": t.logrank_p,
                "test_statistic": t.test_statistic,
                "method": "logrank",
                "p_value": t.logrank_p,
                "n_patients": t.n_low + t.n_high,
                **_status(t.reason),
            }
        )
    for c in columns:
        cox = cox_hti(df, c)
        rows.append(
            {
                **base,
                "grouping": f"{c} continuous (Cox)",
                "method": "cox",
                "hazard_ratio": cox.hazard_ratio,
                "hr_ci_low": cox.ci_low,
                "hr_ci_high": cox.ci_high,
                "p_value": cox.p_value,
                "n_patients": cox.n,
                **_status(cox.reason),
            }
        )
        c_index, n = concordance(df, c)
        d = df[["os_months", "os_event", c]].dropna()
        rows.append(
            {
                **base,
                "grouping": f"{c} (Harrell's C)",
                "method": "concordance",
                "c_index": c_index,
                "n_patients": n,
                **_status(untestable(d, 5, 2, c)),
            }
        )
    return rows, panels


def _status(reason: str | None) -> dict:
    return {"status": "untestable" if reason else "ok", "reason": reason}


def cox_summary(
    df: pd.DataFrame, covariates: list[str], duration_col: str = "os_months", event_col: str = "os_event"
) -> pd.DataFrame:
    r"""Cox proportional-hazards fit of ``duration_col``/``event_col`` on ``covariates`` (lifelines ``CoxPHFitter``,
    Efron's method for ties, as R's ``survival::coxph``); rows missing a value are left out.

    Returns
    -------
    DataFrame
        One row per covariate: ``coef`` (:math:`\hat\beta`), ``se``, ``z`` (:math:`\hat\beta/se`), ``p_value``
        (two-sided Wald test of :math:`\beta = 0`), ``hazard_ratio`` (:math:`e^{\hat\beta}`) with its 95%
        interval ``ci_low``, ``ci_high``.
    """
    from lifelines import CoxPHFitter

    d = df[[duration_col, event_col, *covariates]].dropna()
    s = CoxPHFitter().fit(d, duration_col=duration_col, event_col=event_col).summary
    out = pd.DataFrame(
        {
            "coef": s["coef"],
            "se": s["se(coef)"],
            "z": s["z"],
            "p_value": s["p"],
            "hazard_ratio": s["exp(coef)"],
            "ci_low": s["exp(coef) lower 95%"],
            "ci_high": s["exp(coef) upper 95%"],
        }
    )
    return out.loc[list(covariates)]


def plot_km(test: GroupTest, ax=None, labels=("low", "high"), at_risk: bool = True):
    """Kaplan-Meier curves with 95% CI for the two groups of ``test``, with the number at risk (and censored,
    events) under the plot (lifelines ``add_at_risk_counts``); returns the axes."""
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    from .plots import pyplot

    plt = pyplot()

    if ax is None:
        ax = plt.gca()
    fitters = []
    for g, name, colour in ((0, labels[0], "tab:blue"), (1, labels[1], "tab:red")):
        d = test.data[test.data["group"] == g]
        if len(d):
            km = KaplanMeierFitter().fit(d["os_months"], d["os_event"], label=f"{name} (n={len(d)})")
            km.plot_survival_function(ax=ax, ci_show=True, color=colour)
            fitters.append(km)
    ax.set_title(f"{test.grouping}\nlog-rank p = {test.logrank_p:.3g}", fontsize=8)
    ax.set_xlabel("months")
    ax.set_ylabel("overall survival")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    if at_risk and fitters:
        add_at_risk_counts(
            *fitters, labels=[labels[i] for i in range(2) if (test.data["group"] == i).any()], ax=ax, fontsize=6
        )
    return ax


def plot_hti_by_expression(df: pd.DataFrame, traits: list[str], column: str = "hti"):
    """HTI of patients with bulk expression above vs at or below the median, per trait (paper Figure 5b),
    with a Mann-Whitney p-value each; returns the figure."""
    from scipy.stats import mannwhitneyu

    from .plots import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, len(traits), figsize=(3.2 * len(traits), 3), squeeze=False, sharey=True)
    for ax, t in zip(axes[0], traits):
        q = df[f"percentile_{t}"]
        low, high = df.loc[q <= 50, column].dropna().to_numpy(), df.loc[q > 50, column].dropna().to_numpy()
        p = mannwhitneyu(high, low).pvalue if len(low) and len(high) else np.nan
        box = ax.boxplot([low, high], patch_artist=True, widths=0.6)
        for patch, colour in zip(box["boxes"], ("#9ecae1", "#fc9272")):
            patch.set_facecolor(colour)
        ax.set_xticks([1, 2], [f"<= median\n(n={len(low)})", f"> median\n(n={len(high)})"], fontsize=7)
        ax.set_title(f"{t} expression\nMann-Whitney p = {p:.3g}", fontsize=8)
    axes[0][0].set_ylabel(column.replace("_", " "))
    fig.tight_layout()
    return fig


#: paper Figure 6 groups: frame column -> what the clinical file needs
CLINICAL_GROUPS = {"er_status": "ER status (ER_STATUS_BY_IHC)", "subtype": "PAM50 subtype (SUBTYPE)"}


def clinical_groups(df: pd.DataFrame, clinical_file, min_patients: int = 5) -> tuple[list[str], str | None]:
    """The clinical groupings of Figure 6 that can be drawn, and why the others cannot (None if all can)."""
    groups, missing = [], []
    for col, what in CLINICAL_GROUPS.items():
        n = int(df[col].notna().sum()) if col in df else 0
        if n >= min_patients:
            groups.append(col)
        else:
            missing.append(f"{what}: {n} patients")
    if not missing:
        return groups, None
    made = "made for " + ", ".join(groups) if groups else "not made"
    return groups, (
        f"HTI by clinical group (paper Figure 6) {made}: the clinical file {clinical_file} gives too few "
        f"survival-set patients a value (fewer than {min_patients}) for "
        + "; ".join(missing)
        + ". Point `clinical` at a cBioPortal patient table with these columns to get it."
    )


def plot_hti_by_clinical(df: pd.DataFrame, columns: list[str]):
    """HTI boxplots by clinical group (paper Figure 6), with a Kruskal-Wallis p-value each (null hypothesis:
    the HTI has the same distribution in every group); returns the figure."""
    from scipy.stats import kruskal

    from .plots import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3), squeeze=False)
    for ax, col in zip(axes[0], columns):
        d = df.dropna(subset=[col])
        groups = sorted(d[col].unique())
        data = [d.loc[d[col] == g, "hti"].to_numpy() for g in groups]
        p = kruskal(*data).pvalue if len(groups) > 1 and all(len(x) > 0 for x in data) else np.nan
        ax.boxplot(data)
        ax.set_xticks(range(1, len(groups) + 1), groups, fontsize=7)
        ax.set_title(f"HTI by {col} (Kruskal-Wallis p = {p:.3g})", fontsize=8)
        ax.set_ylabel("HTI")
    fig.tight_layout()
    return fig
