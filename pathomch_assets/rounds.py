"""One tile classifier per (cohort/trait, round): the ``trait_model`` procedure (SPEC 3.4-3.5).

The round's labelled slides (the trait's labelled patients x the round's splits x the usable slides,
:func:`round_slides`).  A round whose training or validation split lacks a class is not trained: it is recorded as
excluded in ``model_rounds`` and the outputs of an earlier training of it are removed (:func:`exclude_round`).
Otherwise the model is trained on the training slides, validated on the validation slides and saved; it then
scores every tile of every usable slide, and its ``slide_scores``, ``model_metrics`` and ``model_rounds`` rows
are written (:func:`train_round`).  The science is in :mod:`~pathomch_assets.training`,
:mod:`~pathomch_assets.ensemble` and :mod:`~pathomch_assets.evaluation`.  Nothing here imports Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import layout
from .config import PathomchConfig, target_key
from .ensemble import exclusion_advice, missing_class, slide_score_rows
from .evaluation import evaluation_sets, metrics_rows
from .files import local_copy
from .ingest import tile_positions, training_slides
from .predictions import prediction_frame, remove_member, write_member
from .training import SlideSet, TrainResult, predict_files, save_model, train_model


def slide_set(cfg: PathomchConfig, cohort: str, frame: pd.DataFrame) -> SlideSet:
    """Slides of ``frame`` (``slide_id, label, n_tiles``) with their tile files."""
    return SlideSet(
        frame["slide_id"].tolist(),
        [local_copy(layout.tile_file(cfg, cohort, s)) for s in frame["slide_id"]],
        frame["label"].astype(int).tolist(),
        frame["n_tiles"].astype(int).tolist(),
    )


@dataclass
class RoundSlides:
    """A round's inputs: the usable slides, the trait's labels, the round's splits, and ``labelled`` (the
    labelled patients' slides with their ``split`` and ``label``)."""

    slides: pd.DataFrame
    labels: pd.DataFrame
    splits: pd.DataFrame
    labelled: pd.DataFrame

    def counts(self) -> dict[str, int]:
        """Patients and slides of the training and validation splits (``train_patients``, ``val_slides``, ...)."""
        lab = self.labelled
        return {
            f"{s}_{what}": int(lab.loc[lab["split"] == s, col].nunique())
            for s in ("train", "val")
            for what, col in (("patients", "patient_id"), ("slides", "slide_id"))
        }


def round_slides(store, cohort: str, trait: str, r: int) -> RoundSlides:
    """The inputs of round ``r`` of ``trait`` from the cohort's ``slides``, ``labels`` and ``splits`` tables."""
    slides = training_slides(store, cohort)
    labels = store.read("labels", "cohort = ? AND trait = ?", [cohort, trait])
    splits = store.read("splits", "cohort = ? AND round = ?", [cohort, r])
    lab = labels[labels["subset"] == "labeled"].merge(splits, on="patient_id").merge(slides, on="patient_id")
    return RoundSlides(slides, labels, splits, lab)


def round_row(cohort: str, trait: str, round_name: str, status: str, reason: str | None, counts: dict) -> pd.DataFrame:
    """The round's ``model_rounds`` row."""
    row = {"cohort": cohort, "trait": trait, "model": round_name, "status": status, "reason": reason, **counts}
    return pd.DataFrame([row])


def exclude_round(cfg: PathomchConfig, store, cohort: str, trait: str, round_name: str, reason: str, counts: dict):
    """Record the round as excluded and remove what an earlier training of it left (its rows, stored predictions)."""
    part = f"{target_key(cohort, trait)}/{round_name}"
    for table in ("slide_scores", "model_metrics"):  # no stale rows of an earlier training
        store.delete(table, part)
    remove_member(cfg, cohort, trait, round_name)
    store.write("model_rounds", part, round_row(cohort, trait, round_name, "excluded", reason, counts))
    store.ensure_views()


@dataclass
class RoundOutcome:
    """What :func:`train_round` did: the split counts, and either why the round was excluded (``reason`` and
    the warning ``excluded``) or the training result, the model's metrics rows and its saved file."""

    counts: dict[str, int]
    reason: str = ""
    excluded: str = ""
    result: TrainResult | None = None
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    model_file: Path | None = None


def train_round(
    cfg: PathomchConfig, store, cohort: str, trait: str, round_name: str, accelerator, log: Callable[[str], object]
) -> RoundOutcome:
    """Train, save and apply one round's model and write its rows; or record the round as excluded.

    ``accelerator``: the device (``resources.AcceleratorResource``: ``strategy()`` and ``describe()``); ``log``
    gets progress lines.
    """
    r = layout.round_index(round_name)
    rs = round_slides(store, cohort, trait, r)
    counts = rs.counts()
    reason = missing_class(rs.labelled)
    if reason:
        exclude_round(cfg, store, cohort, trait, round_name, reason, counts)
        return RoundOutcome(counts, reason, exclusion_advice(cohort, trait, round_name, reason))
    lab = rs.labelled
    train, val = (slide_set(cfg, cohort, lab[lab["split"] == s]) for s in ("train", "val"))
    seed = cfg.seed * 1000 + r
    model, res = train_model(train, val, cfg.training, cfg.ensemble.threshold, seed, accelerator.strategy(), log=log)
    settings = {"cohort": cohort, "trait": trait, "round": r, "seed": seed, "training": cfg.training.model_dump()}
    model_file = save_model(
        model, res, layout.model_dir(cfg, cohort, trait, round_name), {**settings, "device": accelerator.describe()}
    )
    # every tile of every usable slide
    files = [local_copy(layout.tile_file(cfg, cohort, s)) for s in rs.slides["slide_id"]]
    log(f"scoring {len(files)} slides with {round_name}")
    probs = predict_files(model, files, cfg.training.input_px)
    preds = prediction_frame(tile_positions(store, cohort), rs.slides, probs)
    write_member(cfg, cohort, trait, round_name, preds)
    scores = slide_score_rows(cohort, trait, round_name, preds, rs.slides, cfg.ensemble.threshold)
    part = f"{target_key(cohort, trait)}/{round_name}"
    store.write("slide_scores", part, scores)
    metrics = metrics_rows(scores[["patient_id", "score"]], evaluation_sets(rs.labels, rs.splits, r))
    store.write("model_metrics", part, metrics.assign(cohort=cohort, trait=trait, model=round_name))
    store.write("model_rounds", part, round_row(cohort, trait, round_name, "trained", None, counts))
    store.ensure_views()
    return RoundOutcome(counts, result=res, metrics=metrics, model_file=model_file)
