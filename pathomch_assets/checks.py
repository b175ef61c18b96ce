"""Asset checks, all of them: leakage and balance guards that block downstream assets when they fail, and
sanity checks of tiles, models and heterogeneity (warnings).  Built per cohort, on that cohort's assets; each
reads its cohort's rows only."""

import dagster as dg
import pandas as pd

from .layout import ROUND_PREFIX
from .reporting import md_table
from .resources import PathomchResource
from .splits import balance_deviation, leakage
from .survival import leaked_patients, survival_set


def _read(pathomch: PathomchResource, table: str, cohort: str) -> pd.DataFrame:
    return pathomch.get_store().read(table, "cohort = ?", [cohort])


def split_leakage(splits: pd.DataFrame) -> dg.AssetCheckResult:
    bad = leakage(splits)
    return dg.AssetCheckResult(
        passed=bad.empty,
        metadata={"patients_in_two_splits": len(bad)},
        description=None if bad.empty else f"{len(bad)} patient-rounds in two splits",
    )


def same_test_set(splits: pd.DataFrame) -> dg.AssetCheckResult:
    sets = {
        (c, r): frozenset(g.loc[g["split"] == "test", "patient_id"])
        for (c, r), g in splits.groupby(["cohort", "round"])
    }
    bad = [
        f"{c} round {r}" for (c, r), s in sets.items() if s != next(v for (c2, _), v in sorted(sets.items()) if c2 == c)
    ]
    return dg.AssetCheckResult(
        passed=not bad, metadata={"rounds_differing": len(bad)}, description="; ".join(bad) if bad else None
    )


def label_balance(labels: pd.DataFrame, splits: pd.DataFrame, ensemble_size: int = 3) -> dg.AssetCheckResult:
    """Both classes present among labelled patients in train, val and test of every round.

    Not blocking: a (trait, round) whose train or validation split lacks a class is excluded from that
    trait's ensemble by ``trait_model`` and the rest goes on (a warning here); a trait left with fewer
    such rounds than ``ensemble_size``, or whose test set lacks a class, cannot be evaluated (an error
    naming it, though other traits still run).
    """
    lab = labels[labels["subset"] == "labeled"].merge(splits, on=["cohort", "patient_id"])
    counts = lab.pivot_table(
        index=["cohort", "trait", "round", "split"], columns="label", values="patient_id", aggfunc="count", fill_value=0
    )
    for cls in (0, 1):
        if cls not in counts.columns:
            counts[cls] = 0
    # every (trait, round, split), also those without a single labelled patient
    full = pd.MultiIndex.from_tuples(
        [
            (c, t, r, sp)
            for c, t in labels[["cohort", "trait"]].drop_duplicates().itertuples(index=False)
            for r in sorted(splits.loc[splits["cohort"] == c, "round"].unique())
            for sp in ("train", "val", "test")
        ],
        names=["cohort", "trait", "round", "split"],
    )
    counts = counts.reindex(full, fill_value=0) if len(full) else counts
    counts = counts.rename(columns={0: "low", 1: "high"}).reset_index()
    if counts.empty:
        return dg.AssetCheckResult(
            passed=False,
            metadata={"missing_class": 0},
            description="no labelled patient in any split: materialize labels and splits",
        )
    counts["ok"] = (counts["low"] > 0) & (counts["high"] > 0)
    fit = counts[counts["split"].isin(["train", "val"])].groupby(["cohort", "trait", "round"])["ok"].all()
    rounds = splits["round"].nunique()
    usable = fit.groupby(["cohort", "trait"]).sum()
    test_ok = counts[counts["split"] == "test"].groupby(["cohort", "trait"])["ok"].all()
    excluded = [f"{c}/{t} round {r}" for (c, t, r), ok in fit.items() if not ok]
    failing = [
        f"{c}/{t} ({n} of {rounds} rounds usable, ensemble.size {ensemble_size})"
        for (c, t), n in usable.items()
        if n < ensemble_size
    ]
    failing += [f"{c}/{t} (its test set lacks a class)" for (c, t), ok in test_ok.items() if not ok]
    parts = []
    if excluded:
        parts.append(
            f"train or validation lacks a class, so these rounds are excluded from their trait's ensemble "
            f"(other rounds and traits go on): {', '.join(excluded)}"
        )
    if failing:
        parts.append(
            f"these traits cannot be evaluated: {', '.join(failing)}; add patients or raise "
            f"splits.val_fraction/test_fraction"
        )
    severity = dg.AssetCheckSeverity.ERROR if failing else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        passed=not parts,
        severity=severity,
        metadata={
            "missing_class": int((~counts["ok"]).sum()),
            "excluded_rounds": len(excluded),
            "traits_failing": len(failing),
            "counts": md_table(counts.query("round == 0").drop(columns="ok")),
        },
        description=". ".join(parts) or None,
    )


def site_separation(splits: pd.DataFrame, counts: pd.DataFrame) -> dg.AssetCheckResult:
    """Under ``splits.method: site_preserved`` no tissue source site is in two splits of a round; the balance.

    ``splits``: ``splits`` rows (with ``site``); ``counts``: ``split_counts`` rows (``method``,
    ``solver_status``, ``share``, ``target_share``).  Under ``patient`` sites are shared by design: the
    check passes and says how many are.  A ``site_preserved`` patient without a site fails it too.
    """
    method = str(counts["method"].dropna().iloc[0]) if "method" in counts and counts["method"].notna().any() else None
    status = counts["solver_status"].dropna()
    per = splits.dropna(subset=["site"]).groupby(["cohort", "round", "site"])["split"].nunique()
    shared = sorted({f"{c}/{s}" for (c, _, s), k in per.items() if k > 1})
    no_site = int(splits["site"].isna().sum()) if "site" in splits else len(splits)
    fractions = {r.split: r.target_share for r in counts.dropna(subset=["target_share"]).itertuples()}
    lab = counts[(counts["subset"] == "labeled") & (counts["round"] == 0)]
    balance = lab.assign(share=100 * lab["share"], target_share=100 * lab["target_share"])[
        ["trait", "split", "label", "n_patients", "share", "target_share"]
    ]
    preserved = method == "site_preserved"
    ok = not preserved or (not shared and no_site == 0)
    if preserved:
        text = None if ok else f"sites in two splits: {', '.join(shared[:10])}; patients without a site: {no_site}"
    else:
        text = (
            f"splits.method {method}: {len(shared)} sites are in more than one split "
            "(use site_preserved to keep them whole)"
        )
    return dg.AssetCheckResult(
        passed=ok,
        metadata={
            "method": str(method),
            "solver_status": str(status.iloc[0]) if len(status) else "none",
            "sites": int(splits["site"].nunique()),
            "sites_in_two_splits": len(shared),
            "balance_deviation_pp": balance_deviation(counts, fractions) if fractions else float("nan"),
            "balance_round_0": md_table(balance),
        },
        description=text,
    )


def build(cohort: str, splits_asset):
    @dg.asset_check(asset=splits_asset, blocking=True, description="No patient appears in two splits of one round.")
    def no_patient_in_two_splits(context, pathomch: PathomchResource) -> dg.AssetCheckResult:
        return split_leakage(_read(pathomch, "splits", cohort))

    @dg.asset_check(asset=splits_asset, blocking=True, description="The held-out test set is the same in every round.")
    def test_set_same_every_round(context, pathomch: PathomchResource) -> dg.AssetCheckResult:
        return same_test_set(_read(pathomch, "splits", cohort))

    @dg.asset_check(
        asset=splits_asset,
        blocking=True,
        description="splits.method site_preserved: no tissue source site is in two splits of any round (patient: "
        "passes, and says how many sites are shared); reports the solver's status and each trait's class "
        "shares per split against the targets.",
    )
    def sites_kept_whole(context, pathomch: PathomchResource) -> dg.AssetCheckResult:
        return site_separation(_read(pathomch, "splits", cohort), _read(pathomch, "split_counts", cohort))

    @dg.asset_check(
        asset=splits_asset,
        blocking=False,
        description="Both label classes are present in train, validation and test of every round. "
        "Not blocking: a round lacking a class is excluded from its trait's ensemble (warning); a "
        "trait with too few usable rounds fails alone at `ensemble` (error here).",
    )
    def label_classes_present(context, pathomch: PathomchResource) -> dg.AssetCheckResult:
        return label_balance(
            _read(pathomch, "labels", cohort), _read(pathomch, "splits", cohort), pathomch.get_config().ensemble.size
        )

    return [no_patient_in_two_splits, test_set_same_every_round, sites_kept_whole, label_classes_present]


def min_tiles(slides: pd.DataFrame, minimum: int) -> dg.AssetCheckResult:
    ok = slides[slides["status"] == "ok"]
    low = ok[ok["n_tiles"].fillna(0) < minimum]
    return dg.AssetCheckResult(
        passed=low.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "slides_ok": len(ok),
            "below_minimum": len(low),
            "minimum": minimum,
            "min_tiles_seen": int(ok["n_tiles"].min()) if len(ok) else 0,
        },
        description=None if low.empty else "few tiles: " + ", ".join(low["slide_id"].head(10)),
    )


def better_than_chance(metrics: pd.DataFrame, excluded: pd.DataFrame | None = None) -> dg.AssetCheckResult:
    """Validation AUC above 0.5 for every trained round; ``excluded`` (``model_rounds`` rows) rounds have no model."""
    val = metrics[metrics["eval_set"] == "val"]
    bad = val[~(val["auc"] > 0.5)]
    if val.empty and excluded is not None and len(excluded):
        return dg.AssetCheckResult(
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"models": 0},
            description="no model: excluded (" + "; ".join(excluded["reason"].astype(str)) + ")",
        )
    return dg.AssetCheckResult(
        passed=bad.empty and not val.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"models": len(val), "val_auc_min": float(val["auc"].min()) if len(val) else float("nan")},
        description=None
        if bad.empty
        else "no better than chance on validation: "
        + ", ".join(f"{r.cohort}/{r.trait} {r.model} (AUC {r.auc:.2f})" for r in bad.itertuples()),
    )


def build_slide_and_model_checks(cohort: str, slide_tiles_asset, trait_model_asset):
    @dg.asset_check(
        asset=slide_tiles_asset,
        description="Every usable slide has at least tiling.min_tiles_per_slide "
        "tissue tiles (a warning: such slides give thin maps).",
    )
    def minimum_tiles_per_slide(context, pathomch: PathomchResource) -> dg.AssetCheckResult:
        cfg = pathomch.get_config()
        return min_tiles(_read(pathomch, "slides", cohort), cfg.tiling.min_tiles_per_slide)

    @dg.asset_check(
        asset=trait_model_asset,
        description="The model's validation slide AUC is above 0.5 (a warning: "
        "a trait without morphology, like a negative control, is expected to fail it).",
    )
    def model_better_than_chance(context, pathomch: PathomchResource) -> dg.AssetCheckResult:
        tags = context.run.tags if context.run else {}
        target, round_name = tags.get("dagster/partition/target"), tags.get("dagster/partition/round")
        store = pathomch.get_store()
        if target and round_name:
            cohort, _, trait = target.partition("/")
            m = store.read("model_metrics", "cohort = ? AND trait = ? AND model = ?", [cohort, trait, round_name])
            excluded = store.read(
                "model_rounds",
                "cohort = ? AND trait = ? AND model = ? AND status = 'excluded'",
                [cohort, trait, round_name],
            )
            return better_than_chance(m, excluded)
        return better_than_chance(store.read("model_metrics", f"cohort = ? AND model LIKE '{ROUND_PREFIX}%'", [cohort]))

    return [minimum_tiles_per_slide, model_better_than_chance]


def selection_leakage(splits: pd.DataFrame) -> dg.AssetCheckResult:
    """No held-out test patient in any round's validation set (validation AUC picks the ensemble)."""
    test = splits[splits["split"] == "test"][["cohort", "patient_id"]].drop_duplicates()
    val = splits[splits["split"] == "val"][["cohort", "round", "patient_id"]]
    bad = val.merge(test, on=["cohort", "patient_id"])
    return dg.AssetCheckResult(
        passed=bad.empty,
        metadata={"test_patients_in_validation": len(bad)},
        description=None if bad.empty else ", ".join(bad["patient_id"].head(10)),
    )


def build_selection_check(cohort: str, ensemble_asset):
    @dg.asset_check(
        asset=ensemble_asset,
        blocking=True,
        description="Ensemble members are chosen on validation patients only: no test patient "
        "is in any round's validation set.",
    )
    def selection_without_test_patients(context, pathomch: PathomchResource) -> dg.AssetCheckResult:
        return selection_leakage(_read(pathomch, "splits", cohort))

    return selection_without_test_patients


def hti_in_unit_interval(hti: pd.DataFrame) -> dg.AssetCheckResult:
    bad = hti[(hti["hti"] < 0) | (hti["hti"] > 1) | hti["hti"].isna()]
    return dg.AssetCheckResult(passed=bad.empty, metadata={"rows": len(hti), "out_of_range": len(bad)})


def shares_and_intervals(sums: pd.DataFrame, stats: pd.DataFrame) -> dg.AssetCheckResult:
    """``sums``: per slide and trait set, the sums of ``share`` (``s``) and ``tissue_share`` (``t``)."""
    bad_sums = sums[((sums["s"] - 1).abs() > 1e-9) & (sums["s"] > 0) | ((sums["t"] - 1).abs() > 1e-9)]
    bad_ci = stats[(stats["ci_low"] > stats["hti"] + 1e-9) | (stats["ci_high"] < stats["hti"] - 1e-9)]
    return dg.AssetCheckResult(
        passed=bad_sums.empty and bad_ci.empty,
        metadata={"slides": len(sums), "shares_not_summing_to_1": len(bad_sums), "hti_outside_ci": len(bad_ci)},
    )


def build_cartography_checks(cohort: str, slide_cartography_asset):
    @dg.asset_check(asset=slide_cartography_asset, description="Every HTI lies in [0, 1].")
    def hti_within_unit_interval(pathomch: PathomchResource) -> dg.AssetCheckResult:
        return hti_in_unit_interval(_read(pathomch, "hti", cohort))

    @dg.asset_check(
        asset=slide_cartography_asset,
        description="The combination shares of every slide and trait set "
        "with a positive tile sum to 1, and its CI contains its HTI.",
    )
    def hti_shares_and_intervals(pathomch: PathomchResource) -> dg.AssetCheckResult:
        store = pathomch.get_store()
        sums = store.query(
            "SELECT cohort, traits, slide_id, sum(share) s, sum(tissue_share) t FROM hti_combinations "
            "WHERE cohort = ? GROUP BY ALL",
            [cohort],
        )
        return shares_and_intervals(sums, _read(pathomch, "hti_stats", cohort))

    return [hti_within_unit_interval, hti_shares_and_intervals]


def build_survival_check(cohort: str, survival_asset, analysis_sets):
    """``analysis_sets(cfg, cohort, store)``: the trait sets analysed (``maps.analysis_sets``)."""

    @dg.asset_check(
        asset=survival_asset,
        blocking=True,
        description="No survival-set patient was in a train or validation split of either trait.",
    )
    def survival_set_never_trained_on(context, pathomch: PathomchResource) -> dg.AssetCheckResult:
        store = pathomch.get_store()
        leaks = []
        labels = store.read("labels", "cohort = ?", [cohort])
        splits = store.read("splits", "cohort = ?", [cohort])
        for pair in analysis_sets(pathomch.get_config(), cohort, store) if len(labels) and len(splits) else []:
            patients = survival_set(labels, splits[splits["round"] == 0], pair)
            leaks += [f"{cohort} {'+'.join(pair)} {p}" for p in sorted(leaked_patients(patients, labels, splits, pair))]
        return dg.AssetCheckResult(
            passed=not leaks, metadata={"leaked": len(leaks)}, description="; ".join(leaks[:10]) or None
        )

    return survival_set_never_trained_on
