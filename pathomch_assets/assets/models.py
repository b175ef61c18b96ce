"""Per-trait models, ensembles and their evaluation (SPEC 3.4-3.7)."""

import dagster as dg
import numpy as np
import pandas as pd

from .. import layout
from ..config import PathomchConfig, split_target
from ..deployment import GPU_STEP
from ..ensemble import (
    ensemble_calls,
    ensemble_spec,
    exclusion_advice,
    missing_class,
    select_ensemble,
    slide_score_rows,
    too_few_rounds,
    usable_traits,
    without_ensemble_note,
)
from ..evaluation import ROUNDS_MEAN, correlation_rows, evaluation_sets, metrics_rows, rounds_summary, table_one
from ..files import atomic_path, local_copy
from ..partitions import ALL, FAILS_ALONE, cohorts, model_deps, target_rounds, targets
from ..plots import plot_score_boxes, plot_training_curve
from ..predictions import prediction_frame, read_member, remove_member, write_member
from ..qc import kept_tiles
from ..reporting import figure_file, md_table
from ..resources import AcceleratorResource, PathomchResource
from ..training import SlideSet, predict_files, save_model, train_model
from ..versions import code_version, data_version, file_version, refresh_on_new_slides
from .molecular import training_slides


def slide_set(cfg, cohort: str, frame: pd.DataFrame) -> SlideSet:
    """Slides of ``frame`` (``slide_id, label, n_tiles``) with their tile files."""
    return SlideSet(
        frame["slide_id"].tolist(),
        [local_copy(layout.tile_file(cfg, cohort, s)) for s in frame["slide_id"]],
        frame["label"].astype(int).tolist(),
        frame["n_tiles"].astype(int).tolist(),
    )


def tile_positions(store, cohort: str, slide_ids: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Per slide, the grid positions of the tiles in its tile file, in file order (QC-dropped tiles left out); of
    ``slide_ids`` only when given (their partition files only are read)."""
    keys = None if slide_ids is None else [f"{cohort}/{s}" for s in slide_ids]
    tiles = kept_tiles(store.read("tiles", "cohort = ?", [cohort], partitions=keys))
    return {sid: g[["col", "row"]].reset_index(drop=True) for sid, g in tiles.groupby("slide_id")}


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
        r = layout.round_index(round_name)
        slides = training_slides(store, cohort)
        labels = store.read("labels", "cohort = ? AND trait = ?", [cohort, trait])
        splits = store.read("splits", "cohort = ? AND round = ?", [cohort, r])
        lab = labels[labels["subset"] == "labeled"].merge(splits, on="patient_id").merge(slides, on="patient_id")
        part = f"{target}/{round_name}"
        counts = {
            f"{s}_{what}": int(lab.loc[lab["split"] == s, col].nunique())
            for s in ("train", "val")
            for what, col in (("patients", "patient_id"), ("slides", "slide_id"))
        }
        reason = missing_class(lab)
        if reason:
            message = exclusion_advice(cohort, trait, round_name, reason)
            context.log.warning(message)
            for table in ("slide_scores", "model_metrics"):  # no stale rows of an earlier training
                store.delete(table, part)
            remove_member(cfg, cohort, trait, round_name)
            store.write(
                "model_rounds",
                part,
                pd.DataFrame(
                    [
                        {
                            "cohort": cohort,
                            "trait": trait,
                            "model": round_name,
                            "status": "excluded",
                            "reason": reason,
                            **counts,
                        }
                    ]
                ),
            )
            store.ensure_views()
            return dg.MaterializeResult(
                data_version=data_version("excluded", reason), metadata={"excluded": message, **counts}
            )
        train, val = (slide_set(cfg, cohort, lab[lab["split"] == s]) for s in ("train", "val"))
        seed = cfg.seed * 1000 + r
        model, res = train_model(
            train, val, cfg.training, cfg.ensemble.threshold, seed, accelerator.strategy(), log=context.log.info
        )
        directory = layout.model_dir(cfg, cohort, trait, round_name)
        save_model(
            model,
            res,
            directory,
            {
                "cohort": cohort,
                "trait": trait,
                "round": r,
                "seed": seed,
                "training": cfg.training.model_dump(),
                "device": accelerator.describe(),
            },
        )
        # every tile of every usable slide
        files = [local_copy(layout.tile_file(cfg, cohort, s)) for s in slides["slide_id"]]
        context.log.info(f"scoring {len(files)} slides with {round_name}")
        probs = predict_files(model, files, cfg.training.input_px)
        pos = tile_positions(store, cohort)
        preds = prediction_frame(pos, slides, probs)
        write_member(cfg, cohort, trait, round_name, preds)
        scores = slide_score_rows(cohort, trait, round_name, preds, slides, cfg.ensemble.threshold)
        store.write("slide_scores", part, scores)
        metrics = metrics_rows(scores[["patient_id", "score"]], evaluation_sets(labels, splits, r))
        store.write("model_metrics", part, metrics.assign(cohort=cohort, trait=trait, model=round_name))
        store.write(
            "model_rounds",
            part,
            pd.DataFrame(
                [{"cohort": cohort, "trait": trait, "model": round_name, "status": "trained", "reason": None, **counts}]
            ),
        )
        store.ensure_views()
        auc = dict(zip(metrics["eval_set"], metrics["auc"]))
        return dg.MaterializeResult(
            data_version=file_version(directory / "model.keras"),
            metadata={
                "best_val_slide_auc": res.best_val_auc,
                "best_evaluation": res.best_eval,
                "evaluations": res.evals,
                "monitor": res.monitor,
                "batch": ", ".join(f"{k} {v}" for k, v in res.batch.items()),
                **counts,
                "train_tiles": res.n_train_tiles,
                "seconds": round(res.seconds, 1),
                "test_auc": float(auc.get("test", np.nan)),
                "device": accelerator.describe(),
                "metrics": md_table(metrics),
                "model_path": dg.MetadataValue.path(str(directory / "model.keras")),
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

        def fail(message: str):
            """No usable ensemble: its earlier outputs go, so that later steps leave the trait out."""
            layout.ensemble_file(cfg, cohort, trait).unlink(missing_ok=True)
            for model in ("ensemble", ROUNDS_MEAN):
                store.delete("model_metrics", f"{target}/{model}")
            raise dg.Failure(message)

        rounds = cfg.round_names()
        all_metrics = store.read("model_metrics", "cohort = ? AND trait = ?", [cohort, trait])
        round_metrics = all_metrics[all_metrics["model"].isin(rounds)]
        metrics = round_metrics[round_metrics["eval_set"] == "val"]
        val_auc = dict(zip(metrics["model"], metrics["auc"]))
        status = store.read("model_rounds", "cohort = ? AND trait = ?", [cohort, trait])
        excluded = {
            r.model: r.reason
            for r in status.itertuples()
            if r.status == "excluded" and r.model in rounds and r.model not in val_auc
        }
        missing = [m for m in rounds if m not in val_auc and m not in excluded]
        if missing:
            fail(f"{target}: no trained model for {missing}; materialize trait_model for them first")
        for m, why in excluded.items():
            context.log.warning(exclusion_advice(cohort, trait, m, why))
        usable = [m for m in rounds if m in val_auc]
        if len(usable) < cfg.ensemble.size:
            fail(too_few_rounds(cohort, trait, usable, excluded, cfg.ensemble.size))
        summary = rounds_summary(round_metrics)
        store.write("model_metrics", f"{target}/{ROUNDS_MEAN}", summary.assign(cohort=cohort, trait=trait))
        members = select_ensemble(val_auc, cfg.ensemble.size)
        frames = [read_member(cfg, cohort, trait, m) for m in members]
        base = frames[0][["slide_id", "col", "row"]]
        for f in frames[1:]:
            if not f[["slide_id", "col", "row"]].equals(base):
                fail(
                    f"{target}: tile predictions of {members} cover different tiles; re-run trait_model "
                    f"for every round after re-tiling"
                )
        probs = np.stack([f["p"].to_numpy() for f in frames])
        calls = ensemble_calls(probs, cfg.ensemble.threshold, cfg.ensemble.min_votes)
        slides = training_slides(store, cohort)
        scores = slide_score_rows(cohort, trait, "ensemble", base.assign(call=calls), slides, cfg.ensemble.threshold)
        labels = store.read("labels", "cohort = ? AND trait = ?", [cohort, trait])
        splits = store.read("splits", "cohort = ?", [cohort])
        m = metrics_rows(scores[["patient_id", "score"]], evaluation_sets(labels, splits, None))
        store.write("model_metrics", f"{target}/ensemble", m.assign(cohort=cohort, trait=trait, model="ensemble"))
        store.ensure_views()
        spec = ensemble_spec(members, val_auc, excluded, cfg.ensemble.min_votes, cfg.ensemble.threshold)
        with atomic_path(layout.ensemble_file(cfg, cohort, trait)) as tmp:
            tmp.write_text(spec)
        auc = dict(zip(m["eval_set"], m["auc"]))
        # the members and what they predict: a retrained member changes it, a re-run on the same models does not
        return dg.MaterializeResult(
            data_version=data_version(spec, probs.tobytes()),
            metadata={
                "members": ", ".join(members),
                "test_auc": float(auc.get("test", np.nan)),
                "ood_near_auc": float(auc.get("ood_near", np.nan)),
                "ood_all_auc": float(auc.get("ood_all", np.nan)),
                "metrics": md_table(m),
                "slides_scored": len(scores),
                "usable_rounds": len(usable),
                "excluded_rounds": "; ".join(f"{k}: {v}" for k, v in excluded.items()) or "none",
                "rounds_mean_and_range": md_table(summary[["eval_set", "auc", "auc_min", "auc_max", "n_models"]]),
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
