"""Which traits the models learned (the validity gate, issue 29) and site effects per trait (issue 28)."""

import dagster as dg

from .. import layout
from ..config import PathomchConfig
from ..partitions import ALL, cohorts, model_deps
from ..predictions import usable_traits
from ..reporting import figure_file, md_table
from ..resources import PathomchResource
from ..site_effects import label_share_by_site, plot_label_share, site_effect_rows, site_warning
from ..tables import SCHEMAS
from ..validity import gate_warning, plot_validity, validity_rows
from ..versions import code_version, data_version, refresh_on_new_slides

#: the columns of `trait_validity` and `site_effects` shown on the asset pages
VALIDITY_SHOWN = [
    "trait",
    "feeds",
    "valid",
    "auc",
    "ci_low",
    "ci_high",
    "n_slides",
    "n_patients",
    "auc_unseen_sites",
    "auc_ood_near",
]
SITES_SHOWN = [
    "trait",
    "test",
    "p_value",
    "cramers_v",
    "site_dependent",
    "auc_seen_sites",
    "auc_unseen_sites",
    "site_from_scores_bacc",
    "site_from_scores_chance",
    "site_from_stain_bacc",
]


def build(cfg: PathomchConfig, cohort: str, trait_model_asset, ensemble_asset):
    @dg.asset(
        partitions_def=cohorts(cohort),
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"pandas", "parquet"},
        code_version=code_version(cfg.maps, cfg.seed),
        deps=model_deps(trait_model_asset, ensemble_asset),
        description="Per cohort, the validity gate (issue 29): per trait, the slide AUC on the validation slides "
        "of every round scored by that round's model, pooled, with a bootstrap interval over patients (the test "
        "set is never read), and on validation sites outside the round's training sites where there are any. "
        "A trait whose lower bound is below maps.min_auc is left out of maps, HTI and survival with a warning "
        "(maps.include_invalid keeps it, flagged in `hti`). Writes `trait_validity` (docs/validity-and-sites.md).",
    )
    def trait_validity(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        cohort = context.partition_key
        rows = validity_rows(
            cfg.cohorts[cohort].traits,
            usable_traits(cfg, cohort),
            store.read("labels", "cohort = ?", [cohort]),
            store.read("splits", "cohort = ?", [cohort]),
            store.read("slide_scores", "cohort = ? AND model LIKE 'round_%'", [cohort]),
            cfg.maps,
            cfg.seed,
            cfg.site_effects.alpha,
        ).assign(cohort=cohort)
        store.write("trait_validity", cohort, rows)
        store.ensure_views()
        meta: dict = {"trait_validity": md_table(rows.reindex(columns=VALIDITY_SHOWN), floatfmt=".2f")}
        warning = gate_warning(cohort, rows)
        if warning:
            context.log.warning(warning)
            meta["warning"] = warning
        meta["feeds"] = ", ".join(rows.loc[rows["feeds"].astype(bool), "trait"]) or "none"
        meta["held_out"] = md_table(rows[["trait", "held_out", "reason"]])
        fig = plot_validity(rows, cfg.maps.min_auc)
        meta.update(figure_file(fig, layout.validity_figure_file(cfg, cohort), "trait_validity_plot", cfg.output_root))
        # the decisions: maps, HTI and survival are stale only when one changes
        version = data_version(rows[["trait", "feeds", "valid"]].to_json())
        return dg.MaterializeResult(data_version=version, metadata=meta)

    return trait_validity


def build_site_effects(cfg: PathomchConfig, cohort: str, slide_predictions_asset, trait_model_asset, ensemble_asset):
    @dg.asset(
        partitions_def=cohorts(cohort),
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"pandas", "parquet"},
        code_version=code_version(cfg.site_effects, cfg.seed),
        deps=[
            dg.AssetDep(slide_predictions_asset, partition_mapping=ALL),
            *model_deps(trait_model_asset, ensemble_asset),
        ],
        automation_condition=refresh_on_new_slides(cohort),
        description="Per cohort and trait, whatever the split method (issue 28): labels by tissue source site "
        "(chi-square, Fisher or Monte Carlo chi-square, Cramer's V; `site_dependent` when p < site_effects.alpha, "
        "with a warning), the held-out AUC on sites seen in training and on sites never seen, and how well the "
        "site is predicted from the ensemble slide scores and from per-slide stain statistics (when a `stain` "
        "table exists): cross-validated balanced accuracy against chance. Writes `site_effects`.",
    )
    def site_effects(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        cohort = context.partition_key
        traits = cfg.cohorts[cohort].traits
        labels = store.read("labels", "cohort = ?", [cohort])
        stain = store.read("stain", "cohort = ?", [cohort]) if "stain" in SCHEMAS else None
        splits = store.read("splits", "cohort = ?", [cohort])
        rows = site_effect_rows(
            traits,
            labels,
            splits,
            store.read("slide_scores", "cohort = ? AND model LIKE 'round_%'", [cohort]),
            store.read("slide_scores", "cohort = ? AND model = 'ensemble'", [cohort]),
            stain,
            cfg.site_effects.alpha,
            cfg.seed,
        ).assign(cohort=cohort)
        store.write("site_effects", cohort, rows)
        store.ensure_views()
        meta: dict = {"site_effects": md_table(rows[SITES_SHOWN], floatfmt=".3g"), "dagster/row_count": len(rows)}
        warning = site_warning(cohort, rows)
        if warning:
            context.log.warning(warning)
            meta["warning"] = warning
        notes = sorted({n for r in rows["note"].dropna() for n in r.split("; ")})
        if notes:
            meta["notes"] = "\n".join(notes)
        fig = plot_label_share(label_share_by_site(labels, traits, splits), rows, traits)
        meta.update(
            figure_file(fig, layout.site_effects_figure_file(cfg, cohort), "label_share_by_site", cfg.output_root)
        )
        return dg.MaterializeResult(metadata=meta)

    return site_effects
