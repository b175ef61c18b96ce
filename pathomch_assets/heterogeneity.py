r"""Heterogeneity Index (HTI) of a tensor molecular cartography (SPEC 3.9).

For a set of :math:`N` traits there are :math:`C = 2^N - 1` combinations of positive traits.
Over the tissue tiles positive for at least one trait, let :math:`p_i` be the share of tiles
positive for exactly combination :math:`i`.  Then

.. math::  \mathrm{HTI} = -\sum_{i=1}^{C} p_i \log_C p_i, \qquad 0 \log 0 = 0,

which lies in [0, 1].  HTI is 0 when no tile is positive, and defined as 0 for :math:`N = 1`
(:math:`C = 1`).
"""

from __future__ import annotations

import numpy as np


def combination_codes(calls: np.ndarray) -> np.ndarray:
    """Integer code of each tile's combination: bit *k* set when trait *k* is positive."""
    calls = np.asarray(calls, bool)
    if calls.ndim != 2:
        raise ValueError(f"calls must be 2-D (tiles x traits), got shape {calls.shape}")
    return (calls.astype(np.int64) << np.arange(calls.shape[1], dtype=np.int64)).sum(axis=1)


def hti_from_calls(calls: np.ndarray) -> float:
    r"""HTI of binary tile calls.

    Parameters
    ----------
    calls : array_like of bool, shape (n_tiles, n_traits)
        Tissue tiles only; ``calls[j, k]`` is True when tile *j* is positive for trait *k*.

    Returns
    -------
    float
        :math:`-\sum_i p_i \log_C p_i` over the positive tiles, in [0, 1].

    Examples
    --------
    >>> hti_from_calls([[1, 0], [0, 1], [1, 1]])   # a third each in A, B, Both
    1.0
    >>> hti_from_calls([[1, 1], [1, 1], [0, 0]])   # every positive tile in one combination
    0.0
    """
    calls = np.asarray(calls, bool)
    if calls.ndim != 2:
        raise ValueError(f"calls must be 2-D (tiles x traits), got shape {calls.shape}")
    n_traits = calls.shape[1]
    if n_traits < 1:
        raise ValueError("calls needs at least one trait column")
    n_comb = 2**n_traits - 1
    codes = combination_codes(calls)
    codes = codes[codes > 0]
    if n_comb == 1 or codes.size == 0:
        return 0.0
    counts = np.bincount(codes, minlength=n_comb + 1)[1:]
    p = counts[counts > 0] / codes.size
    value = float(-(p * np.log(p)).sum() / np.log(n_comb))
    return min(max(value, 0.0), 1.0)


def hti_from_tensor(tensor: np.ndarray, mask: np.ndarray | None = None) -> float:
    """HTI of a cartography tensor ``(traits, rows, cols)``; ``mask`` marks tissue tiles."""
    tensor = np.asarray(tensor, bool)
    if mask is None:
        mask = np.ones(tensor.shape[1:], bool)
    return hti_from_calls(tensor[:, np.asarray(mask, bool)].T)
