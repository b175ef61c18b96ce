r"""The ensemble of a trait (SPEC 3.5-3.6, paper Methods): which rounds may join it, which do, how they vote.

- Eligible rounds: a round whose training or validation split lacks a class is not trained
  (:func:`missing_class`) and is left out with a warning (:func:`exclusion_advice`); a trait left with
  fewer eligible rounds than ``ensemble.size`` has no ensemble (:func:`too_few_rounds`).
- Members: the ``size`` trained rounds with the best validation slide AUC (:func:`select_ensemble`).
- Vote: a tile is positive when at least ``min_votes`` members give it :math:`p \ge` ``threshold``
  (2 of 3: majority; :func:`member_vote`).
- Slide score: the percentage of a slide's tiles called positive (:func:`slide_score`).

The members of each trait are written to ``layout.ensemble_file``; a trait without that file has no
usable ensemble, and every step after it leaves the trait out (``predictions.usable_traits`` reads which
traits have one, :func:`usable_sets` keeps the trait sets they complete).  Nothing here reads or writes a file.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from . import layout


def slide_score(calls) -> float:
    """Percentage (0-100) of a slide's tiles called positive; NaN for a slide without tiles.

    Examples
    --------
    >>> slide_score([True, False, False, True])
    50.0
    """
    calls = np.asarray(calls, bool)
    return float(100.0 * calls.mean()) if calls.size else float("nan")


def slide_scores_from_tiles(probs, threshold: float = 0.5) -> float:
    """Percentage (0-100) of tiles with probability at or above ``threshold``: one model's slide score.

    Examples
    --------
    >>> slide_scores_from_tiles(np.array([0.9, 0.2, 0.5, 0.1]))
    50.0
    """
    return slide_score(np.asarray(probs) >= threshold)


def select_ensemble(val_auc: dict[str, float], size: int = 3) -> list[str]:
    """The ``size`` models with the best validation AUC (ties broken by name; a NaN AUC ranks last).

    Examples
    --------
    >>> select_ensemble({"round_0": .7, "round_1": .9, "round_2": .6, "round_3": .8, "round_4": .75})
    ['round_1', 'round_3', 'round_4']
    """
    ranked = sorted(val_auc, key=lambda m: (-np.nan_to_num(val_auc[m], nan=-1.0), m))
    return ranked[:size]


def ensemble_calls(probs, threshold: float = 0.5, min_votes: int = 2) -> np.ndarray:
    """Tile calls by vote: ``probs`` is (n_models, n_tiles); positive when ``min_votes`` models agree.

    Examples
    --------
    >>> ensemble_calls(np.array([[0.9, 0.1, 0.6], [0.8, 0.7, 0.2], [0.1, 0.2, 0.55]])).tolist()
    [True, False, True]
    """
    return member_vote(probs, threshold, min_votes)[0]


def member_vote(probs, threshold: float = 0.5, min_votes: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The vote of the members on each tile: (calls, votes, members' mean probability).

    ``probs`` is (n_members, n_tiles).  The mean probability is what the robust HTI reads (soft calls).

    Examples
    --------
    >>> calls, votes, p = member_vote(np.array([[0.9, 0.1], [0.8, 0.7], [0.1, 0.4]]))
    >>> calls.tolist(), votes.tolist(), p.round(2).tolist()
    ([True, False], [2, 1], [0.6, 0.4])
    """
    probs = np.asarray(probs)
    votes = (probs >= threshold).sum(axis=0)
    return votes >= min_votes, votes, probs.mean(axis=0)


def ensemble_votes(positions: pd.DataFrame, probs, threshold: float = 0.5, min_votes: int = 2) -> pd.DataFrame:
    """The ensemble's tile calls: ``positions`` (one row per tile, in the order of ``probs``' columns) with the
    members' vote (:func:`member_vote`): ``call``, ``votes`` and their mean probability ``p``."""
    calls, votes, p = member_vote(probs, threshold, min_votes)
    return positions.assign(call=calls, votes=votes, p=p)


def slide_score_rows(cohort, trait, model, preds: pd.DataFrame, slides: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """``slide_scores`` rows from the ensemble's tile calls (``slide_id, call``: :func:`ensemble_votes`, scored by
    :func:`slide_score`) or one model's tile probabilities (``slide_id, p``, without ``call``: scored at
    ``threshold``); ``slides`` gives each slide's ``patient_id``.  The one place a slide score is made."""
    col = "call" if "call" in preds.columns else "p"
    score = (lambda v: slide_scores_from_tiles(v, threshold)) if col == "p" else slide_score
    agg = preds.groupby("slide_id")[col].agg(score=score, n_tiles="size").reset_index()
    agg = agg.merge(slides[["slide_id", "patient_id"]], on="slide_id")
    return agg.assign(cohort=cohort, trait=trait, model=model)


# ----------------------------------------------------------------------------- eligible rounds
def missing_class(rows: pd.DataFrame, splits=("train", "val")) -> str | None:
    """Why a round cannot be trained or validated, or ``None``: a split of ``rows`` (labelled slides of one
    trait and round: ``split, label, patient_id, slide_id``) without both classes.

    Examples
    --------
    >>> df = pd.DataFrame({"split": ["train", "train", "val", "val"], "label": [0, 1, 1, 1],
    ...                    "patient_id": list("abcd"), "slide_id": list("abcd")})
    >>> missing_class(df)
    'the val split has only high (label 1) patients (2 patients, 2 slides)'
    """
    problems = []
    for split in splits:
        g = rows[rows["split"] == split]
        classes = set(g["label"].astype(int))
        if len(classes) < 2:
            has = "no labelled" if not classes else f"only {'high (label 1)' if 1 in classes else 'low (label 0)'}"
            problems.append(
                f"the {split} split has {has} patients ({g['patient_id'].nunique()} patients, "
                f"{g['slide_id'].nunique()} slides)"
            )
    return "; ".join(problems) or None


def exclusion_advice(cohort: str, trait: str, model: str, reason: str) -> str:
    """The warning for a round left out of its trait's ensemble: which, why, and what to change."""
    return (
        f"{cohort}/{trait} {model} is excluded from the ensemble: {reason}. The cohort is too small for "
        f"this split: add patients, raise splits.val_fraction (now too few labelled patients land in "
        f"validation), or widen labels.low_percentile/high_percentile; other rounds and traits go on"
    )


def too_few_rounds(cohort: str, trait: str, usable: list[str], excluded: dict[str, str], size: int) -> str:
    """The failure message of a trait left with fewer usable rounds than ``ensemble.size``."""
    why = "; ".join(f"{m}: {r}" for m, r in sorted(excluded.items()))
    return (
        f"{cohort}/{trait}: only {len(usable)} usable rounds ({', '.join(usable) or 'none'}) but ensemble.size is "
        f"{size}; excluded: {why}. Add patients, raise splits.val_fraction or splits.rounds, or lower "
        f"ensemble.size/min_votes for this deployment; the other traits are not affected"
    )


# ----------------------------------------------------------------------------- the members on disk
def ensemble_spec(members, val_auc, excluded, min_votes: int, threshold: float) -> str:
    """The text of ``ensemble.json``: members, every round's validation AUC, excluded rounds, the vote."""
    return json.dumps(
        {"members": members, "val_auc": val_auc, "excluded": excluded, "min_votes": min_votes, "threshold": threshold},
        indent=1,
    )


def usable_sets(sets: list[list[str]], usable: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """(trait sets whose every trait has a usable ensemble, the others).

    Examples
    --------
    >>> usable_sets([["A", "B"], ["A", "C"], ["A", "B", "C"]], ["A", "B"])
    ([['A', 'B']], [['A', 'C'], ['A', 'B', 'C']])
    """
    kept = [s for s in sets if set(s) <= set(usable)]
    return kept, [s for s in sets if s not in kept]


def without_ensemble_note(cohort: str, traits: list[str]) -> str:
    """The log line and metadata of a step that leaves out traits without a usable ensemble."""
    return (
        f"{cohort}: {', '.join(traits)} left out: no usable ensemble ({layout.ENSEMBLE_FILE} missing: the trait's "
        f"`ensemble` partition failed or was not materialized; its failure says why)"
    )
