"""Survival by heterogeneity per cohort (SPEC 3.10, paper Figures 4-6)."""

import dagster as dg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..config import PathomchConfig
from ..partitions import cohorts
from ..reporting import figure_file, md_table
from ..resources import PathomchResource
from ..slides import primary_slides
from ..survival import (
    concordance,
    cox_hti,
    expression_groupings,
    hti_groupings,
    leaked_patients,
    plot_hti_by_expression,
    plot_km,
    survival_set,
)
from ..versions import code_version, refresh_on_new_slides
from .cartography import analysis_sets, analysis_settings, hti_settings
from .models import model_deps

ALL = dg.AllPartitionMapping()


def survival_frame(store, cohort: str, pair: list[str]) -> tuple[pd.DataFrame, set[str]]:
    """One row per survival-set patient (its DX1 slide, ``slides.primary_slides``): HTI and robust HTI of the
    pair, survival, percentiles."""
    labels = store.read("labels", "cohort = ?", [cohort])
    splits = store.read("splits", "cohort = ? AND round = 0", [cohort])
    patients = survival_set(labels, splits, pair)
    slides = primary_slides(store.read("slides", "cohort = ?", [cohort]))
    hti = store.read("hti", "cohort = ? AND traits = ?", [cohort, "+".join(pair)])
    stats = store.read("hti_stats", "cohort = ? AND traits = ?", [cohort, "+".join(pair)])
    hti = hti[["slide_id", "hti"]].merge(
        stats[["slide_id", "hti_robust", "ci_low", "ci_high", "p_spatial"]], on="slide_id", how="left"
    )
    clinical = store.read("clinical", "cohort = ?", [cohort])
    df = slides[slides["patient_id"].isin(patients)][["patient_id", "slide_id"]]
    df = df.merge(hti, on="slide_id").merge(
        clinical[["patient_id", "os_months", "os_event", "er_status", "subtype"]], on="patient_id"
    )
    for t in pair:
        pct = labels[labels["trait"] == t].drop_duplicates("patient_id").set_index("patient_id")["percentile"]
        df[f"percentile_{t}"] = df["patient_id"].map(pct)
    return df, patients


def build(cfg: PathomchConfig, cartography_asset, clinical_asset, trait_model_asset, ensemble_asset):
    @dg.asset(
        partitions_def=cohorts(cfg),
        group_name="survival",
        kinds={"lifelines"},
        code_version=code_version(cfg.survival, analysis_settings(cfg), hti_settings(cfg)),
        deps=[
            dg.AssetDep(cartography_asset, partition_mapping=ALL),
            clinical_asset,
            *model_deps(trait_model_asset, ensemble_asset),
        ],
        automation_condition=refresh_on_new_slides(),
        description="Per cohort and trait pair: the survival set (test patients plus patients OOD for both "
        "traits, one DX1 slide each), Kaplan-Meier curves with 95% CI and log-rank tests for HTI > 0.5 vs "
        "<= 0.5 and > 0.7 vs <= 0.3, the bulk-expression baseline per trait, a Cox model with HTI as a "
        "continuous covariate, and (breast) HTI by ER status and PAM50 subtype. Beside the paper: the same "
        "groupings and Cox model by the robust HTI (`hti_robust`), Harrell's concordance index of each (`c_index`), "
        "number-at-risk tables under every Kaplan-Meier plot, and HTI by above/below-median expression (paper "
        "Figure 5b). A figure that cannot be made says why. Writes `survival`.",
    )
    def survival_analysis(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        cohort = context.partition_key
        sv = cfg.survival
        rows, meta = [], {}
        for pair in analysis_sets(cfg, cohort, store):
            if len(pair) != 2:
                continue
            name = "+".join(pair)
            df, _ = survival_frame(store, cohort, pair)
            columns = ["hti"] + (["hti_robust"] if df["hti_robust"].notna().any() else [])
            panels = [hti_groupings(df, sv.hti_split, sv.contrast_low, sv.contrast_high, c) for c in columns]
            panels.append(expression_groupings(df, pair))
            for t in (t for panel in panels for t in panel):
                rows.append(
                    {
                        "cohort": cohort,
                        "traits": name,
                        "grouping": t.grouping,
                        "n_low": t.n_low,
                        "n_high": t.n_high,
                        "logrank_p": t.logrank_p,
                        "test_statistic": t.test_statistic,
                        "method": "logrank",
                        "p_value": t.logrank_p,
                        "n_patients": t.n_low + t.n_high,
                    }
                )
            for c in columns:
                cox = cox_hti(df, c)
                rows.append(
                    {
                        "cohort": cohort,
                        "traits": name,
                        "grouping": f"{c} continuous (Cox)",
                        "method": "cox",
                        "hazard_ratio": cox.hazard_ratio,
                        "hr_ci_low": cox.ci_low,
                        "hr_ci_high": cox.ci_high,
                        "p_value": cox.p_value,
                        "n_patients": cox.n,
                    }
                )
                c_index, n = concordance(df, c)
                rows.append(
                    {
                        "cohort": cohort,
                        "traits": name,
                        "grouping": f"{c} (Harrell's C)",
                        "method": "concordance",
                        "c_index": c_index,
                        "n_patients": n,
                    }
                )
            width = max(len(p) for p in panels)
            fig, axes = plt.subplots(len(panels), width, figsize=(3.8 * width, 4.4 * len(panels)), squeeze=False)
            for row, panel in zip(axes, panels):
                for ax, t in zip(row, panel):
                    plot_km(t, ax=ax)
                for ax in row[len(panel) :]:
                    ax.axis("off")
            fig.suptitle(f"{cohort}: {name} (n = {len(df)})", fontsize=9)
            fig.tight_layout()
            km_file = cfg.output_root / "survival" / f"{cohort}_{name}_kaplan_meier.png"
            meta.update(figure_file(fig, km_file, f"kaplan_meier_{name}", cfg.output_root))
            meta[f"patients_{name}"] = len(df)
            meta.update(
                figure_file(
                    plot_hti_by_expression(df, pair),
                    cfg.output_root / "survival" / f"{cohort}_{name}_hti_by_expression.png",
                    f"hti_by_expression_{name}",
                    cfg.output_root,
                )
            )
            groups, why = clinical_groups(df, cfg.cohorts[cohort].clinical)
            if groups:
                clinical_file = cfg.output_root / "survival" / f"{cohort}_{name}_hti_by_clinical.png"
                meta.update(figure_file(_hti_by(df, groups), clinical_file, f"hti_by_clinical_{name}", cfg.output_root))
            if why:
                context.log.warning(f"{cohort} {name}: {why}")
                meta[f"hti_by_clinical_{name}_note"] = why
        table = pd.DataFrame(rows)
        store.write("survival", cohort, table)
        store.ensure_views()
        meta["survival"] = md_table(
            table[["traits", "grouping", "n_low", "n_high", "logrank_p", "hazard_ratio", "c_index", "p_value"]],
            floatfmt=".3g",
        )
        meta["dagster/row_count"] = len(table)
        return dg.MaterializeResult(metadata=meta)

    @dg.asset_check(
        asset=survival_analysis,
        blocking=True,
        description="No survival-set patient was in a train or validation split of either trait.",
    )
    def survival_set_never_trained_on(context, pathomch: PathomchResource) -> dg.AssetCheckResult:
        store = pathomch.get_store()
        leaks = []
        for cohort in pathomch.get_config().cohorts:
            labels = store.read("labels", "cohort = ?", [cohort])
            splits = store.read("splits", "cohort = ?", [cohort])
            if labels.empty or splits.empty:
                continue
            for pair in analysis_sets(pathomch.get_config(), cohort, store):
                patients = survival_set(labels, splits[splits["round"] == 0], pair)
                leaks += [
                    f"{cohort} {'+'.join(pair)} {p}" for p in sorted(leaked_patients(patients, labels, splits, pair))
                ]
        return dg.AssetCheckResult(
            passed=not leaks, metadata={"leaked": len(leaks)}, description="; ".join(leaks[:10]) or None
        )

    return [survival_analysis], [survival_set_never_trained_on]


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


def _hti_by(df: pd.DataFrame, columns: list[str]):
    """HTI boxplots by clinical group (paper Figure 6), with a Kruskal-Wallis p-value each."""
    from scipy.stats import kruskal

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
