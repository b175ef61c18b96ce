"""Labels (SPEC 3.2) and frozen subject-level splits (SPEC 3.1)."""

import numpy as np
import pandas as pd
import pytest

from pathomch_assets.checks import label_balance, same_test_set, split_leakage
from pathomch_assets.labels import assign_labels, percentiles
from pathomch_assets.splits import assign_splits, leakage, moved_patients


def test_percentiles_match_scipy():
    from scipy.stats import rankdata

    v = pd.Series(np.random.default_rng(0).normal(size=50))
    expected = 100 * (rankdata(v) - 1) / 49
    assert np.allclose(percentiles(v), expected)


def test_label_subsets_on_101_patients():
    v = pd.Series(np.arange(101.0), index=[f"p{i:03d}" for i in range(101)])
    lab = assign_labels(v)
    by = {s: set(g.patient_id) for s, g in lab.groupby("subset")}
    assert by["labeled"] == {f"p{i:03d}" for i in list(range(20)) + list(range(81, 101))}
    assert lab[(lab.subset == "labeled") & (lab.label == 1)].percentile.min() > 80
    assert by["ood_all"] == {f"p{i:03d}" for i in range(20, 81)}
    assert by["ood_near"] == {f"p{i:03d}" for i in list(range(20, 30)) + list(range(71, 81))}
    assert by["ood_near"] <= by["ood_all"]
    ood = lab[lab.subset == "ood_all"].set_index("patient_id")
    assert ood.loc["p049", "label"] == 0 and ood.loc["p051", "label"] == 1  # median truth


def test_na_expression_gets_no_label():
    lab = assign_labels(pd.Series([1.0, np.nan, 3.0, 4.0, 5.0, 6.0], index=list("abcdef")))
    assert "b" not in set(lab.patient_id)


def patients(n, start=0):
    return [f"TCGA-AA-{i:04d}" for i in range(start, start + n)]


def test_split_fractions_and_no_leakage():
    s = assign_splits(patients(2000), seed=3)
    r0 = s[s["round"] == 0]["split"].value_counts(normalize=True)
    assert r0["test"] == pytest.approx(0.10, abs=0.02) and r0["val"] == pytest.approx(0.10, abs=0.02)
    assert leakage(s).empty
    tests = [set(g[g.split == "test"].patient_id) for _, g in s.groupby("round")]
    assert all(t == tests[0] for t in tests)
    vals = [set(g[g.split == "val"].patient_id) for _, g in s.groupby("round")]
    assert len({frozenset(v) for v in vals}) == 5  # rounds differ


def test_splits_frozen_when_patients_are_added():
    before = assign_splits(patients(300), seed=11)
    after = assign_splits(patients(300) + patients(50, start=5000), seed=11)
    assert moved_patients(before, after).empty
    assert not moved_patients(before, assign_splits(patients(300), seed=12)).empty


def test_checks_catch_leakage_and_missing_classes():
    s = assign_splits(patients(200), seed=1).assign(cohort="c")
    assert split_leakage(s).passed and same_test_set(s).passed
    leaked = pd.concat([s, s.iloc[[0]].assign(split="val" if s.iloc[0].split != "val" else "train")])
    assert not split_leakage(leaked).passed
    moved = s.copy()
    moved.loc[(moved["round"] == 2) & (moved.split == "test"), "split"] = "train"
    assert not same_test_set(moved).passed
    pids = patients(200)
    labels = pd.DataFrame(
        {"cohort": "c", "trait": "T", "patient_id": pids, "label": [i % 2 for i in range(200)], "subset": "labeled"}
    )
    assert label_balance(labels, s).passed
    assert not label_balance(labels.assign(label=1), s).passed


def test_split_counts_of_patients_and_slides():
    from pathomch_assets.splits import split_counts

    s = pd.DataFrame({"round": 0, "patient_id": ["a", "b", "c", "d"], "split": ["train", "train", "val", "test"]})
    slides = pd.DataFrame({"patient_id": ["a", "a", "b", "c", "d"], "slide_id": ["a1", "a2", "b1", "c1", "d1"]})
    allc = split_counts(s, slides).set_index("split")
    assert allc.loc["train", ["n_patients", "n_slides"]].tolist() == [2, 3] and set(allc["subset"]) == {"all"}
    labels = pd.DataFrame(
        {"trait": "T", "patient_id": ["a", "b", "c"], "label": [1, 0, 1], "subset": ["labeled", "labeled", "ood_all"]}
    )
    lab = split_counts(s, slides, labels).set_index(["split", "label"])
    assert lab.loc[("train", 1), ["n_patients", "n_slides"]].tolist() == [1, 2] and len(lab) == 2


def test_missing_class_in_a_round_is_a_warning_too_few_rounds_an_error():
    """Small cohorts: one trait's validation lacks a class in two rounds. Not blocking (the check is
    declared non-blocking); a warning naming the rounds while 3 usable rounds remain, an error naming the
    trait when fewer remain than ensemble.size."""
    import dagster as dg

    pids = patients(40)
    s = assign_splits(pids, seed=1, test_fraction=0.2, val_fraction=0.2).assign(cohort="c")
    labels = pd.DataFrame({"cohort": "c", "patient_id": pids, "label": [i % 2 for i in range(40)], "subset": "labeled"})
    labels = pd.concat([labels.assign(trait="A"), labels.assign(trait="B")])
    val = s[(s.split == "val") & s["round"].isin([1, 3])]
    # trait A: every validation patient of rounds 1 and 3 is high
    hide = labels.trait.eq("A") & labels.patient_id.isin(val.patient_id) & labels.label.eq(0)
    res = label_balance(labels[~hide], s)
    assert not res.passed and res.severity == dg.AssetCheckSeverity.WARN
    assert "c/A round 1" in res.description and "c/A round 3" in res.description and "c/B" not in res.description
    res = label_balance(labels[~hide], s, ensemble_size=4)
    assert res.severity == dg.AssetCheckSeverity.ERROR
    assert "c/A (3 of 5 rounds usable, ensemble.size 4)" in res.description
