"""Subject-level splits (SPEC 3.1), frozen by construction.

Each patient's split is a pure function of ``(seed, patient_id)``: a keyed hash gives a number
``u`` uniform in [0, 1).  ``u_test < test_fraction`` puts the patient in the held-out test set,
the same for every trait and round; otherwise, in round *r*,
``u_r < val_fraction / (1 - test_fraction)`` puts it in validation and the rest trains
(80/10/10 with the paper's fractions).  Adding patients later never moves an existing one, and
the same seed reproduces every split on any machine.  Fractions hold in expectation; with few
patients the counts vary around them (binomially).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


def unit_hash(seed: int, purpose: str, patient_id: str) -> float:
    """A reproducible number in [0, 1) for ``(seed, purpose, patient_id)``."""
    digest = hashlib.blake2b(f"{seed}:{purpose}:{patient_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_splits(
    patient_ids, seed: int, test_fraction: float = 0.1, val_fraction: float = 0.1, rounds: int = 5
) -> pd.DataFrame:
    """Rows ``round, patient_id, split`` (``train``/``val``/``test``) for every round.

    Examples
    --------
    >>> s = assign_splits([f"TCGA-AA-{i:04d}" for i in range(1000)], seed=1)
    >>> sorted(s["split"].unique())
    ['test', 'train', 'val']
    """
    val_share = val_fraction / (1.0 - test_fraction)
    rows = []
    for pid in sorted(set(patient_ids)):
        is_test = unit_hash(seed, "test", pid) < test_fraction
        for r in range(rounds):
            if is_test:
                split = "test"
            else:
                split = "val" if unit_hash(seed, f"round{r}", pid) < val_share else "train"
            rows.append((r, pid, split))
    return pd.DataFrame(rows, columns=["round", "patient_id", "split"])


def moved_patients(previous: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """Patients whose split changed between two split tables (should be empty: frozen)."""
    m = previous.merge(current, on=["round", "patient_id"], suffixes=("_before", "_now"))
    return m[m["split_before"] != m["split_now"]]


def leakage(splits: pd.DataFrame) -> pd.DataFrame:
    """Patients in more than one split within a round (should be empty)."""
    n = splits.groupby(["round", "patient_id"])["split"].nunique()
    return n[n > 1].reset_index()


def split_counts(
    splits: pd.DataFrame,
    slides: pd.DataFrame,
    labels: pd.DataFrame | None = None,
    fractions: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Patients and slides per round and split (``split_counts`` table rows).

    ``splits``: ``round, patient_id, split``; ``slides``: the usable slides (``patient_id, slide_id``).
    Without ``labels``: every patient (``subset`` 'all', no trait or label).  With ``labels`` (one
    cohort's ``labels`` table): the labelled patients per trait and label (``subset`` 'labeled').
    ``share``: the row's patients over its group's patients in the round (all patients, or one trait's
    patients of one label); ``target_share``: ``fractions[split]`` (the split's target), when given.
    """
    per_patient = slides.groupby("patient_id")["slide_id"].nunique().rename("n_slides").reset_index()
    sp = splits[["round", "patient_id", "split"]].merge(per_patient, on="patient_id", how="left")
    sp = sp.fillna({"n_slides": 0})
    if labels is None:
        keys, frame = ["round", "split"], sp
    else:
        lab = labels[labels["subset"] == "labeled"][["trait", "patient_id", "label"]]
        keys, frame = ["round", "split", "trait", "label"], sp.merge(lab, on="patient_id")
    out = frame.groupby(keys).agg(n_patients=("patient_id", "nunique"), n_slides=("n_slides", "sum")).reset_index()
    out["subset"] = "all" if labels is None else "labeled"
    for col in ("trait", "label"):
        if col not in out.columns:
            out[col] = None
    group = [k for k in keys if k != "split"]
    out["share"] = out["n_patients"] / out.groupby(group)["n_patients"].transform("sum") if len(out) else []
    out["target_share"] = out["split"].map(fractions or {}).astype(float)
    return out[["round", "split", "subset", "trait", "label", "n_patients", "n_slides", "share", "target_share"]]


def split_fractions(test_fraction: float, val_fraction: float) -> dict[str, float]:
    """Each split's target share of the patients (SPEC 3.1: 0.8 / 0.1 / 0.1)."""
    return {"train": 1.0 - test_fraction - val_fraction, "val": val_fraction, "test": test_fraction}


def balance_deviation(counts: pd.DataFrame, fractions: dict[str, float]) -> float:
    """Mean absolute deviation, in percentage points, of each trait's class shares from the split targets.

    Over every round, split, trait and label of the labelled ``split_counts`` rows: the share of that
    trait's patients of that label placed in the split, against ``fractions[split]`` (a split without
    such patients has share 0).  NaN without labelled rows.
    """
    lab = counts[counts["subset"] == "labeled"]
    if lab.empty:
        return float("nan")
    grid = (
        lab[["round", "trait", "label"]].drop_duplicates().merge(pd.DataFrame({"split": list(fractions)}), how="cross")
    )
    full = grid.merge(lab[["round", "trait", "label", "split", "share"]], how="left").fillna({"share": 0.0})
    return float((100 * (full["share"] - full["split"].map(fractions)).abs()).mean())


# --------------------------------------------------------------------------- site-preserved splits
@dataclass(frozen=True)
class SiteSplit:
    """A site-preserved split and how the solver got it.

    ``splits``: rows ``round, patient_id, split, site``.  ``status``: ``optimal`` when every step was
    proved optimal, else ``node_limit`` (a step stopped at ``node_limit`` branch-and-bound nodes with
    its best assignment; ``gap``: the largest relative gap to the proved bound).  ``steps``: one row per
    step (``step``, ``status``, ``deviation``, ``gap``, ``nodes``, ``free_sites``).
    """

    splits: pd.DataFrame
    status: str
    gap: float
    n_sites: int
    fixed_sites: int
    steps: pd.DataFrame


def site_counts(sites: pd.Series, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Patients per site (column ``all``) and labelled patients per site, trait and label (``(trait, label)``).

    ``sites``: ``patient_id -> site``; ``labels``: the ``labels`` table (its ``labeled`` rows are used).
    Rows are the sites, sorted.
    """
    frame = sites.rename("site").rename_axis("patient_id").reset_index()
    out = frame.groupby("site")["patient_id"].nunique().rename("all").to_frame()
    if labels is not None and not labels.empty:
        lab = labels[labels["subset"] == "labeled"].merge(frame, on="patient_id")
        if not lab.empty:
            per = lab.groupby(["site", "trait", "label"])["patient_id"].nunique().unstack(["trait", "label"])
            per = per.reindex(columns=sorted(per.columns))
            per.columns = pd.Index([(t, int(lb)) for t, lb in per.columns], tupleize_cols=False)
            out = out.join(per, how="left")
    return out.fillna(0).astype(int).sort_index()


def site_preserved_splits(
    sites: pd.Series,
    labels: pd.DataFrame | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
    val_fraction: float = 0.1,
    rounds: int = 5,
    previous: pd.DataFrame | None = None,
    cohort: str = "",
    node_limit: int = 20000,
) -> SiteSplit:
    r"""Splits that keep each tissue source site on one side (Howard et al. 2021), balanced by exact MILPs.

    Every site goes whole to one split: to test (the same in every round, SPEC 3.1), or in round *r* to
    validation or training; so no test or validation site is ever a training site.  With patients per
    site :math:`n_s` and labelled patients per site, trait and class :math:`n_{sg}` (group *g*: all
    patients, and each trait's high and each trait's low patients, :math:`N_g` in all), the test sites
    :math:`x_s \in \{0, 1\}` minimise the absolute deviation from the target in percent of each group

    .. math::

        \min_x \sum_g \frac{100}{N_g} \Big| \sum_s n_{sg} x_s - f_{test} N_g \Big|

    and then, round by round, the validation sites :math:`v_s` among the non-test sites :math:`P` minimise
    the deviation of validation and of training together:

    .. math::

        \min_v \sum_g \frac{100}{N_g} \Big( \Big| \sum_s n_{sg} v_s - f_{val} N_g \Big|
        + \Big| \sum_{s \in P} n_{sg} (1 - v_s) - f_{train} N_g \Big| \Big)

    with at least one site in each split.  A site is validation in at most
    :math:`\lceil R f_{val} / (1 - f_{test}) \rceil` rounds while others remain (with the paper's
    fractions the 5 rounds' validation sites are disjoint), so the rounds differ.  Each step is a
    mixed-integer linear programme solved to proven optimality by ``scipy.optimize.milp`` (HiGHS branch
    and bound, no gap tolerance, no time limit: the result depends on the input and the seed only, never
    on the machine's speed); ``node_limit`` bounds a step's work, and ``status`` says whether every step
    was proved optimal.  The seed breaks ties: each site's variable costs a seeded amount, all of them
    together under a tenth of one patient in the largest group, so the seed only chooses among
    equally balanced assignments.

    Frozen by construction: a site in ``previous`` (earlier ``splits`` rows) keeps its split in every
    round it was assigned (its variables are fixed), and a new patient of a known site joins that site's
    split; only new sites are placed.  slideflow's site-preserved split, by comparison, needs CPLEX (or
    bonmin), stops after 10 s (so its result depends on the machine's speed) and shuffles without a seed.

    Parameters
    ----------
    sites: pd.Series
        ``patient_id -> site`` for every patient to split (:func:`pathomch_assets.sites.patient_sites`).
    labels: pd.DataFrame, optional (default=None)
        ``labels`` rows (``trait, patient_id, label, subset``); without them only patient counts balance.
    seed: int, optional (default=0)
        Breaks ties between equally balanced assignments.
    previous: pd.DataFrame, optional (default=None)
        Earlier ``round, patient_id, split`` rows of this cohort.
    cohort: str, optional (default="")
        Named in errors.
    node_limit: int, optional (default=20000)
        Branch-and-bound nodes per step (``splits.solver_node_limit``).

    Returns
    -------
    SiteSplit

    Raises
    ------
    ValueError
        A patient without a site, fewer than 3 sites (a test, a validation and a training site are
        needed), or earlier splits that put one site's patients in two splits of a round; each names
        the cohort and the number of sites.

    Examples
    --------
    >>> sites = pd.Series({f"TCGA-{s}-{i:04d}": s for i, s in enumerate("ABCDEFGHIJ" * 3)})
    >>> r = site_preserved_splits(sites, rounds=2)
    >>> r.status, int(r.splits.groupby(["round", "site"])["split"].nunique().max())
    ('optimal', 1)
    """
    if sites.isna().any():
        raise ValueError(f"cohort {cohort}: patients without a site: {sorted(sites[sites.isna()].index)[:5]}")
    counts = site_counts(sites.astype(object), labels)
    names = list(counts.index)
    S, R = len(names), rounds
    if S < 3:
        raise ValueError(
            f"cohort {cohort}: splits.method site_preserved needs at least 3 tissue source sites (one each for "
            f"test, validation and training), but its {len(sites)} patients come from {S} site(s) "
            f"{names}; use splits.method: patient, or add patients from other sites"
        )
    fixed_x, fixed_v = _previous_sites(sites, names, previous, R, cohort)
    A = counts.to_numpy(float)
    A = A[:, A.sum(axis=0) > 0]
    totals = A.sum(axis=0)
    weight = 100.0 / totals
    rng = np.random.default_rng(seed)
    eps = 0.1 * float(weight.min()) / S  # all tie-break costs together: under 0.1 patient of the largest group
    f_train = 1.0 - test_fraction - val_fraction

    steps = []
    x, st = _select(
        A,
        [test_fraction * totals],
        weight,
        np.ones(S, bool),
        fixed_x,
        eps * rng.random(S),
        node_limit,
        S - 2,
        f"cohort {cohort}, {S} sites, test split",
    )
    steps.append({"step": "test", **st})
    rest = ~x
    pool_total = A[rest].sum(axis=0)
    cap = max(1, math.ceil(R * val_fraction / (1.0 - test_fraction) - 1e-9))
    used = np.zeros(S, int)
    v = np.zeros((R, S), bool)
    for r in range(R):
        fixed = {s: val for (s, r2), val in fixed_v.items() if r2 == r}
        pool = rest & (used < cap)
        if not pool.any():  # every non-test site has had its turns: any may validate again
            pool = rest.copy()
        pool |= np.array([fixed.get(s) == 1 for s in range(S)])
        targets = [val_fraction * totals, pool_total - f_train * totals]
        where = f"cohort {cohort}, {S} sites, validation of round {r}"
        v[r], st = _select(A, targets, weight, pool, fixed, eps * rng.random(S), node_limit, int(rest.sum()) - 1, where)
        used += v[r]
        steps.append({"step": f"val round {r}", **st})
    pos = {s: i for i, s in enumerate(names)}
    out = []
    for pid in sorted(sites.index):
        s = pos[sites[pid]]
        out += [(r, pid, "test" if x[s] else "val" if v[r, s] else "train", names[s]) for r in range(R)]
    steps_df = pd.DataFrame(steps)
    return SiteSplit(
        splits=pd.DataFrame(out, columns=["round", "patient_id", "split", "site"]),
        status=next((st for st in steps_df["status"] if st != "optimal"), "optimal"),
        gap=float(steps_df["gap"].max()),
        n_sites=S,
        fixed_sites=len(fixed_x),
        steps=steps_df,
    )


def _select(A, targets, weight, pool, fixed, tie_cost, node_limit, max_chosen, what):
    """Sites ``y`` (within ``pool``) minimising ``sum_g weight_g * sum_k |A_g . y - targets[k]_g|``.

    The first target is the chosen sites' (``|A y - t_0|``); a second is the pool's rest, written as a
    deviation of ``A y`` from the pool's total minus the rest's target.  From 1 to ``max_chosen`` sites
    are chosen.  Returns the boolean choice and a status row; ``what`` names the step in an error.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    S, G = A.shape
    K = len(targets)
    n = S + K * G
    c = np.concatenate([np.where(pool, tie_cost, 0.0), np.tile(weight, K)])
    lo, hi = np.zeros(n), np.concatenate([pool.astype(float), np.full(K * G, np.inf)])
    for s, val in fixed.items():
        lo[s] = hi[s] = val
    r_idx, c_idx, vals, lb, ub = [], [], [], [], []
    row = 0
    for k, t in enumerate(targets):
        for g in range(G):
            d = S + k * G + g
            for sign, (low, high) in ((-1, (-np.inf, t[g])), (1, (t[g], np.inf))):  # |A_g y - t| <= d
                nz = np.flatnonzero(A[:, g])
                r_idx += [row] * (len(nz) + 1)
                c_idx += [*nz, d]
                vals += [*A[nz, g], sign]
                lb.append(low)
                ub.append(high)
                row += 1
    r_idx += [row] * S
    c_idx += list(range(S))
    vals += [1.0] * S
    lb.append(1)
    ub.append(max_chosen)
    M = coo_matrix((vals, (r_idx, c_idx)), shape=(row + 1, n)).tocsr()
    res = milp(
        c,
        constraints=LinearConstraint(M, lb, ub),
        integrality=np.r_[np.ones(S), np.zeros(K * G)],
        bounds=Bounds(lo, hi),
        options={"mip_rel_gap": 0.0, "node_limit": node_limit},
    )
    if res.x is None:  # not expected with 3+ sites and consistent fixed values; said plainly if it happens
        raise ValueError(f"{what}: no site assignment satisfies the constraints ({res.message})")
    y = np.round(res.x[:S]).astype(bool)
    return y, {
        "status": _status(res),
        "deviation": float(res.x[S:] @ c[S:]),
        "gap": float(getattr(res, "mip_gap", 0.0) or 0.0),
        "nodes": int(getattr(res, "mip_node_count", 0) or 0),
        "free_sites": int(sum(1 for s in np.flatnonzero(pool) if s not in fixed)),
    }


def _status(res) -> str:
    """``optimal``, ``node_limit`` (scipy reports HiGHS's node limit as status 1, or as 4 'Solution limit
    reached'), else ``highs_status_<n>``."""
    if res.status == 0:
        return "optimal"
    if res.status == 1 or (res.status == 4 and "limit reached" in str(res.message)):
        return "node_limit"
    return f"highs_status_{res.status}"


def _previous_sites(sites: pd.Series, names: list, previous: pd.DataFrame | None, rounds: int, cohort: str):
    """Fixed values of the test choice ``{site: 0/1}`` and of each round's validation ``{(site, round): 0/1}``
    (sites by position in ``names``) from earlier splits of the same patients."""
    fixed_x: dict[int, int] = {}
    fixed_v: dict[tuple[int, int], int] = {}
    if previous is None or previous.empty:
        return fixed_x, fixed_v
    pos = {s: i for i, s in enumerate(names)}
    prev = previous[previous["patient_id"].isin(sites.index) & (previous["round"] < rounds)]
    prev = prev.assign(site=prev["patient_id"].map(sites))
    per = prev.groupby(["site", "round"])["split"].unique()
    tested = prev.groupby("site")["split"].agg(lambda v: set(v) == {"test"} or "test" not in set(v))
    mixed = [f"{s} round {r} ({', '.join(sorted(v))})" for (s, r), v in per.items() if len(v) > 1]
    mixed += [f"{s} (test in some rounds only)" for s, ok in tested.items() if not ok]
    if mixed:
        raise ValueError(
            f"cohort {cohort}: the existing splits put patients of one site in two splits ({'; '.join(mixed[:5])}): "
            f"they were not made with splits.method site_preserved (or a site_file changed), and splits are frozen. "
            f"Restore the settings, or delete the cohort's splits on purpose to re-split its {len(names)} sites "
            f"(trained models then no longer match)"
        )
    for (site, r), v in per.items():
        s, split = pos[site], v[0]
        fixed_x[s] = int(split == "test")
        if split == "test":
            fixed_v.update({(s, r2): 0 for r2 in range(rounds)})
        else:
            fixed_v[(s, int(r))] = int(split == "val")
    return fixed_x, fixed_v


# --------------------------------------------------------------------------- one cohort's splits
@dataclass(frozen=True)
class CohortSplits:
    """What the ``splits`` asset writes: ``splits`` rows (``cohort, round, patient_id, split, site``),
    ``split_counts`` rows (subsets ``all`` and ``labeled``, with ``method`` and ``solver_status``), and
    the solver's report (``site_preserved`` only)."""

    splits: pd.DataFrame
    counts: pd.DataFrame
    method: str
    solver: SiteSplit | None


def cohort_splits(
    cohort: str,
    slides: pd.DataFrame,
    labels: pd.DataFrame | None,
    previous: pd.DataFrame | None,
    settings,
    seed: int,
    site_file=None,
) -> CohortSplits:
    """One cohort's frozen splits by ``settings.method`` (a :class:`pathomch_assets.config.SplitConfig`).

    ``slides``: its usable slides (``patient_id, slide_id``); ``labels``: its ``labels`` rows (balance and
    counts); ``previous``: its earlier ``splits`` rows.  ``patient``: :func:`assign_splits`, unchanged;
    ``site_preserved``: :func:`site_preserved_splits`.  Each patient's ``site`` comes from
    :func:`pathomch_assets.sites.patient_sites`.  ``ValueError`` (naming the cohort and what to do) when
    the settings would move an existing patient, or a site-preserved split is impossible.
    """
    from .sites import patient_sites, require_sites

    patients = sorted(set(slides["patient_id"]))
    sites = patient_sites(patients, site_file)
    solver = None
    if settings.method == "site_preserved":
        solver = site_preserved_splits(
            require_sites(sites, cohort),
            labels,
            seed,
            settings.test_fraction,
            settings.val_fraction,
            settings.rounds,
            previous,
            cohort,
            settings.solver_node_limit,
        )
        new = solver.splits
    else:
        new = assign_splits(patients, seed, settings.test_fraction, settings.val_fraction, settings.rounds)
        new["site"] = new["patient_id"].map(sites)
    moved = moved_patients(previous, new) if previous is not None and len(previous) else new.iloc[0:0]
    if not moved.empty:
        raise ValueError(
            f"cohort {cohort}: the configured splits settings (seed, fractions, method) would move "
            f"{moved['patient_id'].nunique()} patients between splits, but splits are frozen. Restore the settings, "
            f"or delete the cohort's file in the `splits` table folder on purpose to re-split (trained models then "
            f"no longer match)."
        )
    fractions = split_fractions(settings.test_fraction, settings.val_fraction)
    parts = [split_counts(new, slides, None, fractions)]
    if labels is not None:
        parts.append(split_counts(new, slides, labels, fractions))
    counts = pd.concat(parts, ignore_index=True).assign(
        cohort=cohort, method=settings.method, solver_status=solver.status if solver else None
    )
    new.insert(0, "cohort", cohort)
    return CohortSplits(splits=new, counts=counts, method=settings.method, solver=solver)
