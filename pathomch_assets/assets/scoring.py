"""Ensemble tile calls and slide scores for every slide, new slides included (SPEC 3.5-3.6, 4)."""

import json

import dagster as dg
import numpy as np
import pandas as pd

from ..config import PathomchConfig
from ..evaluation import ensemble_calls
from ..partitions import SLIDES, by_cohort
from ..resources import AcceleratorResource, PathomchResource
from ..storage import atomic_path, local_copy, read_parquet, safe_stem, tile_file
from ..training import load_model, model_dir, predict_files
from ..versions import code_version
from .ingest import slide_tiles
from .models import model_deps, predictions_path, tile_positions

ALL = dg.AllPartitionMapping()


def slide_calls_path(cfg: PathomchConfig, cohort: str, slide_id: str):
    return cfg.output_root / "predictions" / cohort / "slides" / f"{safe_stem(slide_id)}.parquet"


class MemberModels:
    """Ensemble members of each trait: their stored tile predictions, and the models themselves
    (loaded only for slides the members never scored, such as slides that arrived later)."""

    def __init__(self, cfg: PathomchConfig, cohort: str):
        self.cfg, self.cohort, self._models = cfg, cohort, {}
        self.members, self.stored = {}, {}
        for trait in cfg.cohorts[cohort].traits:
            path = cfg.models_dir / cohort / trait / "ensemble.json"
            if not path.exists():
                raise dg.Failure(f"{cohort}/{trait}: no ensemble at {path}; materialize `ensemble` first")
            self.members[trait] = json.loads(path.read_text())["members"]
            for m in self.members[trait]:
                df = read_parquet(predictions_path(cfg, cohort, trait, m))
                self.stored[(trait, m)] = {sid: g["p"].to_numpy() for sid, g in df.groupby("slide_id", sort=False)}

    def probabilities(self, trait: str, slide_id: str, n_tiles: int) -> tuple[np.ndarray, bool]:
        """(members x tiles) probabilities and whether any model had to run."""
        out, ran = [], False
        for m in self.members[trait]:
            p = self.stored[(trait, m)].get(slide_id)
            if p is None or len(p) != n_tiles:  # new (or re-tiled) slide: run the member model
                if (trait, m) not in self._models:
                    self._models[(trait, m)] = load_model(model_dir(self.cfg.models_dir, self.cohort, trait, m))
                f = local_copy(tile_file(self.cfg.tiles_dir, self.cohort, slide_id))
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
        "after training are scored by the existing ensemble models, never retrained.",
    )
    def slide_predictions(
        context: dg.AssetExecutionContext, pathomch: PathomchResource, accelerator: AcceleratorResource
    ) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        scored, new, skipped = 0, 0, 0
        for cohort, sids in by_cohort(context.partition_keys).items():
            slides = store.read("slides", "cohort = ?", [cohort]).set_index("slide_id")
            tiles = tile_positions(store, cohort)
            members = MemberModels(cfg, cohort)
            for sid in sids:
                key = f"{cohort}/{sid}"
                if sid not in slides.index or slides.loc[sid, "status"] != "ok" or sid not in tiles:
                    store.delete("slide_scores", key)
                    slide_calls_path(cfg, cohort, sid).unlink(missing_ok=True)
                    skipped += 1
                    continue
                pos = tiles[sid]
                frames, rows, ran_any = [], [], False
                for trait in cfg.cohorts[cohort].traits:
                    probs, ran = members.probabilities(trait, sid, len(pos))
                    ran_any |= ran
                    calls = ensemble_calls(probs, cfg.ensemble.threshold, cfg.ensemble.min_votes)
                    frames.append(
                        pos.assign(
                            trait=trait,
                            call=calls,
                            votes=(probs >= cfg.ensemble.threshold).sum(axis=0),
                            p=probs.mean(axis=0),
                        )
                    )  # soft calls for the robust HTI
                    rows.append(
                        {
                            "cohort": cohort,
                            "trait": trait,
                            "model": "ensemble",
                            "slide_id": sid,
                            "score": 100.0 * calls.mean(),
                            "n_tiles": len(pos),
                            "patient_id": sid[:12],
                        }
                    )
                with atomic_path(slide_calls_path(cfg, cohort, sid)) as tmp:
                    pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
                store.write("slide_scores", key, pd.DataFrame(rows))
                scored += 1
                new += ran_any
                if ran_any:
                    context.log.info(f"{key}: scored with the existing ensemble models (not seen in training)")
        store.ensure_views()
        return dg.MaterializeResult(
            metadata={"slides_scored": scored, "scored_by_running_models": new, "slides_without_tiles": skipped}
        )

    return slide_predictions
