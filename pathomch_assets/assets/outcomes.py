"""Survival by heterogeneity per cohort (SPEC 3.10, paper Figures 4-6)."""

from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd

from .. import layout
from ..cartography import trait_gate, trait_sets
from ..config import PathomchConfig
from ..partitions import ALL, cohorts, model_deps
from ..plots import pyplot
from ..reporting import figure_file, md_table
from ..resources import PathomchResource
from ..slides import primary_slides
from ..survival import (
    clinical_groups,
    pair_rows,
    plot_hti_by_clinical,
    plot_hti_by_expression,
    plot_km,
    survival_frame,
)
from ..versions import code_version, refresh_on_new_slides
from .cartography import analysis_settings, hti_settings

if TYPE_CHECKING:  # Dagster's type of a metadata value (ints, strings, MetadataValue); not exported by `dagster`
    from dagster._core.definitions.metadata import RawMetadataValue

#: the columns of `survival` shown in the UI
SHOWN = ["traits", "grouping", "n_low", "n_high", "logrank_p", "hazard_ratio", "c_index", "p_value", "status"]


def read_survival_frame(store, cohort: str, pair: list[str]) -> tuple[pd.DataFrame, set[str]]:
    """``survival.survival_frame`` of ``pair`` from the cohort's tables (DX1 slides: ``slides.primary_slides``)."""
    name = "+".join(pair)
    return survival_frame(
        pair,
        store.read("labels", "cohort = ?", [cohort]),
        store.read("splits", "cohort = ? AND round = 0", [cohort]),
        primary_slides(store.read("slides", "cohort = ?", [cohort])),
        store.read("hti", "cohort = ? AND traits = ?", [cohort, name]),
        store.read("hti_stats", "cohort = ? AND traits = ?", [cohort, name]),
        store.read("clinical", "cohort = ?", [cohort]),
    )


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
        sv = cfg.survival
        rows: list[dict] = []
        meta: dict[str, RawMetadataValue] = {}
        sets, _, note = trait_sets(cfg, cohort, store)  # traits without a usable ensemble or failing the gate left out
        if note:
            context.log.warning(note)
            meta["traits_without_ensemble"] = note
        gate = trait_gate(cfg, cohort, store)
        if gate.note:
            context.log.warning(gate.note)
            meta["validity_note"] = gate.note
        if gate.invalid:
            meta["invalid_traits"] = ", ".join(gate.invalid)  # left out, or kept by maps.include_invalid
        store.delete("survival", cohort)  # no result of earlier inputs stands while this runs or if it fails
        for pair in (s for s in sets if len(s) == 2):
            name = "+".join(pair)
            df, _ = read_survival_frame(store, cohort, pair)
            pair_result, panels = pair_rows(cohort, pair, df, sv.hti_split, sv.contrast_low, sv.contrast_high)
            rows += pair_result
            for r in (r for r in pair_result if r["reason"]):
                context.log.warning(f"{cohort} {name}: {r['grouping']}: not tested: {r['reason']}")
            width = max(len(p) for p in panels)
            fig, axes = pyplot().subplots(len(panels), width, figsize=(3.8 * width, 4.4 * len(panels)), squeeze=False)
            for row, panel in zip(axes, panels):
                for ax, t in zip(row, panel):
                    plot_km(t, ax=ax)
                for ax in row[len(panel) :]:
                    ax.axis("off")
            fig.suptitle(f"{cohort}: {name} (n = {len(df)})", fontsize=9)
            fig.tight_layout()
            km_file = layout.survival_figure_file(cfg, cohort, name, "kaplan_meier")
            meta.update(figure_file(fig, km_file, f"kaplan_meier_{name}", cfg.output_root))
            meta[f"patients_{name}"] = len(df)
            meta.update(
                figure_file(
                    plot_hti_by_expression(df, pair),
                    layout.survival_figure_file(cfg, cohort, name, "hti_by_expression"),
                    f"hti_by_expression_{name}",
                    cfg.output_root,
                )
            )
            groups, why = clinical_groups(df, cfg.cohorts[cohort].clinical)
            if groups:
                clinical_file = layout.survival_figure_file(cfg, cohort, name, "hti_by_clinical")
                meta.update(
                    figure_file(
                        plot_hti_by_clinical(df, groups), clinical_file, f"hti_by_clinical_{name}", cfg.output_root
                    )
                )
            if why:
                context.log.warning(f"{cohort} {name}: {why}")
                meta[f"hti_by_clinical_{name}_note"] = why
        table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["cohort", "traits", *SHOWN[1:], "n_patients"])
        store.write("survival", cohort, table)
        store.ensure_views()
        meta["survival"] = md_table(table[SHOWN], floatfmt=".3g")
        meta["dagster/row_count"] = len(table)
        return dg.MaterializeResult(metadata=meta)

    return survival_analysis
