"""Per-trait models, ensembles and their evaluation (SPEC 3.4-3.7)."""

import dagster as dg
import numpy as np

from .. import layout
from ..config import PathomchConfig, split_target
from ..deployment import GPU_STEP
from ..ensemble import without_ensemble_note
from ..evaluation import correlation_rows, table_one
from ..members import NoEnsemble, build_ensemble
from ..partitions import ALL, FAILS_ALONE, cohorts, model_deps, target_rounds, targets
from ..plots import plot_score_boxes, plot_training_curve
from ..predictions import usable_traits
from ..reporting import figure_file, md_table
from ..resources import AcceleratorResource, PathomchResource
from ..rounds import train_round
from ..versions import code_version, data_version, file_version, refresh_on_new_slides


def build(cfg: PathomchConfig, cohort: str, labels_asset, splits_asset):
    """``cohort``'s ``trait_model`` and ``ensemble`` (keys ``<cohort>/<name>``)."""
    multi = target_rounds(cfg, cohort)

    @dg.asset(
        partitions_def=multi,
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"tensorflow", "keras"},
        pool="gpu",
        op_tags=GPU_STEP,
        tags=FAILS_ALONE,
        code_version=code_version(cfg.training, cfg.splits, cfg.labels, cfg.seed),  # + tiling: definitions
        deps=[dg.AssetDep(labels_asset, partition_mapping=ALL), dg.AssetDep(splits_asset, partition_mapping=ALL)],
        description="One tile classifier per (cohort/trait, round) (SPEC 3.4): trained on every diagnostic slide "
        "of the round's training patients (tiles inherit the patient's label), validated every 1/16 epoch by "
        "training.monitor (slide-level AUC by default), best weights kept. Then scores every tile of every usable "
        "slide. Writes the model, its history, tile predictions, its rows of `slide_scores`, `model_metrics` "
        "and `model_rounds`. A round whose training or validation split lacks a class is not trained: it is "
        "recorded as excluded (`model_rounds`) with a warning and left out of the ensemble. Re-materializing "
        "one partition retrains that model only.",
    )
    def trait_model(
        context: dg.AssetExecutionContext, pathomch: PathomchResource, accelerator: AcceleratorResource
    ) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        keys = context.partition_key.keys_by_dimension
        target, round_name = keys["target"], keys["round"]
        cohort, trait = split_target(target)
        out = train_round(cfg, store, cohort, trait, round_name, accelerator, context.log.info)
        if out.excluded:
            context.log.warning(out.excluded)
            return dg.MaterializeResult(
                data_version=data_version("excluded", out.reason), metadata={"excluded": out.excluded, **out.counts}
            )
        res, metrics, model_file = out.result, out.metrics, out.model_file
        assert res is not None and model_file is not None  # trained
        auc = dict(zip(metrics["eval_set"], metrics["auc"]))
        return dg.MaterializeResult(
            data_version=file_version(model_file),
            metadata={
                "best_val_slide_auc": res.best_val_auc,
                "best_evaluation": res.best_eval,
                "evaluations": res.evals,
                "monitor": res.monitor,
                "batch": ", ".join(f"{k} {v}" for k, v in res.batch.items()),
                **out.counts,
                "train_tiles": res.n_train_tiles,
                "seconds": round(res.seconds, 1),
                "test_auc": float(auc.get("test", np.nan)),
                "device": accelerator.describe(),
                "metrics": md_table(metrics),
                "model_path": dg.MetadataValue.path(str(model_file)),
                **figure_file(
                    plot_training_curve(res.history),
                    layout.training_curve_file(cfg, cohort, trait, round_name),
                    "training_curve",
                    cfg.output_root,
                ),
            },
        )

    @dg.asset(
        partitions_def=targets(cfg, cohort),
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"pandas", "parquet"},
        tags=FAILS_ALONE,
        code_version=code_version(cfg.ensemble),
        deps=[dg.AssetDep(trait_model, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("target"))],
        description="Ensemble per trait (SPEC 3.6): the 3 of 5 rounds with the best validation AUC; a tile is "
        "positive when at least 2 of them say so. Rounds excluded for a missing class are left out (listed in "
        "the metadata and `model_rounds`); a trait with fewer usable rounds than ensemble.size fails alone: its "
        "earlier ensemble is removed and every later step leaves the trait out, the other traits go on. "
        "Writes the members (`ensemble.json`), the `ensemble` rows of `model_metrics` and the Table 1 "
        "`mean_of_rounds` rows (mean AUC of the rounds with auc_min/auc_max); `slide_predictions` applies it "
        "to every slide.",
    )
    def ensemble(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        target = context.partition_key
        cohort, trait = split_target(target)
        try:
            out = build_ensemble(cfg, store, cohort, trait, context.log.warning)
        except NoEnsemble as err:
            raise dg.Failure(str(err)) from None
        auc = dict(zip(out.metrics["eval_set"], out.metrics["auc"]))
        # the members and what they predict: a retrained member changes it, a re-run on the same models does not
        return dg.MaterializeResult(
            data_version=data_version(out.spec, out.probs.tobytes()),
            metadata={
                "members": ", ".join(out.members),
                "test_auc": float(auc.get("test", np.nan)),
                "ood_near_auc": float(auc.get("ood_near", np.nan)),
                "ood_all_auc": float(auc.get("ood_all", np.nan)),
                "metrics": md_table(out.metrics),
                "slides_scored": out.n_slides,
                "usable_rounds": len(out.usable),
                "excluded_rounds": "; ".join(f"{k}: {v}" for k, v in out.excluded.items()) or "none",
                "rounds_mean_and_range": md_table(out.summary[["eval_set", "auc", "auc_min", "auc_max", "n_models"]]),
            },
        )

    return trait_model, ensemble


def build_evaluation(cfg: PathomchConfig, cohort: str, slide_predictions_asset, trait_model_asset, ensemble_asset):
    @dg.asset(
        partitions_def=cohorts(cohort),
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"pandas", "parquet"},
        code_version=code_version(cfg.labels, cfg.ensemble),
        deps=[
            dg.AssetDep(slide_predictions_asset, partition_mapping=ALL),
            *model_deps(trait_model_asset, ensemble_asset),
        ],
        automation_condition=refresh_on_new_slides(cohort),
        description="Per cohort: the paper's Table 1 (slide-level AUC: test mean of the trained rounds with its "
        "min-max range, test ensemble, OOD-near and OOD-all ensemble; rounds excluded for a missing class are "
        "named), Figure 2 (ensemble scores by label), and Spearman correlations of ensemble scores with "
        "expression percentiles with Benjamini-Hochberg FDR across traits (`correlations`).",
    )
    def model_evaluation(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        cohort = context.partition_key
        traits = usable_traits(cfg, cohort)
        left_out = [t for t in cfg.cohorts[cohort].traits if t not in traits]
        note = {}
        if left_out:
            note["traits_without_ensemble"] = without_ensemble_note(cohort, left_out)
            context.log.warning(note["traits_without_ensemble"])
        metrics = store.read("model_metrics", "cohort = ?", [cohort])
        table1 = table_one(metrics, cfg.cohorts[cohort].traits)
        status = store.read("model_rounds", "cohort = ? AND status = 'excluded'", [cohort])
        scores = store.read("slide_scores", "cohort = ? AND model = 'ensemble'", [cohort])
        scores = scores[scores["trait"].isin(traits)]
        labels = store.read("labels", "cohort = ?", [cohort])
        labels = labels[labels["trait"].isin(traits)]
        splits = store.read("splits", "cohort = ? AND round = 0", [cohort])
        corr = correlation_rows(scores, labels, splits).assign(cohort=cohort)
        store.write("correlations", cohort, corr)
        store.ensure_views()
        fig = plot_score_boxes(scores, labels, splits, traits)
        return dg.MaterializeResult(
            metadata={
                "table_1": md_table(table1, floatfmt=".2f"),
                "excluded_rounds": md_table(status[["trait", "model", "reason"]]) if len(status) else "none",
                **note,
                **figure_file(fig, layout.scores_figure_file(cfg, cohort), "figure_2", cfg.output_root),
                "correlations": md_table(corr[["trait", "eval_set", "spearman_rho", "p_value", "fdr", "n_slides"]]),
            }
        )

    return model_evaluation
