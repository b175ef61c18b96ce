r"""The validity gate (issue 29): only traits the models learned feed maps, HTI and survival.

An HTI built on a trait map at chance level looks like any other.  So, per cohort and trait, before
any map is made, the gate asks whether the trait's models predict its labels on slides held out from
their training, and leaves a trait out of maps, HTI and survival when they do not.

**Held-out data.** The validation slides of every round, each scored by that round's model
(``slide_scores`` rows ``round_<i>``), pooled over rounds.  The test set is never read: it stays for
reporting (``model_metrics``, Table 1).  Pooled *within rounds*: a slide is compared only with slides of its
own round (the pair-weighted mean of the rounds' AUCs), since scores of different models are not on one
scale (a round model that calls every tile positive and one that calls none would otherwise order each
other's slides at random).

**Confidence interval.** A percentile bootstrap over patients (a patient's slides of every round are
drawn together, ``maps.bootstrap`` resamples, seeded by the configuration's ``seed``): slides of one
patient share a label and are not independent.

**Rule.** A trait *feeds* maps, HTI and survival when the lower bound of its ``maps.confidence``
interval is at least ``maps.min_auc``

.. math:: \mathrm{AUC}_{lower} \ge \mathrm{min\_auc}

and, when enough validation slides come from sites that are not training sites of their round (at
least ``UNSEEN_MIN_PER_CLASS`` of each class: site-preserved splits give that, patient splits rarely
do), the AUC on those slides is also at least ``min_auc`` (a trait learned through the site passes on
seen sites and fails here).  When there are not enough such slides and the trait's labels follow the
tissue source site (the ``site_effects`` test, p below ``site_effects.alpha``), the held-out AUC cannot tell
the trait from the site, so the trait does not feed either: site-preserved splits can decide it.  A trait
without a usable ensemble never feeds.  ``maps.include_invalid``
keeps failing traits, and every ``hti`` row of a set containing one says so (``valid``,
``invalid_traits``).

**Why the validation set, and its bias.** The validation slides pick each round's kept weights and the
ensemble members, so a chance-level model's best validation AUC is optimistic; the test set is kept
clean instead.  The bias is why the rule reads the interval's lower bound, pooled over five rounds, and
why ``min_auc`` is 0.6 and not 0.5: see docs/validity-and-sites.md for the simulation behind the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .site_effects import held_out_rows, label_site_test, patient_sites

#: the unseen-site AUC decides only with at least this many validation slides of each class on unseen sites
UNSEEN_MIN_PER_CLASS = 5


def bootstrap_auc(labels, scores, groups, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0, strata=None):
    r"""Slide AUC with a percentile bootstrap interval over groups (patients), optionally within strata.

    Each resample draws patients with replacement and takes all their slides; its AUC is the weighted
    Mann-Whitney statistic over the (positive, negative) pairs of the same stratum (a round: scores of
    different round models are not on one scale)

    .. math:: \mathrm{AUC}_b = \frac{\sum_{i \in P} \sum_{j \in N} w_i w_j \, m_{ij}
              \left([s_i > s_j] + \tfrac12 [s_i = s_j]\right)}{\sum_{i \in P} \sum_{j \in N} w_i w_j \, m_{ij}}

    with :math:`w` the number of times a slide's patient was drawn and :math:`m_{ij} = 1` when slides
    *i* and *j* share a stratum (always, without ``strata``): the pair-weighted mean of the strata's AUCs.
    Resamples without a pair are skipped.

    Returns
    -------
    tuple of float
        (AUC, lower, upper); NaN when no stratum has both classes.

    Examples
    --------
    >>> auc, lo, hi = bootstrap_auc([0, 0, 0, 1, 1, 1] * 5, list(range(30)), list(range(30)), seed=1)
    >>> round(auc, 3), lo < auc <= hi
    (0.6, True)
    >>> y, s, pid = [0, 0, 1, 1, 1, 0], [100, 100, 100, 0, 0, 0], list("abcdef")  # round 0 all 100, round 1 all 0
    >>> round(bootstrap_auc(y, s, pid)[0], 3), bootstrap_auc(y, s, pid, strata=[0, 0, 0, 1, 1, 1])[0]
    (0.333, 0.5)
    """
    nan = (float("nan"),) * 3
    y = np.asarray(labels, int) == 1
    s = np.asarray(scores, float)
    codes, _ = pd.factorize(pd.Series(list(groups), dtype=object))
    st = pd.factorize(pd.Series(list(strata), dtype=object))[0] if strata is not None else np.zeros(len(y), int)
    if y.all() or not y.any():
        return nan
    sp, sn = s[y], s[~y]
    mask = (st[y][:, None] == st[~y][None, :]).astype(float)
    if not mask.any():
        return nan
    cmp = ((sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])) * mask
    auc = float(cmp.sum() / mask.sum())
    rng = np.random.default_rng(seed)
    n_groups = int(codes.max()) + 1
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    counts = np.zeros((n_boot, n_groups))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_groups), draws.ravel()), 1)
    wp, wn = counts[:, codes[y]], counts[:, codes[~y]]
    den = np.einsum("bi,ij,bj->b", wp, mask, wn)
    num = np.einsum("bi,ij,bj->b", wp, cmp, wn)
    boot = num[den > 0] / den[den > 0]
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return auc, float(lo), float(hi)


def validity_row(
    trait: str,
    labels: pd.DataFrame,
    splits: pd.DataFrame,
    round_scores: pd.DataFrame,
    min_auc: float,
    include_invalid: bool,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    site_alpha: float | None = None,
) -> dict:
    """The gate's decision for one trait with a usable ensemble (a ``trait_validity`` row without ``cohort``).

    Parameters
    ----------
    trait: str
    labels: DataFrame
        The trait's ``labels`` rows.
    splits: DataFrame
        The cohort's ``splits`` rows of every round.
    round_scores: DataFrame
        The trait's ``slide_scores`` rows of its round models.  Test slides may be present: only
        validation patients are kept (:func:`~pathomch_assets.site_effects.held_out_rows` with ``("val",)``)
        before any score is read.
    min_auc, include_invalid, confidence, n_boot:
        ``maps.min_auc``, ``maps.include_invalid``, ``maps.confidence``, ``maps.bootstrap``.
    seed: int, optional (default=0)
        Seeds the bootstrap.
    site_alpha: float, optional (default=None)
        ``site_effects.alpha``: labels (of the training and validation patients) that follow the site at this
        level, with no decisive unseen-site AUC, fail the gate; None: the site is not asked.
    """
    test = set(splits.loc[splits["split"] == "test", "patient_id"])  # never read, here either
    labelled = labels[(labels["subset"] == "labeled") & ~labels["patient_id"].isin(test)].drop_duplicates("patient_id")
    site_test = label_site_test(labelled["label"], patient_sites(labelled["patient_id"], splits).to_numpy(), seed)
    val = held_out_rows(labels, splits, round_scores, held_out=("val",))
    auc, lo, hi = bootstrap_auc(val["label"], val["score"], val["patient_id"], n_boot, confidence, seed, val["model"])
    rounds = sorted(val["model"].unique())
    unseen = val[val["seen_site"].map(lambda v: v is not None and not pd.isna(v) and not bool(v))]
    u_auc, u_lo, u_hi = bootstrap_auc(
        unseen["label"], unseen["score"], unseen["patient_id"], n_boot, confidence, seed, unseen["model"]
    )
    ood = ood_near_rows(labels, splits, round_scores)
    o_auc, o_lo, o_hi = bootstrap_auc(
        ood["label"], ood["score"], ood["patient_id"], n_boot, confidence, seed, ood["model"]
    )
    per_class = unseen["label"].value_counts()
    decisive = len(per_class) == 2 and int(per_class.min()) >= UNSEEN_MIN_PER_CLASS
    n_sites = int(val["site"].dropna().nunique())
    where = (
        f"validation slides of {', '.join(rounds) or 'no round'}, each scored by its round's model, pooled "
        f"({len(val)} slides, {val['patient_id'].nunique()} patients, {n_sites} sites)"
    )
    if len(unseen) == 0:
        where += "; no validation slide from a site outside its round's training sites"
    else:
        where += f"; {len(unseen)} from sites not in their round's training ({'decisive' if decisive else 'too few'})"
    pct = round(confidence * 100)
    if not np.isfinite(auc):
        valid, why = False, "the validation slides lack a class: no held-out AUC"
    elif lo < min_auc:
        valid, why = False, f"AUC {auc:.2f}, lower {pct}% bound {lo:.2f} < maps.min_auc {min_auc:.2f}"
    elif decisive and u_auc < min_auc:
        valid, why = False, f"AUC {auc:.2f} but {u_auc:.2f} < maps.min_auc {min_auc:.2f} on sites not in training"
    elif not decisive and site_alpha is not None and site_test.p_value < site_alpha:
        valid, why = (
            False,
            (
                f"AUC {auc:.2f}, but the labels follow the tissue source site ({site_test.test_name} p = "
                f"{site_test.p_value:.2g}, Cramer's V {site_test.cramers_v:.2f}) and too few validation slides "
                "come from sites unseen in training to tell the trait from the site: use splits.method: site_preserved"
            ),
        )
    else:
        valid, why = True, f"AUC {auc:.2f}, lower {pct}% bound {lo:.2f} >= maps.min_auc {min_auc:.2f}"
    feeds = valid or include_invalid
    if not valid and include_invalid:
        why += "; kept by maps.include_invalid (flagged in hti)"
    return {
        "trait": trait,
        "feeds": feeds,
        "held_out": where,
        "reason": why,
        "valid": valid,
        "auc": auc,
        "ci_low": lo,
        "ci_high": hi,
        "confidence": confidence,
        "min_auc": min_auc,
        "n_slides": len(val),
        "n_patients": int(val["patient_id"].nunique()),
        "n_high": int((val["label"] == 1).sum()),
        "n_low": int((val["label"] == 0).sum()),
        "n_rounds": len(rounds),
        "n_sites": n_sites,
        "auc_unseen_sites": u_auc,
        "unseen_ci_low": u_lo,
        "unseen_ci_high": u_hi,
        "n_unseen_slides": len(unseen),
        "auc_ood_near": o_auc,
        "ood_near_ci_low": o_lo,
        "ood_near_ci_high": o_hi,
        "n_ood_near_slides": len(ood),
        "ci_method": f"percentile bootstrap over patients, {n_boot} resamples, seed {seed}",
        "site_p_value": site_test.p_value,
    }


def ood_near_rows(labels: pd.DataFrame, splits: pd.DataFrame, round_scores: pd.DataFrame) -> pd.DataFrame:
    """OOD-near patients outside the test set (above/below-median truth), scored by every round model.

    Never used to train, validate or pick any model, so unbiased; but the task is harder than the
    labelled one (patients near the 20th-30th and 70th-80th percentiles), so it is reported beside the
    gate, not decided on (paper Table 1: MKI67 0.72, miR-17-5p 0.62 OOD-near for test AUCs of 0.87).
    """
    test = set(splits.loc[splits["split"] == "test", "patient_id"])
    ood = labels.loc[(labels["subset"] == "ood_near") & ~labels["patient_id"].isin(test), ["patient_id", "label"]]
    ood = ood.drop_duplicates("patient_id").merge(round_scores[["model", "patient_id", "score"]], on="patient_id")
    return ood.dropna(subset=["score"]).reset_index(drop=True)


def validity_rows(
    traits: list[str],
    usable: list[str],
    labels: pd.DataFrame,
    splits: pd.DataFrame,
    round_scores: pd.DataFrame,
    maps,
    seed: int = 0,
    site_alpha: float | None = None,
) -> pd.DataFrame:
    """The ``trait_validity`` rows of one cohort (without ``cohort``): one per configured trait.

    ``usable``: the traits with a usable ensemble (the others never feed); ``maps``: the ``maps`` settings;
    ``site_alpha``: ``site_effects.alpha`` (:func:`validity_row`).
    """
    rows = []
    for trait in traits:
        if trait not in usable:
            rows.append(
                {
                    "trait": trait,
                    "feeds": False,
                    "held_out": "none",
                    "reason": "no usable ensemble",
                    "valid": False,
                    "min_auc": maps.min_auc,
                }
            )
            continue
        rows.append(
            validity_row(
                trait,
                labels[labels["trait"] == trait],
                splits,
                round_scores[round_scores["trait"] == trait],
                maps.min_auc,
                maps.include_invalid,
                maps.confidence,
                maps.bootstrap,
                seed,
                site_alpha,
            )
        )
    return pd.DataFrame(rows)


def gate_warning(cohort: str, rows: pd.DataFrame) -> str | None:
    """The warning naming each trait with a usable ensemble that failed the gate, and its AUC."""
    bad = rows[~rows["valid"].astype(bool) & (rows["reason"] != "no usable ensemble")]
    if bad.empty:
        return None
    kept = bool(bad["feeds"].astype(bool).any())
    parts = [f"{r.trait} ({r.reason})" for r in bad.itertuples()]
    return f"{cohort}: failed the validity gate (see trait_validity): {'; '.join(parts)}. " + (
        "Kept in maps, HTI and survival by maps.include_invalid, flagged in every hti row (valid = false)"
        if kept
        else "Left out of maps, HTI and survival (maps.include_invalid: true keeps them, flagged)"
    )


@dataclass
class Gate:
    """Which of a cohort's traits with a usable ensemble feed maps, HTI and survival."""

    feeds: list[str]  # usable and valid, or kept by maps.include_invalid
    invalid: list[str] = field(default_factory=list)  # failed the gate (left out, or kept and flagged)
    undecided: list[str] = field(default_factory=list)  # no trait_validity row (not materialized yet)
    note: str | None = None

    def flags(self, traits: list[str]) -> dict:
        """The ``hti`` columns of a trait set: ``valid`` (None when undecided) and ``invalid_traits``."""
        bad = [t for t in traits if t in self.invalid]
        valid = None if any(t in self.undecided for t in traits) else not bad
        return {"valid": valid, "invalid_traits": "+".join(bad) or None}


def apply_gate(cohort: str, usable: list[str], validity: pd.DataFrame) -> Gate:
    """The gate over ``usable`` traits from the cohort's ``trait_validity`` rows.

    A usable trait without a row (the gate not materialized since its ensemble) feeds, undecided, with a
    note: the gate's asset is upstream of maps and survival, so this happens only when it was skipped.

    Examples
    --------
    >>> v = pd.DataFrame({"trait": ["A", "B"], "feeds": [True, False], "valid": [True, False]})
    >>> g = apply_gate("brca", ["A", "B", "C"], v)
    >>> g.feeds, g.invalid, g.undecided
    (['A', 'C'], ['B'], ['C'])
    """
    rows = validity.drop_duplicates("trait", keep="last").set_index("trait") if len(validity) else None
    feeds, invalid, undecided = [], [], []
    for t in usable:
        if rows is None or t not in rows.index or pd.isna(rows.at[t, "valid"]) or pd.isna(rows.at[t, "feeds"]):
            undecided.append(t)
            feeds.append(t)
            continue
        if not bool(rows.at[t, "valid"]):
            invalid.append(t)
        if bool(rows.at[t, "feeds"]):
            feeds.append(t)
    note = None
    if undecided:
        note = (
            f"{cohort}: no validity decision for {', '.join(undecided)} (trait_validity not materialized since "
            f"their ensembles): mapped unchecked; materialize trait_validity"
        )
    return Gate(feeds, invalid, undecided, note)


def plot_validity(rows: pd.DataFrame, min_auc: float):
    """Held-out validation AUC with its interval per trait, ``min_auc`` as a line; returns the figure."""
    from .plots import pyplot

    r = rows.dropna(subset=["auc"]) if "auc" in rows.columns else rows.iloc[0:0]
    fig, ax = pyplot().subplots(figsize=(5, 0.5 + 0.45 * max(len(r), 1)))
    y = np.arange(len(r))
    colours = ["tab:blue" if v else "tab:red" for v in r["valid"].astype(bool)] if len(r) else []
    if len(r):
        ax.errorbar(
            r["auc"],
            y,
            xerr=[r["auc"] - r["ci_low"], r["ci_high"] - r["auc"]],
            fmt="none",
            ecolor="grey",
            capsize=3,
        )
        ax.scatter(r["auc"], y, c=colours, zorder=3)
        if "auc_unseen_sites" in r.columns:
            ax.scatter(r["auc_unseen_sites"], y, marker="x", color="black", zorder=3, label="unseen sites")
    ax.axvline(min_auc, color="tab:red", ls="--", lw=1, label=f"maps.min_auc {min_auc:.2f}")
    ax.axvline(0.5, color="grey", ls=":", lw=0.8)
    ax.set_yticks(y, list(r["trait"]))
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("validation slide AUC (pooled rounds), bootstrap CI")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig
