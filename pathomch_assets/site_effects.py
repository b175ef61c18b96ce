r"""Site effects per trait (issue 28): can a trait be learned through the tissue source site?

TCGA slides come from many tissue source sites, each with its own staining, scanner and handling; a model
can learn a site's signature instead of the trait (Howard et al. 2021, Nat Commun 12:4423).  Whatever the
split method, per cohort and trait this module reports:

- **labels by site**: the high/low labels of the labelled patients cross-tabulated by site, tested for
  independence (:func:`label_site_test`): Pearson's chi-square when every expected count is at least 5,
  Fisher's exact test for a 2 x 2 table with a smaller one, otherwise a Monte Carlo chi-square (the
  statistic's permutation distribution, seeded).  Cramer's V measures the strength,

  .. math:: V = \sqrt{\chi^2 / (n \, (\min(r, c) - 1))}

  A trait is ``site_dependent`` when the p-value is below ``site_effects.alpha``.
- **held-out AUC on seen and unseen sites** (:func:`seen_unseen_auc`): each round's held-out slides
  (validation and test) scored by that round's model, split by whether their site is among the round's
  training sites, pooled over rounds.  With per-patient splits every held-out site is usually also a
  training site: the unseen side is then empty, and the row says so.
- **site from scores, site from stain** (:func:`site_predictability`): a cross-validated multinomial
  logistic regression predicting the site from the trait's ensemble slide score (and, per cohort, from the
  per-slide stain statistics when a ``stain`` table exists), as balanced accuracy against its chance level
  :math:`1/k` for :math:`k` sites, with a seeded permutation p-value.  Only the site is predicted, never
  the trait: a high balanced accuracy says the scores (or the stain) carry the site.

A patient's site comes from :func:`patient_sites` only: the ``splits`` table's ``site`` column, else the cohort's
site rule (:func:`pathomch_assets.sites.patient_sites`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .evaluation import slide_auc
from .sites import patient_sites as sites_rule
from .slides import patient_id

#: held-out splits of a round (the test set is the same in every round)
HELD_OUT = ("val", "test")
#: a site with fewer slides than this is left out of the site predictions (too few to cross-validate)
MIN_SITE_SLIDES = 5
#: folds of the cross-validated site predictions
FOLDS = 5
#: permutations of the site-prediction p-value and of the Monte Carlo chi-square
PERMUTATIONS = 999
MC_PERMUTATIONS = 9999


def patient_sites(patient_ids, splits: pd.DataFrame | None = None) -> pd.Series:
    """The tissue source site of each patient (``None`` when unknown), aligned with ``patient_ids``.

    The ``site`` column of ``splits`` where it names the patient (it follows the cohort's ``site_file``),
    else :func:`pathomch_assets.sites.patient_sites` (the TCGA barcode's site; a non-TCGA id is unknown).

    Examples
    --------
    >>> patient_sites(["TCGA-A2-A04N", "tcga-e2-a1b1", "patient-7"]).tolist()
    ['A2', 'E2', None]
    """
    ids = [str(p) for p in patient_ids]
    rule = sites_rule(ids)
    if splits is not None and "site" in splits.columns:
        known = splits.dropna(subset=["site"]).drop_duplicates("patient_id").set_index("patient_id")["site"]
        rule = rule.where(~rule.index.isin(known.index), known.reindex(rule.index))
    index = patient_ids.index if isinstance(patient_ids, pd.Series) else None
    return pd.Series([rule.get(p) for p in ids], index=index, dtype=object)


# ----------------------------------------------------------------------------- held-out slides by site
def held_out_rows(
    labels: pd.DataFrame, splits: pd.DataFrame, round_scores: pd.DataFrame, held_out=HELD_OUT
) -> pd.DataFrame:
    """Each round's held-out labelled slides scored by that round's model, with their site.

    Parameters
    ----------
    labels: DataFrame
        One trait's ``labels`` rows (only ``subset == 'labeled'`` are used).
    splits: DataFrame
        The cohort's ``splits`` rows of every round.
    round_scores: DataFrame
        The trait's ``slide_scores`` rows of the round models (``model`` ``round_<i>``, ``patient_id``,
        ``slide_id``, ``score``).
    held_out: tuple of str, optional (default=("val", "test"))
        Which splits count as held out; the validity gate passes ``("val",)`` and never sees test rows.

    Returns
    -------
    DataFrame
        ``round, model, patient_id, slide_id, label, score, site, seen_site`` (``seen_site``: the slide's
        site is a training site of that round; ``None`` when the site is unknown).
    """
    from .layout import round_name

    cols = ["round", "model", "patient_id", "slide_id", "label", "score", "site", "seen_site"]
    lab = labels.loc[labels["subset"] == "labeled", ["patient_id", "label"]].drop_duplicates("patient_id")
    sp = splits[["round", "patient_id", "split"]]
    sites = patient_sites(sp["patient_id"].drop_duplicates(), splits).set_axis(sp["patient_id"].drop_duplicates())
    train_sites = {
        r: set(sites.reindex(g.loc[g["split"] == "train", "patient_id"]).dropna()) for r, g in sp.groupby("round")
    }
    held = sp[sp["split"].isin(held_out)].merge(lab, on="patient_id")  # only held-out patients go further
    held = held.assign(model=held["round"].map(lambda r: round_name(int(r))))
    rs = round_scores[["model", "patient_id", "slide_id", "score"]]
    out = held.merge(rs, on=["model", "patient_id"]).dropna(subset=["score"])
    out["site"] = out["patient_id"].map(sites)
    out["seen_site"] = [
        None if s is None or pd.isna(s) else s in train_sites.get(r, set()) for r, s in zip(out["round"], out["site"])
    ]
    return out[cols].reset_index(drop=True)


def seen_unseen_auc(rows: pd.DataFrame) -> dict:
    """Pooled held-out slide AUC on sites seen in training and on sites never seen (``held_out_rows``).

    Returns ``auc_seen_sites, n_seen_slides, auc_unseen_sites, n_unseen_slides`` (NaN AUC where a side
    lacks a class).
    """
    out = {}
    for side, flag in (("seen", True), ("unseen", False)):
        g = rows[rows["seen_site"].map(lambda v, f=flag: v is not None and not pd.isna(v) and bool(v) == f)]
        out[f"auc_{side}_sites"] = slide_auc(g["label"], g["score"]) if len(g) else float("nan")
        out[f"n_{side}_slides"] = len(g)
    return out


# ----------------------------------------------------------------------------- labels by site
@dataclass
class SiteTest:
    """A test of independence of labels and sites (as lifelines' result objects: ``p_value``,
    ``test_statistic``, ``test_name``)."""

    test_name: str
    test_statistic: float
    p_value: float
    cramers_v: float
    n: int
    n_sites: int
    table: pd.DataFrame  # labels x sites counts

    @property
    def summary(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "test": self.test_name,
                    "statistic": self.test_statistic,
                    "p_value": self.p_value,
                    "cramers_v": self.cramers_v,
                    "n": self.n,
                    "n_sites": self.n_sites,
                }
            ]
        )


def _chi2(table: np.ndarray) -> float:
    n = table.sum()
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nansum((table - expected) ** 2 / expected))


def _permuted_chi2(y: np.ndarray, sites: pd.Series, seed: int) -> np.ndarray:
    """The chi-square statistic of ``MC_PERMUTATIONS`` seeded permutations of binary labels ``y`` over ``sites``."""
    rng = np.random.default_rng(seed)
    codes, names = pd.factorize(sites)
    onehot = np.eye(len(names))[codes]  # patients x sites
    size, n, n_high = onehot.sum(axis=0), len(y), int(y.sum())
    expected = np.stack([size * (n - n_high) / n, size * n_high / n])  # 2 x sites
    out = []
    for start in range(0, MC_PERMUTATIONS, 1000):
        b = min(1000, MC_PERMUTATIONS - start)
        perms = rng.permuted(np.tile(y.astype(float), (b, 1)), axis=1)
        high = perms @ onehot  # b x sites
        obs = np.stack([size - high, high], axis=1)  # b x 2 x sites
        out.append((((obs - expected) ** 2) / expected).sum(axis=(1, 2)))
    return np.concatenate(out)


def label_site_test(labels, sites, seed: int = 0) -> SiteTest:
    r"""Independence of binary labels and sites, one entry per patient.

    Pearson's chi-square (no continuity correction) when every expected count is at least 5; for a
    2 x 2 table with a smaller expected count, Fisher's exact test; otherwise a Monte Carlo chi-square:
    the p-value is :math:`(1 + \#\{\chi^2_{perm} \ge \chi^2\}) / (1 + B)` over ``B = 9999`` seeded
    permutations of the labels (as R's ``chisq.test(simulate.p.value = TRUE)``).  Patients without a
    site are left out; with fewer than two sites or one class the test is not defined (NaN).

    Examples
    --------
    >>> t = label_site_test([1] * 20 + [0] * 20, ["A"] * 20 + ["B"] * 20)
    >>> t.test_name, round(t.test_statistic, 1), t.p_value < 1e-8, t.cramers_v
    ('chi-square', 40.0, True, 1.0)
    """
    from scipy.stats import chi2_contingency, fisher_exact

    df = pd.DataFrame({"label": np.asarray(labels, int), "site": list(sites)}).dropna(subset=["site"])
    table = pd.crosstab(df["label"], df["site"])
    n, n_sites = len(df), table.shape[1]
    if table.shape[0] < 2 or n_sites < 2:
        return SiteTest("not defined (one class or one site)", np.nan, np.nan, np.nan, n, n_sites, table)
    t = table.to_numpy()
    expected = t.sum(axis=1, keepdims=True) * t.sum(axis=0, keepdims=True) / n
    stat = _chi2(t)
    v = float(np.sqrt(stat / (n * (min(t.shape) - 1))))
    if (expected >= 5).all():
        res = chi2_contingency(t, correction=False)
        return SiteTest("chi-square", float(res.statistic), float(res.pvalue), v, n, n_sites, table)
    if t.shape == (2, 2):
        return SiteTest("fisher exact", stat, float(fisher_exact(t).pvalue), v, n, n_sites, table)
    p = (1 + int((_permuted_chi2(df["label"].to_numpy(), df["site"], seed) >= stat - 1e-12).sum())) / (
        1 + MC_PERMUTATIONS
    )
    return SiteTest("monte carlo chi-square", stat, float(p), v, n, n_sites, table)


# ----------------------------------------------------------------------------- site from scores or stain
@dataclass
class SitePrediction:
    """Cross-validated prediction of the site: balanced accuracy, its chance level and a permutation p-value."""

    balanced_accuracy: float
    chance: float
    p_value: float
    n_slides: int
    n_sites: int
    note: str | None = None


def site_predictability(features, sites, seed: int = 0, permutations: int = PERMUTATIONS) -> SitePrediction:
    r"""How well the site is predicted from ``features`` (slides x features).

    A multinomial logistic regression (standardised features), ``FOLDS``-fold stratified cross-validation
    (seeded); the out-of-fold predictions give the balanced accuracy (mean recall over sites), whose chance
    level is :math:`1/k` for :math:`k` sites.  p-value: the sites permuted against the fixed out-of-fold
    predictions, :math:`(1 + \#\{b_{perm} \ge b\}) / (1 + B)` over ``permutations`` seeded permutations
    (a test of association between the out-of-fold predictions and the true sites; one cross-validation, not
    one per permutation).

    Slides without a site or with a missing feature, and sites with fewer than ``MIN_SITE_SLIDES`` slides,
    are left out; fewer than two sites left gives NaN with a note.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, float)
    if x.ndim != 2:  # one feature per slide; no slides at all (a trait without an ensemble) keeps its shape
        x = x.reshape(len(x), -1 if len(x) else 0)
    s = pd.Series(list(sites), dtype=object)
    ok = s.notna().to_numpy() & np.isfinite(x).all(axis=1)
    x, s = x[ok], s[ok]
    counts = s.value_counts()
    keep = s.isin(counts[counts >= MIN_SITE_SLIDES].index).to_numpy()
    x, s = x[keep], s[keep]
    k = int(s.nunique())
    if k < 2:
        return SitePrediction(
            np.nan, np.nan, np.nan, len(s), k, f"fewer than two sites with {MIN_SITE_SLIDES} or more slides"
        )
    y = pd.factorize(s)[0]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=min(FOLDS, int(np.bincount(y).min())), shuffle=True, random_state=seed)
    pred = cross_val_predict(model, x, y, cv=cv)
    score = balanced_accuracy(y, pred, k)
    rng = np.random.default_rng(seed)
    null = np.array([balanced_accuracy(rng.permutation(y), pred, k) for _ in range(permutations)])
    p = (1 + int((null >= score - 1e-12).sum())) / (1 + permutations)
    return SitePrediction(float(score), 1.0 / k, float(p), len(s), k)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Mean over the ``k`` classes (codes 0..k-1) of the share of each class predicted right.

    Examples
    --------
    >>> balanced_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]), 2)
    0.8333333333333333
    """
    hits = np.bincount(y[pred == y], minlength=k)
    return float(np.mean(hits / np.bincount(y, minlength=k)))


#: the ``stain`` columns that describe a slide's stain (Macenko H and E vectors, concentration percentiles)
STAIN_FEATURES = ("h_r", "h_g", "h_b", "e_r", "e_g", "e_b", "h_p50", "h_p99", "e_p50", "e_p99")


def stain_features(stain: pd.DataFrame | None) -> pd.DataFrame | None:
    """A ``stain`` table's stain descriptors (:data:`STAIN_FEATURES`, ``slide_id`` kept) of the slides whose estimate
    succeeded (``status`` 'ok' where the column exists), or None when there are none.  Counts such as the pixels
    sampled are left out: they follow the slide's size, not its stain."""
    if stain is None or stain.empty or "slide_id" not in stain.columns:
        return None
    if "status" in stain.columns:
        stain = stain[stain["status"] == "ok"]
    num = [c for c in STAIN_FEATURES if c in stain.columns and pd.api.types.is_numeric_dtype(stain[c])]
    if not num or stain.empty:
        return None
    return stain[["slide_id", *num]].dropna().drop_duplicates("slide_id")


# ----------------------------------------------------------------------------- per cohort
def site_effect_rows(
    traits: list[str],
    labels: pd.DataFrame,
    splits: pd.DataFrame,
    round_scores: pd.DataFrame,
    ensemble_scores: pd.DataFrame,
    stain: pd.DataFrame | None,
    alpha: float,
    seed: int = 0,
) -> pd.DataFrame:
    """The ``site_effects`` rows of one cohort: one per trait.

    Parameters
    ----------
    traits: list of str
        The traits to report.
    labels, splits: DataFrame
        The cohort's ``labels`` rows and ``splits`` rows of every round.
    round_scores, ensemble_scores: DataFrame
        The cohort's ``slide_scores`` rows of the round models and of the ensembles.
    stain: DataFrame or None
        Per-slide stain statistics (``slide_id`` and numeric columns), or None when there are none.
    alpha: float
        A trait is ``site_dependent`` when the labels-by-site p-value is below this.
    seed: int, optional (default=0)
        Seeds the Monte Carlo chi-square, the folds and the permutations.
    """
    stain_pred = None
    stain_x = stain_features(stain)
    if stain_x is not None:
        st = stain_x.assign(patient_id=stain_x["slide_id"].map(patient_id))
        stain_pred = site_predictability(
            st.drop(columns=["slide_id", "patient_id"]).to_numpy(float),
            patient_sites(st["patient_id"], splits).to_numpy(),
            seed,
        )
    rows = []
    for trait in traits:
        lab = labels[(labels["trait"] == trait) & (labels["subset"] == "labeled")].drop_duplicates("patient_id")
        test = label_site_test(lab["label"], patient_sites(lab["patient_id"], splits).to_numpy(), seed)
        held = held_out_rows(lab, splits, round_scores[round_scores["trait"] == trait])
        seen = seen_unseen_auc(held)
        ens = ensemble_scores[ensemble_scores["trait"] == trait]
        pred = site_predictability(
            ens[["score"]].to_numpy(float), patient_sites(ens["patient_id"], splits).to_numpy(), seed
        )
        notes = []
        if seen["n_unseen_slides"] == 0 and seen["n_seen_slides"] == 0:
            notes.append("no held-out slide scored by a round model (no usable round)")
        elif seen["n_unseen_slides"] == 0:
            notes.append("no held-out slide from a site outside its round's training sites (patient splits)")
        if pred.note:
            notes.append(f"site from scores: {pred.note}")
        if stain_pred is None:
            notes.append("site from stain: no stain table")
        elif stain_pred.note:
            notes.append(f"site from stain: {stain_pred.note}")
        rows.append(
            {
                "trait": trait,
                "test": test.test_name,
                "statistic": test.test_statistic,
                "p_value": test.p_value,
                "cramers_v": test.cramers_v,
                "site_dependent": bool(test.p_value < alpha) if np.isfinite(test.p_value) else None,
                "n_patients": test.n,
                "n_sites": test.n_sites,
                **seen,
                "site_from_scores_bacc": pred.balanced_accuracy,
                "site_from_scores_chance": pred.chance,
                "site_from_scores_p": pred.p_value,
                "n_scored_slides": pred.n_slides,
                "site_from_stain_bacc": stain_pred.balanced_accuracy if stain_pred else np.nan,
                "site_from_stain_chance": stain_pred.chance if stain_pred else np.nan,
                "site_from_stain_p": stain_pred.p_value if stain_pred else np.nan,
                "alpha": alpha,
                "note": "; ".join(notes) or None,
            }
        )
    return pd.DataFrame(rows)


def site_warning(cohort: str, rows: pd.DataFrame) -> str | None:
    """The warning for traits whose labels depend on the site, or None."""
    dep = rows[rows["site_dependent"].fillna(False).astype(bool)]
    if dep.empty:
        return None
    parts = [f"{r.trait} ({r.test} p = {r.p_value:.2g}, Cramer's V {r.cramers_v:.2f})" for r in dep.itertuples()]
    return (
        f"{cohort}: labels depend on the tissue source site for {', '.join(parts)}: a model may learn the site "
        f"instead of the trait; read their AUCs on unseen sites (site_effects) or use site-preserved splits"
    )


def label_share_by_site(labels: pd.DataFrame, traits: list[str], splits: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per trait and site: labelled patients and the share labelled high (the figure's data)."""
    lab = labels[labels["trait"].isin(traits) & (labels["subset"] == "labeled")]
    lab = lab.assign(site=patient_sites(lab["patient_id"], splits).to_numpy()).dropna(subset=["site"])
    return (
        lab.groupby(["trait", "site"])["label"]
        .agg(n="size", share_high="mean")
        .reset_index()
        .sort_values(["trait", "site"], ignore_index=True)
    )


def plot_label_share(shares: pd.DataFrame, rows: pd.DataFrame, traits: list[str]):
    """Bars of the share of high labels per site, one panel per trait, titled with the test; returns the figure."""
    from .plots import pyplot

    n = max(len(traits), 1)
    fig, axes = pyplot().subplots(1, n, figsize=(max(3.2 * n, 4), 3), squeeze=False, sharey=True)
    by_trait = rows.set_index("trait") if len(rows) else None
    for ax, trait in zip(axes[0], traits):
        g = shares[shares["trait"] == trait]
        ax.bar(range(len(g)), g["share_high"], color="#fc9272", edgecolor="#555")
        ax.set_xticks(range(len(g)), [f"{s}\n{n}" for s, n in zip(g["site"], g["n"])], fontsize=6)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        title = trait
        if by_trait is not None and trait in by_trait.index:
            r = by_trait.loc[trait]
            title += f"\n{r['test']} p {r['p_value']:.2g}, V {r['cramers_v']:.2f}"
        ax.set_title(title, fontsize=8)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("share labelled high (site, patients)")
    fig.tight_layout()
    return fig
