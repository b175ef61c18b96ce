"""The ensemble of one trait: the ``ensemble`` procedure (SPEC 3.6).

From the trait's ``model_metrics`` and ``model_rounds`` rows: the rounds that may join (trained; rounds excluded
for a missing class are left out with a warning), the members (``ensemble.size`` best by validation AUC), the
Table 1 mean of rounds, the members' vote on every tile they scored, the ensemble's ``model_metrics`` rows and
``ensemble.json``.  A trait without enough usable rounds, or whose members scored different tiles, has no
ensemble: its earlier one is removed, so every later step leaves the trait out (:class:`NoEnsemble`).  The
science is in :mod:`~pathomch_assets.ensemble` and :mod:`~pathomch_assets.evaluation`.  Nothing here imports
Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import layout
from .config import PathomchConfig, target_key
from .ensemble import ensemble_spec, ensemble_votes, exclusion_advice, select_ensemble, slide_score_rows, too_few_rounds
from .evaluation import ROUNDS_MEAN, evaluation_sets, metrics_rows, rounds_summary
from .files import atomic_path
from .ingest import training_slides
from .predictions import read_member


class NoEnsemble(RuntimeError):
    """The trait has no usable ensemble; the message says why and what to do (its earlier outputs are removed)."""


@dataclass
class EnsembleOutcome:
    """The trait's ensemble: members, ``ensemble.json`` text, members' tile probabilities (members x tiles),
    the ensemble's ``model_metrics`` rows, the mean of rounds, slides scored, usable and excluded rounds."""

    members: list[str]
    spec: str
    probs: np.ndarray
    metrics: pd.DataFrame
    summary: pd.DataFrame
    n_slides: int
    usable: list[str]
    excluded: dict[str, str]


def remove_ensemble(cfg: PathomchConfig, store, cohort: str, trait: str) -> None:
    """Remove the trait's ensemble (``ensemble.json``, its ``model_metrics`` rows), so later steps leave it out."""
    layout.ensemble_file(cfg, cohort, trait).unlink(missing_ok=True)
    for model in ("ensemble", ROUNDS_MEAN):
        store.delete("model_metrics", f"{target_key(cohort, trait)}/{model}")


def usable_rounds(cfg: PathomchConfig, store, cohort: str, trait: str) -> tuple[pd.DataFrame, dict, dict, list]:
    """The rounds' ``model_metrics`` rows, their validation AUCs, the rounds excluded (round -> reason) and the
    rounds neither trained nor excluded (``trait_model`` not materialized for them)."""
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
    return round_metrics, val_auc, excluded, missing


def member_probabilities(cfg: PathomchConfig, cohort: str, trait: str, members: list[str]):
    """(tile positions ``slide_id, col, row``, members x tiles probabilities), or None when the members' stored
    predictions cover different tiles."""
    frames = [read_member(cfg, cohort, trait, m) for m in members]
    base = frames[0][["slide_id", "col", "row"]]
    if any(not f[["slide_id", "col", "row"]].equals(base) for f in frames[1:]):
        return None
    return base, np.stack([f["p"].to_numpy() for f in frames])


def build_ensemble(
    cfg: PathomchConfig, store, cohort: str, trait: str, warn: Callable[[str], object]
) -> EnsembleOutcome:
    """Choose the trait's members, score the slides they scored by their vote, write the ensemble's and the mean of
    rounds' ``model_metrics`` rows and ``ensemble.json``; ``warn`` gets a line per excluded round.  Raises
    :class:`NoEnsemble` (after removing the trait's earlier ensemble) when there can be none."""
    target, e = target_key(cohort, trait), cfg.ensemble

    def fail(message: str) -> NoEnsemble:
        remove_ensemble(cfg, store, cohort, trait)
        return NoEnsemble(message)

    round_metrics, val_auc, excluded, missing = usable_rounds(cfg, store, cohort, trait)
    if missing:
        raise fail(f"{target}: no trained model for {missing}; materialize trait_model for them first")
    for m, why in excluded.items():
        warn(exclusion_advice(cohort, trait, m, why))
    usable = [m for m in cfg.round_names() if m in val_auc]
    if len(usable) < e.size:
        raise fail(too_few_rounds(cohort, trait, usable, excluded, e.size))
    summary = rounds_summary(round_metrics)
    store.write("model_metrics", f"{target}/{ROUNDS_MEAN}", summary.assign(cohort=cohort, trait=trait))
    members = select_ensemble(val_auc, e.size)
    voted = member_probabilities(cfg, cohort, trait, members)
    if voted is None:
        raise fail(
            f"{target}: tile predictions of {members} cover different tiles; re-run trait_model "
            f"for every round after re-tiling"
        )
    base, probs = voted
    votes = ensemble_votes(base, probs, e.threshold, e.min_votes)
    scores = slide_score_rows(cohort, trait, "ensemble", votes, training_slides(store, cohort), e.threshold)
    labels = store.read("labels", "cohort = ? AND trait = ?", [cohort, trait])
    splits = store.read("splits", "cohort = ?", [cohort])
    m = metrics_rows(scores[["patient_id", "score"]], evaluation_sets(labels, splits, None))
    store.write("model_metrics", f"{target}/ensemble", m.assign(cohort=cohort, trait=trait, model="ensemble"))
    store.ensure_views()
    spec = ensemble_spec(members, val_auc, excluded, e.min_votes, e.threshold)
    with atomic_path(layout.ensemble_file(cfg, cohort, trait)) as tmp:
        tmp.write_text(spec)
    return EnsembleOutcome(members, spec, probs, m, summary, len(scores), usable, excluded)
