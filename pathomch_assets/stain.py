r"""Stain statistics (Macenko et al. 2009) and optional stain normalisation at tiling time (issue 28).

Light through a stained section follows Beer-Lambert: the optical density of a pixel,

.. math::

    OD = -\log_{10}\frac{I + 1}{I_0},

is a non-negative combination of one OD vector per stain, :math:`OD = V C` with :math:`V = [h, e]` (3 x 2,
unit columns) and concentrations :math:`C`.  Macenko's estimate: drop transparent pixels (any OD below
``beta``), take the plane of the two largest eigenvectors of the OD covariance, project the pixels onto
it, and take the directions at the ``alpha`` and ``100 - alpha`` percentiles of their angle as the two
stain vectors; the one with the larger red OD is hematoxylin.  Concentrations come from least squares;
their 50th and 99th percentiles describe how strongly a slide is stained.  (Same steps as torchstain's
numpy backend and the authors' reference code; written here in numpy.)

Normalisation maps a tile's pixels to a *target*:

- ``macenko``: concentrations under the slide's own vectors, scaled so their 99th percentiles match the
  target's, re-rendered with the target's vectors: :math:`I = I_0 \cdot 10^{-V_t C \cdot p99_t / p99_s}`;
- ``reinhard`` (Reinhard et al. 2001): per CIELAB channel, the slide's tissue mean and standard deviation
  moved to the target's.

The slide's own statistics come from a sample of its tissue tiles; a slide whose estimate fails (too few
tissue pixels, degenerate eigenvectors) is reported (``StainError``), never normalised with a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: light entering the slide (white background)
IO = 255.0
#: Macenko's defaults: transparent-pixel OD cut-off and the angle percentile
BETA, ALPHA = 0.15, 1.0
#: fewest tissue pixels (OD above ``BETA`` in every channel) an estimate accepts
MIN_PIXELS = 500

#: default Macenko target: the reference H and E vectors and 99th-percentile concentrations of Macenko's
#: reference code as torchstain ships them (``HERef``, ``maxCRef``), for natural-log OD as computed here
DEFAULT_MACENKO = (0.5626, 0.7201, 0.4062, 0.2159, 0.8012, 0.5581, 1.9705, 1.0308)

#: default Reinhard target: CIELAB mean (L, a, b) and standard deviation of the tissue pixels of the
#: 80 shipped TCGA-BRCA tiles (data/tcga_tiles; ``fit_target("reinhard", that folder)`` reproduces them)
DEFAULT_REINHARD = (59.2, 22.91, -12.07, 17.96, 8.33, 6.02)

METHODS = ("none", "macenko", "reinhard")
STAIN_COLUMNS = ["h_r", "h_g", "h_b", "e_r", "e_g", "e_b", "h_p50", "h_p99", "e_p50", "e_p99"]


class StainError(ValueError):
    """The stain of these pixels cannot be estimated (the message says why)."""


@dataclass(frozen=True)
class StainEstimate:
    """Macenko stain vectors (unit, non-negative) and concentration percentiles of one slide or tile."""

    h: tuple[float, float, float]
    e: tuple[float, float, float]
    h_p50: float
    h_p99: float
    e_p50: float
    e_p99: float
    n_pixels: int

    @property
    def matrix(self) -> np.ndarray:
        """``V``: 3 x 2, hematoxylin then eosin."""
        return np.array([self.h, self.e], float).T

    def row(self) -> dict:
        """The ``stain`` table's statistic columns."""
        return dict(zip(STAIN_COLUMNS, [*self.h, *self.e, self.h_p50, self.h_p99, self.e_p50, self.e_p99]))


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """``-log((I + 1) / Io)`` per channel, ``(N, 3)`` float64 (natural logarithm, as torchstain)."""
    return -np.log((rgb.reshape(-1, rgb.shape[-1])[:, :3].astype(np.float64) + 1.0) / IO)


def macenko(rgb: np.ndarray, alpha: float = ALPHA, beta: float = BETA, min_pixels: int = MIN_PIXELS) -> StainEstimate:
    """Macenko's stain estimate of the pixels ``rgb`` (any shape ending in 3 or 4 channels, uint8).

    Raises
    ------
    StainError
        Fewer than ``min_pixels`` pixels with OD above ``beta`` in every channel, or stain vectors that
        are not two distinct, non-negative directions (one stain only, ink, a blank tile).

    Examples
    --------
    >>> h, e = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
    >>> rng = np.random.default_rng(0)
    >>> c = rng.gamma(2.0, 0.4, (2, 5000))
    >>> od = np.outer(h / np.linalg.norm(h), c[0]) + np.outer(e / np.linalg.norm(e), c[1])
    >>> rgb = np.clip(IO * np.exp(-od.T) - 1, 0, 255).round().astype(np.uint8)
    >>> est = macenko(rgb)
    >>> bool(np.dot(est.h, h / np.linalg.norm(h)) > 0.99)
    True
    """
    od = optical_density(rgb)
    tissue = od[np.all(od > beta, axis=1)]
    if len(tissue) < min_pixels:
        raise StainError(f"too few stained pixels for a stain estimate: {len(tissue)} (at least {min_pixels})")
    _, vecs = np.linalg.eigh(np.cov(tissue.T))
    plane = vecs[:, 1:3]  # the two largest eigenvalues
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # eigh's signs are arbitrary: point into OD > 0
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)  # hematoxylin absorbs more red
    h, e = h / np.linalg.norm(h), e / np.linalg.norm(e)
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(e))) or min(h.min(), e.min()) < -0.05 or h @ e > 0.995:
        raise StainError(f"degenerate stain vectors (H {np.round(h, 3).tolist()}, E {np.round(e, 3).tolist()})")
    h, e = np.clip(h, 0, None), np.clip(e, 0, None)
    h, e = h / np.linalg.norm(h), e / np.linalg.norm(e)
    conc = concentrations(od, np.array([h, e]).T)
    conc = conc[:, np.all(od > beta, axis=1)]
    p50, p99 = np.percentile(conc, [50, 99], axis=1)
    if p99.min() <= 0:
        raise StainError(f"a stain has no positive concentration (99th percentiles {np.round(p99, 3).tolist()})")
    return StainEstimate(
        _vec3(h), _vec3(e), float(p50[0]), float(p99[0]), float(p50[1]), float(p99[1]), int(len(tissue))
    )


def _vec3(v) -> tuple[float, float, float]:
    return float(v[0]), float(v[1]), float(v[2])


def concentrations(od: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations ``(2, N)`` of OD pixels ``(N, 3)`` under ``matrix`` (3 x 2)."""
    return np.linalg.pinv(matrix) @ od.T


def macenko_target(values) -> StainEstimate:
    """A Macenko target from its 8 numbers: H (r, g, b), E (r, g, b), H and E 99th percentiles."""
    v = [float(x) for x in values]
    h, e = np.array(v[0:3]), np.array(v[3:6])
    h, e = h / np.linalg.norm(h), e / np.linalg.norm(e)
    return StainEstimate(_vec3(h), _vec3(e), np.nan, v[6], np.nan, v[7], 0)


# --------------------------------------------------------------------------- CIELAB (Reinhard)
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])  # fmt: skip
_WHITE = np.array([0.95047, 1.0, 1.08883])  # D65


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 ``(..., 3)`` to CIELAB (D65) float64."""
    c = rgb[..., :3].astype(np.float64) / 255.0
    lin = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = lin @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) to sRGB uint8 (clipped)."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE
    lin = xyz @ np.linalg.inv(_RGB_TO_XYZ).T
    lin = np.clip(lin, 0, 1)
    c = np.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)
    return np.clip(np.round(c * 255), 0, 255).astype(np.uint8)


def lab_stats(rgb: np.ndarray, threshold: int = 220, min_pixels: int = MIN_PIXELS) -> tuple[float, ...]:
    """CIELAB mean (L, a, b) and standard deviation of the tissue pixels (some channel <= ``threshold``)."""
    px = rgb.reshape(-1, rgb.shape[-1])[:, :3]
    px = px[px.min(axis=1) <= threshold]
    if len(px) < min_pixels:
        raise StainError(f"too few tissue pixels for colour statistics: {len(px)} (at least {min_pixels})")
    lab = rgb_to_lab(px)
    sd = lab.std(axis=0)
    if sd.min() <= 1e-6:
        raise StainError("tissue pixels of a single colour: no colour spread to normalise")
    return (*(float(v) for v in lab.mean(axis=0)), *(float(v) for v in sd))


# --------------------------------------------------------------------------- normalisers
class MacenkoNormalizer:
    """Re-render pixels stained like ``source`` with the ``target``'s vectors and 99th percentiles."""

    def __init__(self, source: StainEstimate, target: StainEstimate):
        self.unmix = np.linalg.pinv(source.matrix)  # 2 x 3
        scale = np.array([target.h_p99 / source.h_p99, target.e_p99 / source.e_p99])
        self.mix = target.matrix * scale  # 3 x 2: target vectors, concentrations rescaled

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        px = rgb[..., :3]
        od = _OD32[px]  # a table look-up, no logarithm per pixel
        conc = od @ self.unmix.T.astype(np.float32)
        np.maximum(conc, 0, out=conc)
        out = conc @ (-self.mix.T).astype(np.float32)
        np.exp(out, out=out)
        out *= np.float32(IO)
        out -= np.float32(0.5)  # the -1 of the OD, then round half up by truncation
        np.clip(out, 0, 255, out=out)
        return out.astype(np.uint8)


#: optical density of each 8-bit value, float32 (what :func:`optical_density` computes, per channel)
_OD32 = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / IO)).astype(np.float32)


class ReinhardNormalizer:
    """Move each CIELAB channel's tissue mean and standard deviation from ``source`` to ``target`` (6 numbers each)."""

    def __init__(self, source, target):
        s, t = np.asarray(source, float), np.asarray(target, float)
        self.gain = t[3:] / s[3:]
        self.offset = t[:3] - s[:3] * self.gain

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return lab_to_rgb(rgb_to_lab(rgb) * self.gain + self.offset)


# --------------------------------------------------------------------------- targets and slide statistics
def reference_pixels(reference: str | Path, per_image: int = 4) -> np.ndarray:
    """Pixels of a reference image, or of every ``.jpeg/.jpg/.png/.tif(f)`` under a folder (every
    ``per_image``-th pixel in both directions), as ``(N, 3)`` uint8."""
    from PIL import Image

    ref = Path(reference)
    exts = {".jpeg", ".jpg", ".png", ".tif", ".tiff"}
    files = sorted(p for p in ref.rglob("*") if p.suffix.lower() in exts) if ref.is_dir() else [ref]
    if not files:
        raise FileNotFoundError(f"stain.reference {ref}: no image files (.jpeg, .jpg, .png, .tif) found")
    out = []
    for f in files:
        try:
            img = np.asarray(Image.open(f).convert("RGB"))
        except OSError as err:
            raise ValueError(f"stain.reference {f}: cannot read the image: {err}") from None
        out.append(img[::per_image, ::per_image].reshape(-1, 3))
    return np.concatenate(out)


def fit_target(method: str, reference: str | Path | None = None) -> tuple[float, ...]:
    """The target numbers of ``method`` fitted on ``reference`` (a folder of tiles or one image), or the
    documented default (``DEFAULT_MACENKO``, ``DEFAULT_REINHARD``) without one; ``()`` for ``none``."""
    if method == "none":
        return ()
    if method not in METHODS:
        raise ValueError(f"stain.normalize: expected one of {METHODS}, got {method!r}")
    if reference is None:
        return DEFAULT_MACENKO if method == "macenko" else DEFAULT_REINHARD
    px = reference_pixels(reference)
    try:
        if method == "macenko":
            est = macenko(px)
            return tuple(round(v, 4) for v in (*est.h, *est.e, est.h_p99, est.e_p99))
        return tuple(round(v, 2) for v in lab_stats(px))
    except StainError as err:
        raise ValueError(f"stain.reference {reference}: no {method} target can be fitted: {err}") from None


def normalizer(method: str, target, sample: np.ndarray, threshold: int = 220):
    """The normaliser of one slide from a pixel ``sample`` of its tissue tiles (raises ``StainError``)."""
    if method == "macenko":
        return MacenkoNormalizer(macenko(sample), macenko_target(target))
    if method == "reinhard":
        return ReinhardNormalizer(lab_stats(sample, threshold), target)
    raise ValueError(f"stain.normalize: expected macenko or reinhard, got {method!r}")


def slide_stain_row(sample: np.ndarray, n_tiles: int, method: str = "none", target=()) -> dict:
    """The ``stain`` table's row of one slide (less cohort and slide id) from a pixel ``sample`` of
    ``n_tiles`` of its tissue tiles: ``status`` ok with the Macenko statistics, or failed with the error."""
    row: dict = {"n_tiles_sampled": int(n_tiles), "normalize": method, "target": ",".join(f"{v:g}" for v in target)}
    try:
        est = macenko(sample)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as err:  # StainError, or numerics: never the slide's
        return {**row, "status": "failed", "error": str(err), "n_pixels": 0}
    return {**row, "status": "ok", "error": None, "n_pixels": est.n_pixels, **est.row()}
