"""Site effects per trait (issue 28 item 3): labels by site, AUC on seen and unseen sites, site from scores and
stain.  Small synthetic frames; references: hand-computed chi-square and Cramer's V of a textbook table, a
brute-force exact Fisher test."""

from math import comb

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from pathomch_assets.site_effects import (
    held_out_rows,
    label_site_test,
    patient_sites,
    seen_unseen_auc,
    site_effect_rows,
    site_predictability,
    site_warning,
    stain_features,
)

from .test_validity import cohort_frames, gated  # noqa: F401  (the fixture of a gated deployment)

SITES = ("A1", "A2", "B6", "C8", "E2")


def patients(n_per_site=30):
    return [f"TCGA-{s}-{i:04d}" for s in SITES for i in range(n_per_site)]


def test_patient_sites_from_barcodes_unknown_for_other_ids():
    s = patient_sites(pd.Series(["TCGA-A2-A04N", "TCGA-e2-A1B1", "case-7"], index=[5, 6, 7]))
    assert s.to_dict() == {5: "A2", 6: "E2", 7: None}


def test_chi_square_and_cramers_v_match_the_hand_computation():
    # 2 x 3 table [[20, 10, 10], [10, 20, 30]]: expected [[12, 12, 16], [18, 18, 24]] (n 100)
    labels = [1] * 20 + [0] * 10 + [1] * 10 + [0] * 20 + [1] * 10 + [0] * 30
    sites = ["a"] * 30 + ["b"] * 30 + ["c"] * 40
    t = label_site_test(labels, sites)
    obs, exp = np.array([[10, 20, 30], [20, 10, 10]]), np.array([[18, 18, 24], [12, 12, 16]])
    chi2 = ((obs - exp) ** 2 / exp).sum()
    assert t.test_name == "chi-square" and t.test_statistic == pytest.approx(chi2)
    assert t.cramers_v == pytest.approx(np.sqrt(chi2 / 100)) and t.n_sites == 3 and t.n == 100
    from scipy.stats import chi2 as chi2_dist

    assert t.p_value == pytest.approx(chi2_dist.sf(chi2, 2))


def test_small_two_by_two_uses_fisher_as_the_brute_force_exact_test():
    # [[3, 1], [1, 3]] by site a/b: hypergeometric tables with the same margins, two-sided by probability
    labels, sites = [1, 1, 1, 0, 1, 0, 0, 0], ["a", "a", "a", "a", "b", "b", "b", "b"]
    t = label_site_test(labels, sites)

    def prob(k):  # k high labels at site a (4 high, 4 low, 4 per site)
        return comb(4, k) * comb(4, 4 - k) / comb(8, 4)

    p = sum(prob(k) for k in range(5) if prob(k) <= prob(3) + 1e-12)
    assert t.test_name == "fisher exact" and t.p_value == pytest.approx(p)


def test_monte_carlo_chi_square_for_sparse_tables_is_seeded_and_matches_the_exact_permutation_test():
    """12 patients at 3 sites, 6 high: every one of the C(12, 6) = 924 label assignments enumerated gives the
    exact permutation p-value of the chi-square statistic; 9999 Monte Carlo draws are within 3 standard errors."""
    from itertools import combinations

    from pathomch_assets.site_effects import _chi2

    sites = ["a"] * 3 + ["b"] * 4 + ["c"] * 5
    labels = [1, 1, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0]
    t1, t2 = label_site_test(labels, sites, seed=3), label_site_test(labels, sites, seed=3)
    assert t1.test_name == "monte carlo chi-square" and t1.p_value == t2.p_value

    code = {"a": 0, "b": 1, "c": 2}

    def table(y):
        t = np.zeros((2, 3))
        np.add.at(t, (np.asarray(y), [code[x] for x in sites]), 1)
        return t

    observed = _chi2(table(labels))
    stats = []
    for high in combinations(range(12), 6):
        y = [1 if i in high else 0 for i in range(12)]
        stats.append(_chi2(table(y)))
    exact = float(np.mean(np.array(stats) >= observed - 1e-12))
    assert 0.01 < exact < 0.9 and t1.p_value == pytest.approx(exact, abs=3 * np.sqrt(exact * (1 - exact) / 9999))


def frames_with_site_trait(seed=0):
    """Labels of a site-only trait (high at A1 and A2, low elsewhere, 10% flipped) and of a planted trait
    (random, whatever the site); rounds' scores follow the labels; ensemble scores of every slide."""
    rng = np.random.default_rng(seed)
    pids = patients()
    site = np.array([p[5:7] for p in pids])
    site_only = np.where(np.isin(site, ["A1", "A2"]), 1, 0) ^ (rng.random(len(pids)) < 0.1)
    planted = rng.integers(0, 2, len(pids))
    labels = pd.concat(
        [
            pd.DataFrame({"trait": t, "patient_id": pids, "label": y.astype(int), "subset": "labeled"})
            for t, y in (("site_only", site_only), ("planted", planted))
        ],
        ignore_index=True,
    )
    splits = pd.DataFrame(
        [
            {"round": r, "patient_id": p, "split": ("test", "val", "train", "train", "train")[(i + r) % 5]}
            for r in range(3)
            for i, p in enumerate(pids)
        ]
    )
    scores = []
    for t, y in (("site_only", site_only), ("planted", planted)):
        for r in range(3):
            scores.append(
                pd.DataFrame(
                    {
                        "trait": t,
                        "model": f"round_{r}",
                        "patient_id": pids,
                        "slide_id": [f"{p}-01Z-00-DX1" for p in pids],
                        "score": 30 + 40 * y + rng.normal(0, 10, len(pids)),
                    }
                )
            )
    rounds = pd.concat(scores, ignore_index=True)
    ensemble = rounds[rounds["model"] == "round_0"].assign(model="ensemble")
    return labels, splits, rounds, ensemble


def test_chi_square_flags_a_site_only_trait_and_not_a_planted_one():
    labels, splits, rounds, ensemble = frames_with_site_trait()
    rows = site_effect_rows(["site_only", "planted"], labels, splits, rounds, ensemble, None, 0.01, seed=1)
    r = rows.set_index("trait")
    assert r.at["site_only", "site_dependent"] and r.at["site_only", "p_value"] < 1e-6
    assert r.at["site_only", "cramers_v"] > 0.6
    assert not r.at["planted", "site_dependent"] and r.at["planted", "p_value"] > 0.01
    warning = site_warning("brca", rows)
    assert "site_only (chi-square p = " in warning and "planted" not in warning
    # patient splits: every held-out site also trains; no stain table
    assert r.at["planted", "n_unseen_slides"] == 0 and np.isnan(r.at["planted", "auc_unseen_sites"])
    assert "no held-out slide from a site outside" in r.at["planted", "note"]
    assert "no stain table" in r.at["planted", "note"] and np.isnan(r.at["planted", "site_from_stain_bacc"])
    # the site-only trait's scores carry the site (two sites high): above chance; the planted one's do not
    assert r.at["site_only", "site_from_scores_bacc"] > r.at["site_only", "site_from_scores_chance"] + 0.1
    assert r.at["site_only", "site_from_scores_p"] <= 0.02


def test_site_prediction_is_at_chance_on_site_independent_scores_and_above_it_on_site_dependent_ones():
    rng = np.random.default_rng(7)
    sites = np.repeat(SITES, 40)
    random = site_predictability(rng.normal(0, 1, (200, 2)), sites, seed=0)
    assert random.chance == pytest.approx(0.2) and random.n_sites == 5 and random.n_slides == 200
    assert abs(random.balanced_accuracy - 0.2) < 0.08 and random.p_value > 0.05
    shifted = rng.normal(0, 1, (200, 2)) + np.repeat(np.arange(5), 40)[:, None]
    site = site_predictability(shifted, sites, seed=0)
    assert site.balanced_accuracy > 0.5 and site.p_value <= 0.01
    few = site_predictability(rng.normal(0, 1, 8), ["a"] * 4 + ["b"] * 4, seed=0)
    assert np.isnan(few.balanced_accuracy) and "fewer than two sites" in few.note


def test_a_trait_without_ensemble_scores_gets_a_row_with_a_note_not_an_error():
    labels, splits, rounds, ensemble = frames_with_site_trait()
    empty = site_predictability(np.empty((0, 1)), [], seed=0)
    assert np.isnan(empty.balanced_accuracy) and empty.n_slides == 0 and "fewer than two sites" in empty.note
    # the trait's ensemble failed (too few usable rounds): no ensemble scores, the labels test still reported
    rows = site_effect_rows(["planted"], labels, splits, rounds, ensemble.iloc[:0], None, 0.01, seed=1)
    assert len(rows) == 1 and np.isnan(rows["site_from_scores_bacc"].iloc[0]) and rows["p_value"].notna().all()
    assert "site from scores: fewer than two sites" in rows["note"].iloc[0]
    # nor any round model (every round lacked a class): said so, not blamed on patient splits
    rows = site_effect_rows(["planted"], labels, splits, rounds.iloc[:0], ensemble.iloc[:0], None, 0.01, seed=1)
    assert "no held-out slide scored by a round model" in rows["note"].iloc[0]
    assert "patient splits" not in rows["note"].iloc[0]


def test_stain_statistics_predict_the_site_when_a_stain_table_exists():
    labels, splits, rounds, ensemble = frames_with_site_trait()
    rng = np.random.default_rng(3)
    sids = ensemble["slide_id"].to_numpy()
    site_code = np.array([SITES.index(s[5:7]) for s in sids])
    stain = pd.DataFrame(
        {"cohort": "brca", "slide_id": sids, "h_r": 0.6 + 0.05 * site_code + rng.normal(0, 0.01, len(sids))}
    )
    stain["status"], stain["normalize"] = "ok", "none"  # text columns are not features
    stain["n_pixels"] = 1000 * site_code  # a count follows the slide's size, not its stain: not a feature
    assert list(stain_features(stain).columns) == ["slide_id", "h_r"]
    assert stain_features(stain.assign(status="failed")) is None  # failed estimates are not stain
    rows = site_effect_rows(["planted"], labels, splits, rounds, ensemble, stain, 0.01, seed=1)
    assert rows["site_from_stain_bacc"].iloc[0] > 0.8 and rows["site_from_stain_chance"].iloc[0] == 0.2
    assert "stain" not in (rows["note"].iloc[0] or "")


def test_seen_and_unseen_sites_split_the_held_out_slides_of_each_round():
    labels, splits, rounds, _ = frames_with_site_trait()
    lab = labels[labels["trait"] == "planted"]
    sp = splits.copy()
    # round 0: site E2 neither trains nor is tested: all its patients are validation
    e2 = sp["patient_id"].str[5:7] == "E2"
    sp.loc[e2 & (sp["round"] == 0), "split"] = "val"
    rows = held_out_rows(lab, sp, rounds[rounds["trait"] == "planted"])
    unseen = rows[rows["seen_site"] == False]  # noqa: E712
    assert set(unseen["site"]) == {"E2"} and set(unseen["model"]) == {"round_0"} and len(unseen) == 30
    assert set(rows["model"]) == {"round_0", "round_1", "round_2"}
    out = seen_unseen_auc(rows)
    assert out["n_unseen_slides"] == 30 and out["n_seen_slides"] == len(rows) - 30
    assert 0.9 < out["auc_seen_sites"] <= 1 and 0.9 < out["auc_unseen_sites"] <= 1


def test_site_effects_asset_writes_its_table_warning_and_figure(gated):  # noqa: F811
    from pathomch_assets import layout
    from pathomch_assets.config import load_config
    from pathomch_assets.definitions import build_definitions
    from pathomch_assets.resources import PathomchResource

    cfg, path, store, _ = gated
    defs = build_definitions(load_config(path))
    asset = next(a for a in defs.assets if dg.AssetKey(["brca", "site_effects"]) in a.keys)
    meta = asset(
        context=dg.build_asset_context(partition_key="brca"), pathomch=PathomchResource(config_path=str(path))
    ).metadata
    rows = store.read("site_effects")
    assert rows["trait"].tolist() == ["A", "B", "C"] and rows["cohort"].eq("brca").all()
    assert rows["p_value"].between(0, 1).all() and rows["n_sites"].eq(4).all()
    assert layout.site_effects_figure_file(cfg, "brca").exists() and "label_share_by_site" in meta
    # labels drawn whatever the site: no warning, and every row says the stain table is not there
    assert "warning" not in meta or not rows["site_dependent"].all()
    assert rows["note"].str.contains("no stain table").all()
