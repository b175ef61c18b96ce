"""Stored tile predictions of the ensemble members, keyed by the content of the tile file they scored.

``trait_model`` stores every tile's probability with the ``tiles_digest`` of the slide's tile file (a hash
of its bytes, :attr:`pathomch_assets.tilestore.TileWriter.digest`).  A slide's stored predictions are reused
only while its ``slides`` row names the same digest: a slide re-tiled with other content (another file put
in its place, other tiling settings) is scored again by the member models, even when its tile count is the
same.  :func:`score_slides` is the ``slide_predictions`` procedure: every slide's ensemble tile calls
(``layout.slide_calls_file``) and ``ensemble`` rows of ``slide_scores``.  Which traits have a usable
ensemble, and its members, are read here too (:func:`usable_traits`, :func:`members_of`: ``ensemble.json``).
Nothing here imports Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import layout
from .config import PathomchConfig
from .ensemble import ensemble_votes, slide_score_rows, without_ensemble_note
from .files import atomic_path, local_copy
from .ingest import tile_positions
from .tables import read_parquet


def members_of(cfg: PathomchConfig, cohort: str, trait: str) -> list[str] | None:
    """The members of the trait's ensemble, or None when the trait has no usable ensemble."""
    path = layout.ensemble_file(cfg, cohort, trait)
    return json.loads(path.read_text())["members"] if path.exists() else None


def usable_traits(cfg: PathomchConfig, cohort: str) -> list[str]:
    """The cohort's traits (configuration order) that have a usable ensemble (``ensemble.json``): the traits every
    step after ``ensemble`` maps, scores and analyses."""
    return [t for t in cfg.cohorts[cohort].traits if layout.ensemble_file(cfg, cohort, t).exists()]


def prediction_frame(positions: dict[str, pd.DataFrame], slides: pd.DataFrame, probs: list[np.ndarray]) -> pd.DataFrame:
    """Every tile's probability (``col, row, slide_id, p, tiles_digest``) of ``slides`` (rows of ``slides``, in
    the order of ``probs``), with the digest of the tile file the probabilities were computed on."""
    digests = slides["tiles_digest"] if "tiles_digest" in slides else pd.Series([None] * len(slides))
    return pd.concat(
        [positions[s].assign(slide_id=s, p=p, tiles_digest=d) for s, d, p in zip(slides["slide_id"], digests, probs)],
        ignore_index=True,
    )


def write_member(cfg: PathomchConfig, cohort: str, trait: str, model: str, preds: pd.DataFrame) -> None:
    """Store one model's tile probabilities (:func:`prediction_frame`), one file per slide
    (:func:`~pathomch_assets.layout.member_predictions_file`, each written atomically); files of slides no
    longer in ``preds`` and the single file of earlier versions are removed."""
    kept = set()
    for sid, g in preds.groupby("slide_id", sort=False):
        path = layout.member_predictions_file(cfg, cohort, trait, model, str(sid))
        kept.add(path.name)
        with atomic_path(path) as tmp:
            g.reset_index(drop=True).to_parquet(tmp, index=False)
    remove_member(cfg, cohort, trait, model, keep=kept)


def remove_member(
    cfg: PathomchConfig, cohort: str, trait: str, model: str, keep: frozenset[str] | set[str] = frozenset()
) -> None:
    """Remove one model's stored tile probabilities (the per-slide files but ``keep``, and the single file)."""
    folder = layout.member_predictions_dir(cfg, cohort, trait, model)
    if folder.exists():
        for f in folder.glob("*.parquet"):
            if f.name not in keep:
                f.unlink(missing_ok=True)
    layout.predictions_file(cfg, cohort, trait, model).unlink(missing_ok=True)


def read_member(
    cfg: PathomchConfig, cohort: str, trait: str, model: str, slide_ids: list[str] | None = None
) -> pd.DataFrame:
    """One model's stored tile probabilities, of ``slide_ids`` only when given (one file opened per slide;
    a slide without a file has no rows), sorted by slide id.  Where no per-slide files exist, the single
    file of earlier versions is read (filtered on ``slide_id``)."""
    folder = layout.member_predictions_dir(cfg, cohort, trait, model)
    if folder.exists():
        if slide_ids is None:
            files = sorted(folder.glob("*.parquet"), key=lambda f: f.name)
        else:
            files = [layout.member_predictions_file(cfg, cohort, trait, model, s) for s in sorted(set(slide_ids))]
            files = [f for f in files if f.exists()]
        frames = [read_parquet(f) for f in files]
        if frames:
            return pd.concat(frames, ignore_index=True).sort_values("slide_id", kind="stable", ignore_index=True)
        return pd.DataFrame(columns=["slide_id", "col", "row", "p", "tiles_digest"])
    df = read_parquet(layout.predictions_file(cfg, cohort, trait, model))
    return df if slide_ids is None else df[df["slide_id"].isin(slide_ids)].reset_index(drop=True)


class MemberModels:
    """Ensemble members of each trait with a usable ensemble (``traits``; the others are in ``missing``):
    their stored tile predictions with the tile file digest they were made on, and the models themselves
    (loaded only for slides whose tiles the members never scored: slides that arrived later or changed)."""

    def __init__(self, cfg: PathomchConfig, cohort: str, slide_ids: list[str] | None = None):
        """``slide_ids``: the slides to be scored (their stored predictions only are read); ``None``: all."""
        self.cfg, self.cohort = cfg, cohort
        self._models: dict[tuple[str, str], Any] = {}  # (trait, member): its Keras model, loaded when needed
        self.members: dict[str, list[str]] = {}
        #: (trait, member): slide id -> (tile file digest the predictions were made on, tile probabilities)
        self.stored: dict[tuple[str, str], dict[str, tuple[str | None, np.ndarray]]] = {}
        self.missing: list[str] = []
        for trait in cfg.cohorts[cohort].traits:
            members = members_of(cfg, cohort, trait)
            if members is None:
                self.missing.append(trait)
                continue
            self.members[trait] = members
            for m in members:
                df = read_member(cfg, cohort, trait, m, slide_ids)
                if "tiles_digest" not in df:
                    df = df.assign(tiles_digest=None)  # stored before digests were kept: never reused
                self.stored[(trait, m)] = {
                    sid: (g["tiles_digest"].iloc[0], g["p"].to_numpy()) for sid, g in df.groupby("slide_id", sort=False)
                }

    @property
    def traits(self) -> list[str]:
        return list(self.members)

    def probabilities(self, trait: str, slide_id: str, n_tiles: int, digest: str | None) -> tuple[np.ndarray, bool]:
        """(members x tiles) probabilities of the slide whose tile file has ``digest``, and whether any model
        had to run (stored predictions of other content, or of unknown content, are never used)."""
        out, ran = [], False
        for m in self.members[trait]:
            made_on, p = self.stored[(trait, m)].get(slide_id, (None, None))
            if p is None or not isinstance(digest, str) or made_on != digest or len(p) != n_tiles:
                if (trait, m) not in self._models:
                    from .training import load_model

                    self._models[(trait, m)] = load_model(layout.model_dir(self.cfg, self.cohort, trait, m))
                p = self.predict(self._models[(trait, m)], slide_id)
                ran = True
            out.append(p)
        return np.stack(out) if out else np.zeros((0, n_tiles)), ran

    def predict(self, model, slide_id: str) -> np.ndarray:
        """Tile probabilities of the slide's tile file by ``model``."""
        from .training import predict_files

        f = local_copy(layout.tile_file(self.cfg, self.cohort, slide_id))
        return predict_files(model, [f], self.cfg.training.input_px)[0]


@dataclass
class ScoreRun:
    """What one ``slide_predictions`` run did: slides scored, of them scored by running the models (not seen when
    the members scored every slide), slides without tiles or usable ensembles, and per cohort the note on traits
    left out (no usable ensemble)."""

    scored: int = 0
    ran_models: int = 0
    skipped: int = 0
    left_out: dict[str, str] = field(default_factory=dict)


def score_slides(
    cfg: PathomchConfig,
    store,
    groups: dict[str, list[str]],
    warn: Callable[[str], object],
    info: Callable[[str], object],
) -> ScoreRun:
    """Ensemble tile calls and ``slide_scores`` rows of the slides of ``groups`` (cohort -> slide ids): the run's
    slides only (their partition files of ``slides`` and ``tiles``, their stored predictions)."""
    run = ScoreRun()
    for cohort, sids in groups.items():
        keys = [f"{cohort}/{s}" for s in sids]
        slides = store.read("slides", "cohort = ?", [cohort], partitions=keys).set_index("slide_id")
        tiles = tile_positions(store, cohort, sids)
        members = MemberModels(cfg, cohort, sids)
        if members.missing:
            run.left_out[cohort] = without_ensemble_note(cohort, members.missing)
            warn(run.left_out[cohort])
        for sid in sids:
            key = f"{cohort}/{sid}"
            ok = sid in slides.index and slides.loc[sid, "status"] == "ok" and sid in tiles
            scored = score_slide(cfg, store, members, cohort, sid, tiles[sid], slides.loc[sid]) if ok else None
            if scored is None:  # no tiles, or no trait of the cohort with a usable ensemble
                store.delete("slide_scores", key)
                layout.slide_calls_file(cfg, cohort, sid).unlink(missing_ok=True)
                run.skipped += 1
                continue
            run.scored += 1
            run.ran_models += scored
            if scored:
                info(f"{key}: scored with the existing ensemble models (not seen in training)")
    store.ensure_views()
    return run


def score_slide(
    cfg: PathomchConfig, store, members: MemberModels, cohort: str, sid: str, pos: pd.DataFrame, slide: pd.Series
) -> bool | None:
    """Write one slide's ensemble tile calls (every trait with a usable ensemble) and its ``slide_scores`` rows;
    whether a model had to run, or None when no trait has a usable ensemble (nothing written)."""
    frames, rows, ran_any = [], [], False
    e, patient = cfg.ensemble, pd.DataFrame({"slide_id": [sid], "patient_id": [slide["patient_id"]]})
    for trait in members.traits:
        probs, ran = members.probabilities(trait, sid, len(pos), slide["tiles_digest"])
        ran_any |= ran
        votes = ensemble_votes(pos.assign(trait=trait), probs, e.threshold, e.min_votes)  # p: the robust HTI's
        frames.append(votes)
        rows.append(slide_score_rows(cohort, trait, "ensemble", votes.assign(slide_id=sid), patient, e.threshold))
    if not frames:
        return None
    with atomic_path(layout.slide_calls_file(cfg, cohort, sid)) as tmp:
        pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
    scores = pd.concat(rows, ignore_index=True).assign(tiles_digest=slide["tiles_digest"])  # the tiles scored
    store.write("slide_scores", f"{cohort}/{sid}", scores)
    return ran_any
