r"""Heterogeneity Index (HTI) of a tensor molecular cartography (SPEC 3.9).

For a set of :math:`N` traits there are :math:`C = 2^N - 1` combinations of positive traits.
Over the tissue tiles positive for at least one trait, let :math:`p_i` be the share of tiles
positive for exactly combination :math:`i`.  Then

.. math::  \mathrm{HTI} = -\sum_{i=1}^{C} p_i \log_C p_i, \qquad 0 \log 0 = 0,

which lies in [0, 1].  HTI is 0 when no tile is positive, and defined as 0 for :math:`N = 1`
(:math:`C = 1`).
"""

from __future__ import annotations

import functools

import numpy as np


def combination_codes(calls: np.ndarray) -> np.ndarray:
    """Integer code of each tile's combination: bit *k* set when trait *k* is positive."""
    calls = np.asarray(calls, bool)
    if calls.ndim != 2:
        raise ValueError(f"calls must be 2-D (tiles x traits), got shape {calls.shape}")
    return (calls.astype(np.int64) << np.arange(calls.shape[1], dtype=np.int64)).sum(axis=1)


def combination_counts(calls: np.ndarray) -> np.ndarray:
    """Tiles of each combination code 0..2^N-1 (index 0: the tiles negative for every trait)."""
    calls = np.asarray(calls, bool)
    return np.bincount(combination_codes(calls), minlength=2 ** calls.shape[-1])


def normalised_entropy(counts: np.ndarray, base: int) -> np.ndarray:
    r"""Entropy of the shares of ``counts`` along the last axis, log base ``base``.

    :math:`-\sum_i p_i \log_{base} p_i` with :math:`p_i` = ``counts`` over their sum and :math:`0 \log 0 = 0`;
    0 where the counts sum to 0 or ``base`` <= 1.  Every HTI and index of this module is this entropy of
    combination counts, in the base of the combinations possible (the paper's) or present (``hta``'s).
    """
    counts = np.asarray(counts, float)
    total = counts.sum(axis=-1, keepdims=True)
    if base <= 1:
        return np.zeros(total.shape[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, counts / total, 0.0)
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1) / np.log(base)


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
    >>> round(hti_from_calls([[1, 0], [0, 1], [1, 1]]), 12)   # a third each in A, B, Both: maximal
    1.0
    >>> hti_from_calls([[1, 1], [1, 1], [0, 0]]) == 0   # every positive tile in one combination
    True
    """
    calls = np.asarray(calls, bool)
    if calls.ndim != 2:
        raise ValueError(f"calls must be 2-D (tiles x traits), got shape {calls.shape}")
    n_traits = calls.shape[1]
    if n_traits < 1:
        raise ValueError("calls needs at least one trait column")
    counts = combination_counts(calls)[1:]
    value = float(normalised_entropy(counts[counts > 0], 2**n_traits - 1))  # the combinations present: 0 log 0 = 0
    return min(max(value, 0.0), 1.0) + 0.0  # never -0.0


def hti_from_tensor(tensor: np.ndarray, mask: np.ndarray | None = None) -> float:
    """HTI of a cartography tensor ``(traits, rows, cols)``; ``mask`` marks tissue tiles."""
    tensor = np.asarray(tensor, bool)
    if mask is None:
        mask = np.ones(tensor.shape[1:], bool)
    return hti_from_calls(tensor[:, np.asarray(mask, bool)].T)


# --------------------------------------------------------------------------- beyond the paper (issue 19)
#: bootstrap resamples for the HTI confidence interval, permutations for the spatial p-value
BOOTSTRAP = 200
PERMUTATIONS = 199
#: robust HTI: how far an unsure tile's soft call moves towards its neighbourhood's (0 none, 1 all the way);
#: 0.5 lowered the HTI error on both study cohorts (docs/hti-evidence.md), 1 erodes regions only a few tiles wide
NEIGHBOUR_WEIGHT = 0.5


def combination_shares(calls: np.ndarray) -> np.ndarray:
    """Share of each combination code 1..2^N-1 among the positive tiles (the :math:`p_i` of the HTI).

    Sums to 1 when any tile is positive, all zeros otherwise.
    """
    counts = combination_counts(calls)[1:].astype(float)
    total = counts.sum()
    return counts / total if total else counts


def hti_present(calls: np.ndarray) -> float:
    r"""HTI normalised as the authors' ``hta`` package does: by the :math:`K` combinations present.

    :math:`-\sum_i p_i \log_K p_i`, i.e. :math:`\mathrm{HTI} \cdot \log C / \log K \ge \mathrm{HTI}`; 0 when
    :math:`K \le 1`.  Two traits, one tile "A only" and one "B only": the paper's HTI is
    :math:`\log 2 / \log 3 = 0.631`, ``hta``'s is 1.  The paper's HTI (``hti_from_calls``) stays the
    reported one: it compares across slides on one scale, ``hta``'s does not (a slide with 2 of 3
    combinations evenly mixed scores as high as one with all 3).
    """
    counts = combination_counts(calls)[1:]
    present = counts[counts > 0]
    return min(max(float(normalised_entropy(present, present.size)), 0.0), 1.0)


def _grid_codes(tensor: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Combination code per grid cell, -1 outside the tissue mask."""
    tensor, mask = np.asarray(tensor, bool), np.asarray(mask, bool)
    codes = np.full(mask.shape, -1, np.int64)
    if mask.any():
        codes[mask] = combination_codes(tensor[:, mask].T)
    return codes


def region_side(n_tissue: int) -> int:
    """Side (tiles) of the square regions of the spatial statistics: about 16 regions over the tissue, at least 2."""
    return max(2, int(round(np.sqrt(max(n_tissue, 1)) / 4)))


def _region_ids(mask: np.ndarray, side: int) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    n_cols = -(-mask.shape[1] // side)
    return (rows // side) * n_cols + cols // side


def _regional_hti(codes: np.ndarray, regions: np.ndarray, n_present: int) -> np.ndarray:
    """``hta``'s index for each row of ``codes`` (repeats x tissue tiles): the mean of the regions' HTIs
    (log base ``n_present``) weighted by their positive tiles."""
    codes = np.atleast_2d(codes)
    n_rep, _ = codes.shape
    if n_present <= 1:
        return np.zeros(n_rep)
    n_reg, n_code = int(regions.max()) + 1, int(codes.max()) + 1
    key = (np.arange(n_rep)[:, None] * n_reg + regions[None, :]) * n_code + codes
    counts = np.bincount(key.ravel(), minlength=n_rep * n_reg * n_code).reshape(n_rep, n_reg, n_code)[:, :, 1:]
    pos = counts.sum(axis=2)
    ent = normalised_entropy(counts, n_present)
    total = pos.sum(axis=1)
    return np.where(total > 0, (ent * pos).sum(axis=1) / np.maximum(total, 1), 0.0)


def spatial_test(
    tensor: np.ndarray, mask: np.ndarray, permutations: int = PERMUTATIONS, side: int | None = None, seed: int = 0
) -> dict:
    r"""Spatial heterogeneity against random placement of the same calls (after ``hta``, Levy-Jurgenson et al.).

    The statistic is ``hta``'s index: the tissue is cut into ``side`` x ``side`` regions, each region's HTI
    is taken over its positive tiles (log base :math:`K`, the combinations present on the slide, as ``hta``
    does) and averaged weighted by positive tiles.  The null distribution permutes the slide's combination
    codes over its tissue tiles ``permutations`` times (the same calls, placed at random).  Distinct regions
    give an index below the null (clustered); an alternation finer than the regions (a checkerboard) gives
    one above (dispersed); both depart from random placement, so the p-value is two-sided with mid-p ties:
    :math:`p = 2 \min(p_\mathrm{lo}, p_\mathrm{hi})`, :math:`p_\mathrm{hi} = (G + (E + 1)/2) / (n + 1)`
    (:math:`G`, :math:`E`: permutations above, equal to the observed).  Under random placement p is
    uniform; with one combination every permutation ties and p = 1.

    Returns ``hta`` (observed index), ``hta_random`` (mean under permutation), ``p_spatial``, ``region_side``.
    """
    codes = _grid_codes(tensor, mask)
    flat = codes[np.asarray(mask, bool)]
    side = side or region_side(flat.size)
    present = int(np.unique(flat[flat > 0]).size)
    if flat.size == 0 or present <= 1:
        return {"hta": 0.0, "hta_random": 0.0, "p_spatial": 1.0, "region_side": side}
    regions = _region_ids(np.asarray(mask, bool), side)
    observed = float(_regional_hti(flat, regions, present)[0])
    rng = np.random.default_rng(seed)
    perm = rng.permuted(np.broadcast_to(flat, (permutations, flat.size)), axis=1)
    null = _regional_hti(perm, regions, present)
    tol = 1e-12
    greater, equal = int((null > observed + tol).sum()), int((np.abs(null - observed) <= tol).sum())
    hi = (greater + (equal + 1) / 2) / (permutations + 1)
    p = min(1.0, 2 * min(hi, 1 - hi))
    return {"hta": observed, "hta_random": float(null.mean()), "p_spatial": float(p), "region_side": side}


def bootstrap_ci(
    tensor: np.ndarray,
    mask: np.ndarray,
    n_boot: int = BOOTSTRAP,
    side: int | None = None,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of the paper's HTI by a spatial block bootstrap.

    Neighbouring tiles are not independent (regions of a trait span many tiles), so resampling single
    tiles would make the interval too narrow; instead the tissue is cut into ``side`` x ``side`` blocks
    (the regions of :func:`spatial_test`) and blocks are drawn with replacement, their tiles pooled and
    the HTI recomputed, ``n_boot`` times (``side=1``: the plain tile bootstrap).  The percentile interval
    is widened to contain the slide's HTI where the entropy's skew puts it outside (an HTI near 0 or 1).
    One combination everywhere gives [0, 0].
    """
    tensor, mask = np.asarray(tensor, bool), np.asarray(mask, bool)
    calls = tensor[:, mask].T
    if calls.shape[0] == 0:
        return 0.0, 0.0
    side = side or region_side(calls.shape[0])
    _, blocks = np.unique(_region_ids(mask, side), return_inverse=True)
    n_blocks, n_comb = int(blocks.max()) + 1, 2 ** calls.shape[1] - 1
    per_block = np.zeros((n_blocks, n_comb + 1))
    np.add.at(per_block, (blocks, combination_codes(calls)), 1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(n_blocks, size=(n_boot, n_blocks))
    times = np.zeros((n_boot, n_blocks))
    np.add.at(times, (np.arange(n_boot)[:, None], picks), 1)
    values = normalised_entropy((times @ per_block)[:, 1:], n_comb)  # the HTI of each resample
    a = (1 - level) / 2
    h = hti_from_calls(calls)
    return min(float(np.quantile(values, a)), h), max(float(np.quantile(values, 1 - a)), h)


#: widths (Gaussian sigma, in tiles) the robust HTI's smoothing chooses from, per slide and trait; at the first
#: each of a tile's 4 nearest neighbours weighs 0.044 of the tile itself (together 15% of the weight)
KERNEL_SIGMAS = (0.4, 0.6, 0.8, 1.0, 1.4, 2.0)
#: the largest share of a slide's tissue tiles one kernel may span (:math:`2\pi\sigma^2` tiles)
KERNEL_SHARE = 0.05
#: a soft call within this of the threshold counts as at it: averaging a constant map (a voting share of 3/5
#: against 0.6) must not flip calls by rounding
TIE = 1e-9


@functools.cache
def _centre_weight(sigma: float) -> float:
    """The weight of a tile itself in ``gaussian_filter``'s 2-D kernel of ``sigma`` (for the leave-one-out)."""
    from scipy.ndimage import gaussian_filter

    return float(gaussian_filter(np.pad([[1.0]], 8), sigma, mode="constant")[8, 8])


def kernel_smoothed(soft: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Soft calls averaged over the tile grid, the width chosen per trait by leave-one-out cross-validation.

    For each trait, the Gaussian kernel mean over the tissue tiles (Nadaraya-Watson) with :math:`\sigma` from
    ``KERNEL_SIGMAS``: the one whose prediction of each tile from the *other* tiles,
    :math:`\hat s_{-j} = \sum_{i \ne j} K_\sigma(i, j)\, s_i / \sum_{i \ne j} K_\sigma(i, j)`, has the least
    squared error :math:`\sum_j (s_j - \hat s_{-j})^2`; kernels spanning more than ``KERNEL_SHARE`` of the
    tissue tiles are not tried.  Where a map has spatial structure wider than a tile (regions) and errors
    scattered over it, that width removes most of the errors and keeps the regions; on a slide of fewer than
    46 tissue tiles the cap leaves only the narrowest, a light smoothing.  (A map of pure noise gets the
    widest allowed: its best prediction is the mean.)  A tile whose soft call is exactly 0 or 1 (a hard call)
    is certain and keeps it; non-finite values are not tissue here and are kept as they are.

    Returns the smoothed soft calls (same shape) and the chosen :math:`\sigma` per trait.
    """
    from scipy.ndimage import gaussian_filter

    soft = np.asarray(soft, float)
    out, chosen = soft.copy(), np.full(soft.shape[0], KERNEL_SIGMAS[0])
    for k in range(soft.shape[0]):
        tissue = np.asarray(mask, bool) & np.isfinite(soft[k])
        n = int(tissue.sum())
        if n < 2:
            continue
        s, m = np.where(tissue, soft[k], 0.0), tissue.astype(float)
        tried = []  # (leave-one-out error, sigma, smoothed map), narrowest first
        for sigma in KERNEL_SIGMAS:
            if sigma > KERNEL_SIGMAS[0] and 2 * np.pi * sigma**2 > KERNEL_SHARE * n:
                break
            centre = _centre_weight(sigma)
            num, den = gaussian_filter(s, sigma, mode="constant"), gaussian_filter(m, sigma, mode="constant")
            with np.errstate(divide="ignore", invalid="ignore"):
                loo = (num - centre * s) / (den - centre * m)
            err = float(np.nansum(((s - loo) ** 2)[tissue & (den - centre * m > 1e-9)]))
            tried.append((err, sigma, num / np.where(tissue, den, 1.0)))
        _, chosen[k], smooth = min(tried, key=lambda t: t[0])  # the first of equal errors: the narrowest
        certain = (soft[k] == 0) | (soft[k] == 1)
        out[k] = np.where(tissue & ~certain, smooth, soft[k])
    return out, chosen


def robust_calls(
    soft: np.ndarray, mask: np.ndarray, threshold=0.5, weight: float = NEIGHBOUR_WEIGHT, smooth: bool = True
) -> np.ndarray:
    r"""Tile calls corrected by their neighbours where the ensemble is unsure.

    ``soft[k, row, col]`` is the ensemble's soft call of trait *k* (the members' mean probability, or the
    share of members voting positive) and ``threshold`` (one per trait, or one for all) the level that
    makes it a call.  Two steps:

    1. (``smooth``) :func:`kernel_smoothed`: :math:`s` averaged over the grid with a width chosen by leave-one-out
       cross-validation (only the narrowest, a light smoothing, on slides under 46 tissue tiles);
    2. a confidence-weighted 3 x 3 vote: :math:`m` the mean of :math:`s` over the tissue tiles of a tile's
       3 x 3 neighbourhood (itself included), :math:`c` the confidence, 0 at the threshold :math:`\tau` and 1
       at 0 or 1 (:math:`c = (s - \tau)/(1 - \tau)` above it, :math:`(\tau - s)/\tau` below), :math:`w` the
       ``weight`` of the neighbourhood:

       .. math::  \tilde s = (1 - w(1 - c))\,s + w(1 - c)\,m, \qquad \text{call} = [\tilde s \ge \tau].

    A certain tile (:math:`s \in \{0, 1\}`, so any noise-free hard call) keeps its call through both; an
    unsure one is decided by the tiles around it.  Morphology regions span several tiles while the errors
    of a model that barely sees a trait are scattered, and every scattered error adds a spurious
    combination to the HTI's entropy; this removes them without touching confident calls.

    Chosen by measurement against the planted HTI on held-out slides (docs/hti-evidence.md).  On
    the demo's small slides (15-25 tissue tiles) step 2 does the work and step 1 mostly keeps the tiles as
    they are; on slides with more tiles (``grid_scale``), step 1 removes most errors.  A correction of the
    combination shares by the ensemble's joint :math:`2^N \times 2^N` confusion matrix from validation
    slides (:math:`q = M p`, :math:`p` by EM on the simplex) removed the mean bias but not the spread (a
    model's error rate differs from slide to slide with the stain); a per-slide two-component mixture of the
    logits did no better.  Where a trait is lost at the model's input size (a nuclear texture at 32 px) on a
    small slide, no re-deciding of tiles recovers it: even the per-slide threshold that makes the most calls
    right by the planted truth leaves most of the error.
    """
    from scipy.ndimage import uniform_filter

    soft = kernel_smoothed(soft, mask)[0] if smooth else np.asarray(soft, float)
    mask = np.asarray(mask, bool)
    taus = np.broadcast_to(np.asarray(threshold, float), (soft.shape[0],))
    out = np.zeros(soft.shape, bool)
    n = uniform_filter(mask.astype(float), size=3, mode="constant")
    for k in range(soft.shape[0]):
        s, tau = np.where(mask, soft[k], 0.0), taus[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            m = np.where(n > 0, uniform_filter(s, size=3, mode="constant") / n, 0.0)
        c = np.clip(np.where(s >= tau, (s - tau) / (1 - tau), (tau - s) / tau), 0.0, 1.0)
        move = weight * (1 - c)
        out[k] = mask & ((1 - move) * s + move * m >= tau - TIE)
    return out


def hti_robust(soft: np.ndarray, mask: np.ndarray, threshold=0.5) -> float:
    """The paper's HTI of :func:`robust_calls`; equals ``hti_from_tensor`` on noise-free (0/1) calls."""
    return hti_from_tensor(robust_calls(soft, mask, threshold), mask)


def hti_stats(
    tensor: np.ndarray,
    mask: np.ndarray,
    soft: np.ndarray | None = None,
    threshold=0.5,
    n_boot: int = BOOTSTRAP,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
    robust: np.ndarray | None = None,
) -> dict:
    """Every per-slide HTI figure of one trait set: the paper's HTI, its CI, ``hta``'s index and spatial
    p-value, the HTI normalised by combinations present, and the robust HTI (from ``soft`` calls and their
    ``threshold`` when given, else from the hard calls: then equal to the HTI).

    ``robust``: the :func:`robust_calls` of ``soft`` and ``threshold`` where the caller has them already
    (they are not computed again).
    """
    tensor, mask = np.asarray(tensor, bool), np.asarray(mask, bool)
    if robust is None:
        robust = robust_calls(tensor.astype(float) if soft is None else soft, mask, threshold)
    calls = tensor[:, mask].T
    lo, hi = bootstrap_ci(tensor, mask, n_boot, seed=seed)
    sp = spatial_test(tensor, mask, permutations, seed=seed)
    return {
        "hti": hti_from_calls(calls),
        "ci_low": lo,
        "ci_high": hi,
        "hti_present": hti_present(calls),
        "hta": sp["hta"],
        "hta_random": sp["hta_random"],
        "p_spatial": sp["p_spatial"],
        "region_side": sp["region_side"],
        "hti_robust": hti_from_tensor(robust, mask),
        "n_combinations": int((combination_shares(calls) > 0).sum()),
    }
