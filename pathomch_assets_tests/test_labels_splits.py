"""Labels (SPEC 3.2) and frozen subject-level splits (SPEC 3.1)."""

import numpy as np
import pandas as pd
import pytest

from pathomch_assets.checks import label_balance, split_leakage, same_test_set
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
    labels = pd.DataFrame({"cohort": "c", "trait": "T", "patient_id": pids, "label": [i % 2 for i in range(200)],
                           "subset": "labeled"})
    assert label_balance(labels, s).passed
    assert not label_balance(labels.assign(label=1), s).passed
