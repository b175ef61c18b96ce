"""Survival sets and tests, checked against lifelines directly and by construction."""

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.statistics import logrank_test

from pathomch_assets.survival import cox_hti, expression_groupings, hti_groupings, leaked_patients, survival_set


def frame(n=80, effect=2.5, seed=0):
    rng = np.random.default_rng(seed)
    hti = rng.random(n)
    t = rng.exponential(1 / (0.02 * np.exp(effect * hti)))
    c = rng.uniform(20, 120, n)
    return pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(n)],
            "hti": hti,
            "os_months": np.minimum(t, c),
            "os_event": (t <= c).astype(int),
            "percentile_A": rng.random(n) * 100,
        }
    )


def test_groupings_match_lifelines():
    df = frame()
    split, contrast = hti_groupings(df)
    hi, lo = df[df.hti > 0.5], df[df.hti <= 0.5]
    ref = logrank_test(hi.os_months, lo.os_months, hi.os_event, lo.os_event)
    assert split.logrank_p == pytest.approx(ref.p_value) and (split.n_high, split.n_low) == (len(hi), len(lo))
    assert contrast.n_high == (df.hti > 0.7).sum() and contrast.n_low == (df.hti <= 0.3).sum()
    assert split.logrank_p < 0.05  # planted effect found
    (base,) = expression_groupings(df, ["A"])
    assert base.n_high == (df.percentile_A > 50).sum()


def test_cox_matches_lifelines():
    df = frame(effect=2.0, seed=1)
    ref = CoxPHFitter().fit(df[["os_months", "os_event", "hti"]], "os_months", "os_event").summary.loc["hti"]
    res = cox_hti(df)
    assert res.hazard_ratio == pytest.approx(ref["exp(coef)"]) and res.p_value == pytest.approx(ref["p"])
    assert res.hazard_ratio > 1


def test_survival_set_is_test_plus_ood_for_both_traits_and_never_trained_on():
    labels = pd.DataFrame(
        {
            "trait": ["A"] * 4 + ["B"] * 4,
            "patient_id": ["p1", "p2", "p3", "p4"] * 2,
            "subset": ["labeled", "ood_all", "ood_all", "labeled", "labeled", "ood_all", "labeled", "labeled"],
        }
    )
    splits = pd.DataFrame(
        {"patient_id": ["p1", "p2", "p3", "p4"], "split": ["test", "train", "train", "val"], "round": 0}
    )
    s = survival_set(labels, splits, ["A", "B"])
    assert s == {"p1", "p2"}  # p1 test; p2 OOD for both; p3 labelled for B; p4 validation
    assert leaked_patients(s, labels, splits, ["A", "B"]) == set()
    assert leaked_patients({"p3"}, labels, splits, ["A", "B"]) == {"p3"}


def test_concordance_matches_lifelines_and_reads_as_risk():
    from lifelines.utils import concordance_index

    from pathomch_assets.survival import concordance

    df = frame(effect=2.5, seed=2)
    c, n = concordance(df)
    assert n == len(df) and c == pytest.approx(concordance_index(df.os_months, -df.hti, df.os_event))
    assert c > 0.6  # higher HTI, shorter survival: concordant
    assert concordance(frame(effect=0.0, seed=3))[0] == pytest.approx(0.5, abs=0.1)
    assert np.isnan(concordance(df.head(3))[0])


def test_robust_groupings_are_named_by_their_column():
    from pathomch_assets.survival import hti_groupings

    df = frame().assign(hti_robust=lambda d: d.hti.clip(0, 0.6))
    split, contrast = hti_groupings(df, column="hti_robust")
    assert split.grouping == "hti_robust>0.5 vs <=0.5" and split.n_high == (df.hti_robust > 0.5).sum()
    assert contrast.n_high == 0


def test_kaplan_meier_has_number_at_risk_table():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathomch_assets.survival import plot_km

    df = frame()
    split, _ = hti_groupings(df)
    fig, ax = plt.subplots()
    plot_km(split, ax=ax)
    table = fig.axes[1]  # lifelines' at-risk table: one tick label per time, group blocks of at risk/censored/events
    import re

    first = table.get_xticklabels()[0].get_text()
    assert [int(n) for n in re.findall(r"At risk\s+(\d+)", first)] == [split.n_low, split.n_high]  # all at time 0
    later = [int(v) for v in table.get_xticklabels()[1].get_text().split()]
    assert later[0] < split.n_low  # fewer at risk later on
    plt.close(fig)


def test_hti_by_expression_figure_counts_patients():
    from pathomch_assets.survival import plot_hti_by_expression

    df = frame().assign(percentile_B=lambda d: 100 - d.percentile_A)
    fig = plot_hti_by_expression(df, ["A", "B"])
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == [f"<= median\n(n={(df.percentile_A <= 50).sum()})", f"> median\n(n={(df.percentile_A > 50).sum()})"]
    assert "Mann-Whitney p" in fig.axes[1].get_title()


def test_figure_6_says_why_it_is_not_made():
    from pathomch_assets.survival import clinical_groups

    df = frame().assign(er_status=None, subtype=None)
    groups, why = clinical_groups(df, "luad/data_clinical_patient.txt")
    assert groups == [] and "not made" in why and "luad/data_clinical_patient.txt" in why
    assert "ER status (ER_STATUS_BY_IHC): 0 patients" in why and "PAM50 subtype (SUBTYPE): 0 patients" in why
    df["er_status"] = ["Positive", "Negative"] * (len(df) // 2)
    groups, why = clinical_groups(df, "c.txt")
    assert groups == ["er_status"] and "made for er_status" in why and "ER status" not in why
    df["subtype"] = "LumA"
    assert clinical_groups(df, "c.txt") == (["er_status", "subtype"], None)


def test_cox_matches_r_coxph_on_the_rossi_recidivism_data():
    """Reference: R's survival::coxph on Rossi et al.'s recidivism data (432 released prisoners, weeks to re-arrest),
    the example of J. Fox and S. Weisberg, "Cox Proportional-Hazards Regression for Survival Data in R" (appendix
    to An R Companion to Applied Regression), as quoted by lifelines' own tests
    (lifelines/tests/test_estimation.py: test_coef_output_against_R_super_accurate,
    test_standard_error_coef_output_against_R, test_z_value_output_against_R_to_3_decimal_places):

        library(survival)
        mod.allison <- coxph(Surv(week, arrest) ~ fin + age + race + wexp + mar + paro + prio, data=rossi)
        cat(round(mod.allison$coefficients, 4), sep=", ")
        summary(mod.allison)
    """
    from lifelines.datasets import load_rossi

    from pathomch_assets.survival import cox_summary

    covariates = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
    s = cox_summary(load_rossi(), covariates, duration_col="week", event_col="arrest")
    assert s["coef"].tolist() == pytest.approx([-0.3794, -0.0574, 0.3139, -0.1498, -0.4337, -0.0849, 0.0915], abs=5e-5)
    assert s["se"].tolist() == pytest.approx([0.19138, 0.02200, 0.30799, 0.21222, 0.38187, 0.19576, 0.02865], abs=5e-5)
    assert s["z"].tolist() == pytest.approx([-1.983, -2.611, 1.019, -0.706, -1.136, -0.434, 3.194], abs=5e-4)
    assert s["hazard_ratio"].tolist() == pytest.approx(np.exp(s["coef"]).tolist())
    # the HTI model is the same fit with one covariate
    one = load_rossi().rename(columns={"week": "os_months", "arrest": "os_event", "prio": "hti"})
    res = cox_hti(one)
    ref = cox_summary(one, ["hti"]).loc["hti"]
    assert (res.hazard_ratio, res.p_value, res.n) == (pytest.approx(ref.hazard_ratio), pytest.approx(ref.p_value), 432)
