"""Survival by heterogeneity per cohort (SPEC 3.10, paper Figures 4-6)."""

import dagster as dg

from ..cohort_survival import SHOWN, cohort_survival
from ..config import PathomchConfig
from ..maps import analysis_settings, hti_settings
from ..partitions import ALL, cohorts, model_deps
from ..reporting import figure_file, md_table
from ..resources import PathomchResource
from ..versions import code_version, refresh_on_new_slides


def build(
    cfg: PathomchConfig,
    cohort: str,
    cartography_asset,
    clinical_asset,
    trait_model_asset,
    ensemble_asset,
    validity_asset,
):
    @dg.asset(
        partitions_def=cohorts(cohort),
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"lifelines"},
        code_version=code_version(cfg.survival, analysis_settings(cfg, cohort), hti_settings(cfg)),
        deps=[
            dg.AssetDep(cartography_asset, partition_mapping=ALL),
            clinical_asset,
            dg.AssetDep(validity_asset, partition_mapping=ALL),
            *model_deps(trait_model_asset, ensemble_asset),
        ],
        automation_condition=refresh_on_new_slides(cohort),
        description="Per cohort and trait pair: the survival set (test patients plus patients OOD for both "
        "traits, one DX1 slide each), Kaplan-Meier curves with 95% CI and log-rank tests for HTI > 0.5 vs "
        "<= 0.5 and > 0.7 vs <= 0.3, the bulk-expression baseline per trait, a Cox model with HTI as a "
        "continuous covariate, and (breast) HTI by ER status and PAM50 subtype. Beside the paper: the same "
        "groupings and Cox model by the robust HTI (`hti_robust`), Harrell's concordance index of each (`c_index`), "
        "number-at-risk tables under every Kaplan-Meier plot, and HTI by above/below-median expression (paper "
        "Figure 5b). A figure that cannot be made says why. Only trait pairs whose traits pass the validity gate "
        "(`trait_validity`) are analysed, unless maps.include_invalid. Degenerate data (every patient censored, no "
        "admissible pair, too few deaths) are stated in each row's `status`/`reason`, never raised; the "
        "cohort's earlier rows are cleared first, so no result of earlier inputs stands as current. "
        "Writes `survival`.",
    )
    def survival_analysis(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        cohort = context.partition_key

        def show(fig, path, label: str) -> dict:
            return figure_file(fig, path, label, cfg.output_root)

        table, meta = cohort_survival(cfg, store, cohort, context.log.warning, show)
        meta["survival"] = md_table(table[SHOWN], floatfmt=".3g")
        meta["dagster/row_count"] = len(table)
        return dg.MaterializeResult(metadata=meta)

    return survival_analysis
