"""Ensemble tile calls and slide scores for every slide, new slides included (SPEC 3.5-3.6, 4)."""

import dagster as dg
import pandas as pd

from .. import layout
from ..config import PathomchConfig
from ..ensemble import member_vote, slide_score, without_ensemble_note
from ..files import atomic_path
from ..partitions import configured_by_cohort, model_deps, slides
from ..predictions import MemberModels
from ..resources import AcceleratorResource, PathomchResource
from ..versions import code_version
from .models import tile_positions


def build(cfg: PathomchConfig, cohort: str, slide_tiles, trait_model_asset, ensemble_asset):
    """``cohort``'s ``slide_predictions`` (key ``<cohort>/slide_predictions``)."""

    @dg.asset(
        partitions_def=slides(cohort),
        backfill_policy=dg.BackfillPolicy.single_run(),
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"tensorflow", "parquet"},
        code_version=code_version(cfg.ensemble, cfg.training.input_px),
        deps=[*model_deps(trait_model_asset, ensemble_asset), slide_tiles],
        description="Per slide: ensemble tile calls of every trait (2 of 3 members) and the `ensemble` rows of "
        "`slide_scores`. Slides the members already scored reuse their stored predictions; slides that arrived "
        "after training are scored by the existing ensemble models, never retrained. A trait without a usable "
        "ensemble (its `ensemble` partition failed) is left out, named in the metadata and the log.",
    )
    def slide_predictions(
        context: dg.AssetExecutionContext, pathomch: PathomchResource, accelerator: AcceleratorResource
    ) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        scored, new, left_out = 0, 0, {}
        groups, skipped = configured_by_cohort(context.partition_keys, cfg, context.log.warning)
        for cohort, sids in groups.items():
            # the run's slides only: their partition files of `slides` and `tiles`, their stored predictions
            keys = [f"{cohort}/{s}" for s in sids]
            slides = store.read("slides", "cohort = ?", [cohort], partitions=keys).set_index("slide_id")
            tiles = tile_positions(store, cohort, sids)
            members = MemberModels(cfg, cohort, sids)
            if members.missing:
                left_out[cohort] = without_ensemble_note(cohort, members.missing)
                context.log.warning(left_out[cohort])
            for sid in sids:
                key = f"{cohort}/{sid}"
                if sid not in slides.index or slides.loc[sid, "status"] != "ok" or sid not in tiles:
                    store.delete("slide_scores", key)
                    layout.slide_calls_file(cfg, cohort, sid).unlink(missing_ok=True)
                    skipped += 1
                    continue
                pos = tiles[sid]
                frames, rows, ran_any = [], [], False
                for trait in members.traits:
                    probs, ran = members.probabilities(trait, sid, len(pos), slides.loc[sid, "tiles_digest"])
                    ran_any |= ran
                    calls, votes, p = member_vote(probs, cfg.ensemble.threshold, cfg.ensemble.min_votes)
                    frames.append(pos.assign(trait=trait, call=calls, votes=votes, p=p))  # p: the robust HTI's
                    rows.append(
                        {
                            "cohort": cohort,
                            "trait": trait,
                            "model": "ensemble",
                            "slide_id": sid,
                            "score": slide_score(calls),
                            "n_tiles": len(pos),
                            "patient_id": slides.loc[sid, "patient_id"],
                            "tiles_digest": slides.loc[sid, "tiles_digest"],  # the tiles these scores are of
                        }
                    )
                if not frames:  # no trait of the cohort has a usable ensemble
                    store.delete("slide_scores", key)
                    layout.slide_calls_file(cfg, cohort, sid).unlink(missing_ok=True)
                    skipped += 1
                    continue
                with atomic_path(layout.slide_calls_file(cfg, cohort, sid)) as tmp:
                    pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
                store.write("slide_scores", key, pd.DataFrame(rows))
                scored += 1
                new += ran_any
                if ran_any:
                    context.log.info(f"{key}: scored with the existing ensemble models (not seen in training)")
        store.ensure_views()
        return dg.MaterializeResult(
            metadata={
                "slides_scored": scored,
                "scored_by_running_models": new,
                "slides_without_tiles": skipped,
                **({"traits_without_ensemble": "; ".join(left_out.values())} if left_out else {}),
            }
        )

    return slide_predictions
