"""Ensemble tile calls and slide scores for every slide, new slides included (SPEC 3.5-3.6, 4)."""

from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from .. import layout
from ..config import PathomchConfig
from ..ensemble import member_vote, members_of, slide_score, without_ensemble_note
from ..files import atomic_path, local_copy
from ..partitions import SLIDES, configured_by_cohort
from ..resources import AcceleratorResource, PathomchResource
from ..tables import read_parquet
from ..training import load_model, predict_files
from ..versions import code_version
from .ingest import slide_tiles
from .models import model_deps, tile_positions


class MemberModels:
    """Ensemble members of each trait with a usable ensemble (``traits``; the others are in ``missing``):
    their stored tile predictions, and the models themselves (loaded only for slides the members never
    scored, such as slides that arrived later)."""

    def __init__(self, cfg: PathomchConfig, cohort: str):
        self.cfg, self.cohort = cfg, cohort
        self._models: dict[tuple[str, str], Any] = {}  # (trait, member): its Keras model, loaded when needed
        self.members: dict[str, list[str]] = {}
        self.stored: dict[tuple[str, str], dict[str, np.ndarray]] = {}  # (trait, member): slide id -> tile p
        self.missing: list[str] = []
        for trait in cfg.cohorts[cohort].traits:
            members = members_of(cfg, cohort, trait)
            if members is None:
                self.missing.append(trait)
                continue
            self.members[trait] = members
            for m in members:
                df = read_parquet(layout.predictions_file(cfg, cohort, trait, m))
                self.stored[(trait, m)] = {sid: g["p"].to_numpy() for sid, g in df.groupby("slide_id", sort=False)}

    @property
    def traits(self) -> list[str]:
        return list(self.members)

    def probabilities(self, trait: str, slide_id: str, n_tiles: int) -> tuple[np.ndarray, bool]:
        """(members x tiles) probabilities and whether any model had to run."""
        out, ran = [], False
        for m in self.members[trait]:
            p = self.stored[(trait, m)].get(slide_id)
            if p is None or len(p) != n_tiles:  # new (or re-tiled) slide: run the member model
                if (trait, m) not in self._models:
                    self._models[(trait, m)] = load_model(layout.model_dir(self.cfg, self.cohort, trait, m))
                f = local_copy(layout.tile_file(self.cfg, self.cohort, slide_id))
                p = predict_files(self._models[(trait, m)], [f], self.cfg.training.input_px)[0]
                ran = True
            out.append(p)
        return np.stack(out) if out else np.zeros((0, n_tiles)), ran


def build(cfg: PathomchConfig, trait_model_asset, ensemble_asset):
    @dg.asset(
        partitions_def=SLIDES,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name="models",
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
            slides = store.read("slides", "cohort = ?", [cohort]).set_index("slide_id")
            tiles = tile_positions(store, cohort)
            members = MemberModels(cfg, cohort)
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
                    probs, ran = members.probabilities(trait, sid, len(pos))
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
