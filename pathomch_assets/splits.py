"""Subject-level splits (SPEC 3.1), frozen by construction.

Each patient's split is a pure function of ``(seed, patient_id)``: a keyed hash gives a number
``u`` uniform in [0, 1).  ``u_test < test_fraction`` puts the patient in the held-out test set,
the same for every trait and round; otherwise, in round *r*,
``u_r < val_fraction / (1 - test_fraction)`` puts it in validation and the rest trains
(80/10/10 with the paper's fractions).  Adding patients later never moves an existing one, and
the same seed reproduces every split on any machine.  Fractions hold in expectation; with few
patients the counts vary around them (binomially).
"""

from __future__ import annotations

import hashlib

import pandas as pd


def unit_hash(seed: int, purpose: str, patient_id: str) -> float:
    """A reproducible number in [0, 1) for ``(seed, purpose, patient_id)``."""
    digest = hashlib.blake2b(f"{seed}:{purpose}:{patient_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_splits(
    patient_ids, seed: int, test_fraction: float = 0.1, val_fraction: float = 0.1, rounds: int = 5
) -> pd.DataFrame:
    """Rows ``round, patient_id, split`` (``train``/``val``/``test``) for every round.

    Examples
    --------
    >>> s = assign_splits([f"TCGA-AA-{i:04d}" for i in range(1000)], seed=1)
    >>> sorted(s["split"].unique())
    ['test', 'train', 'val']
    """
    val_share = val_fraction / (1.0 - test_fraction)
    rows = []
    for pid in sorted(set(patient_ids)):
        is_test = unit_hash(seed, "test", pid) < test_fraction
        for r in range(rounds):
            if is_test:
                split = "test"
            else:
                split = "val" if unit_hash(seed, f"round{r}", pid) < val_share else "train"
            rows.append((r, pid, split))
    return pd.DataFrame(rows, columns=["round", "patient_id", "split"])


def moved_patients(previous: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """Patients whose split changed between two split tables (should be empty: frozen)."""
    m = previous.merge(current, on=["round", "patient_id"], suffixes=("_before", "_now"))
    return m[m["split_before"] != m["split_now"]]


def leakage(splits: pd.DataFrame) -> pd.DataFrame:
    """Patients in more than one split within a round (should be empty)."""
    n = splits.groupby(["round", "patient_id"])["split"].nunique()
    return n[n > 1].reset_index()


def split_counts(splits: pd.DataFrame, slides: pd.DataFrame, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Patients and slides per round and split (``split_counts`` table rows).

    ``splits``: ``round, patient_id, split``; ``slides``: the usable slides (``patient_id, slide_id``).
    Without ``labels``: every patient (``subset`` 'all', no trait or label).  With ``labels`` (one
    cohort's ``labels`` table): the labelled patients per trait and label (``subset`` 'labeled').
    """
    per_patient = slides.groupby("patient_id")["slide_id"].nunique().rename("n_slides").reset_index()
    sp = splits[["round", "patient_id", "split"]].merge(per_patient, on="patient_id", how="left")
    sp = sp.fillna({"n_slides": 0})
    if labels is None:
        keys, frame = ["round", "split"], sp
    else:
        lab = labels[labels["subset"] == "labeled"][["trait", "patient_id", "label"]]
        keys, frame = ["round", "split", "trait", "label"], sp.merge(lab, on="patient_id")
    out = frame.groupby(keys).agg(n_patients=("patient_id", "nunique"), n_slides=("n_slides", "sum")).reset_index()
    out["subset"] = "all" if labels is None else "labeled"
    for col in ("trait", "label"):
        if col not in out.columns:
            out[col] = None
    return out[["round", "split", "subset", "trait", "label", "n_patients", "n_slides"]]
