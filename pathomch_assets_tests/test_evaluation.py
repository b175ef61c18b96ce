"""Ensemble vote, AUC, Spearman and FDR against independent computations."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu, rankdata

from pathomch_assets.ensemble import ensemble_calls, select_ensemble, slide_scores_from_tiles
from pathomch_assets.evaluation import bh_fdr, correlation_rows, evaluation_sets, metrics_rows, slide_auc


def test_vote_matches_brute_force():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 500))
    calls = ensemble_calls(probs, 0.5, 2)
    brute = [sum(p >= 0.5 for p in probs[:, j]) >= 2 for j in range(500)]
    assert calls.tolist() == brute
    assert ensemble_calls(probs, 0.5, 3).sum() < calls.sum() < ensemble_calls(probs, 0.5, 1).sum()


def test_ensemble_is_the_best_three_by_validation_auc():
    aucs = {"round_0": 0.61, "round_1": 0.93, "round_2": np.nan, "round_3": 0.88, "round_4": 0.88}
    assert select_ensemble(aucs, 3) == ["round_1", "round_3", "round_4"]


def test_slide_auc_equals_scikit_learn_with_ties_and_missing_scores():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(11)
    for n in (2, 3, 10, 57):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = rng.integers(0, 5, n).astype(float)  # many ties, as slide scores in % of few tiles have
        assert slide_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        scores[-1] = np.nan
        keep = ~np.isnan(scores)
        if len(set(labels[keep])) == 2:
            assert slide_auc(labels, scores) == pytest.approx(roc_auc_score(labels[keep], scores[keep]), abs=1e-12)


def test_slide_auc_equals_mann_whitney_u():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    scores = rng.random(40) * 100 + labels * 20
    u = mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
    assert slide_auc(labels, scores) == pytest.approx(u / ((labels == 1).sum() * (labels == 0).sum()))
    assert np.isnan(slide_auc([1, 1], [0.2, 0.3]))


def test_slide_score_is_percent_positive():
    assert slide_scores_from_tiles(np.array([0.5, 0.49, 0.99, 0.0])) == 50.0


def test_bh_matches_r_p_adjust():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005, 0.2), "BH") -> 0.025 0.050 0.050 0.025 0.200
    assert bh_fdr([0.01, 0.04, 0.03, 0.005, 0.2]) == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.2])
    assert np.isnan(bh_fdr([0.01, np.nan])[1])


def test_spearman_and_fdr_per_set():
    rng = np.random.default_rng(2)
    pids = [f"P{i:03d}" for i in range(60)]
    pct = rng.permutation(np.linspace(0, 100, 60))
    rows = []
    for trait in ("A", "B"):
        for pid, q in zip(pids, pct):
            subset = "labeled" if q < 20 or q > 80 else "ood_all"
            rows.append((trait, pid, q, int(q > 50), subset))
    labels = pd.DataFrame(rows, columns=["trait", "patient_id", "percentile", "label", "subset"])
    splits = pd.DataFrame({"patient_id": pids, "split": ["test"] * 60, "round": 0})
    scores = pd.DataFrame(
        [(t, pid, q + rng.normal(0, n)) for t, n in (("A", 5), ("B", 80)) for pid, q in zip(pids, pct)],
        columns=["trait", "patient_id", "score"],
    )
    out = correlation_rows(scores, labels, splits).set_index(["trait", "eval_set"])
    sub = labels[(labels.trait == "A") & (labels.subset == "ood_all")].merge(
        scores[scores.trait == "A"], on=["trait", "patient_id"]
    )
    ra, rb = rankdata(sub.score), rankdata(sub.percentile)
    assert out.loc[("A", "ood_all"), "spearman_rho"] == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    ood = out.xs("ood_all", level="eval_set")
    assert ood.loc["A", "fdr"] == pytest.approx(bh_fdr(ood["p_value"].to_numpy())[0])
    assert ood.loc["A", "spearman_rho"] > 0.9 and ood.loc["A", "fdr"] < 1e-6


def test_evaluation_sets_and_metrics():
    labels = pd.DataFrame(
        {
            "patient_id": list("abcdefgh"),
            "label": [1, 0, 1, 0, 1, 0, 1, 0],
            "subset": ["labeled"] * 6 + ["ood_all", "ood_all"],
        }
    )
    splits = pd.DataFrame(
        {
            "patient_id": list("abcdefgh"),
            "round": 0,
            "split": ["test", "test", "val", "val", "train", "train", "test", "test"],
        }
    )
    sets = evaluation_sets(labels, splits, 0)
    assert set(sets["test"].patient_id) == {"a", "b"} and set(sets["val"].patient_id) == {"c", "d"}
    assert set(sets["ood_all"].patient_id) == {"g", "h"}
    scores = pd.DataFrame({"patient_id": list("abcdefgh"), "score": [90, 10, 80, 20, 0, 0, 30, 70]})
    m = metrics_rows(scores, sets).set_index("eval_set")
    assert m.loc["test", "auc"] == 1.0 and m.loc["ood_all", "auc"] == 0.0 and m.loc["val", "n_slides"] == 2


def test_auc_is_over_slides_each_with_its_patients_label():
    """A patient with two slides counts twice (SPEC 3.5: slide-level AUC over slides, as in the paper)."""
    sets = {"test": pd.DataFrame({"patient_id": ["a", "b", "c"], "label": [1, 0, 0]})}
    # a has a high-scoring DX1 and a low-scoring DX2; per slide 2 of the 6 (positive, negative) pairs are wrong
    scores = pd.DataFrame({"patient_id": ["a", "a", "b", "c"], "score": [90.0, 5.0, 10.0, 20.0]})
    m = metrics_rows(scores, sets).set_index("eval_set")
    assert (m.loc["test", "n_slides"], m.loc["test", "n_patients"]) == (4, 3)
    assert m.loc["test", "auc"] == pytest.approx(slide_auc([1, 1, 0, 0], [90, 5, 10, 20])) == 0.5


def test_rounds_mean_and_range_for_table_1():
    from pathomch_assets.evaluation import ROUNDS_MEAN, rounds_summary

    m = pd.DataFrame(
        {
            "model": ["round_0", "round_1", "round_3", "ensemble", "round_0", "round_1", "round_3"],
            "eval_set": ["test"] * 4 + ["val"] * 3,
            "auc": [0.7, 0.9, 0.8, 0.95, 0.6, np.nan, 0.8],
            "n_slides": [10, 10, 10, 10, 5, 5, 5],
        }
    )
    r = rounds_summary(m).set_index("eval_set")
    assert r.loc["test", ["auc", "auc_min", "auc_max", "n_models"]].tolist() == pytest.approx([0.8, 0.7, 0.9, 3])
    assert r.loc["val", "n_models"] == 2 and r.loc["val", "auc"] == pytest.approx(0.7)  # a NaN AUC is left out
    assert set(r["model"]) == {ROUNDS_MEAN} and not ROUNDS_MEAN.startswith("round")


def test_missing_class_names_the_split_and_counts():
    from pathomch_assets.ensemble import exclusion_advice, missing_class, too_few_rounds

    rows = pd.DataFrame(
        {
            "split": ["train", "train", "val", "val", "val"],
            "label": [0, 1, 0, 0, 0],
            "patient_id": ["a", "b", "c", "d", "d"],
            "slide_id": ["a1", "b1", "c1", "d1", "d2"],
        }
    )
    assert missing_class(rows) == "the val split has only low (label 0) patients (2 patients, 3 slides)"
    assert missing_class(rows.assign(label=[0, 1, 0, 1, 1])) is None
    assert "no labelled patients" in missing_class(rows[rows.split == "train"])
    msg = exclusion_advice("c", "T", "round_2", "why")
    assert "c/T round_2 is excluded" in msg and "splits.val_fraction" in msg
    msg = too_few_rounds("c", "T", ["round_0", "round_1"], {"round_2": "x"}, 3)
    assert "only 2 usable rounds" in msg and "ensemble.size is 3" in msg and "round_2: x" in msg
