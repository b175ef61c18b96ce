r"""Artifact QC per tile (issue 28): pen ink, blur and dark (folded) tissue, measured at tiling time.

Each tissue tile gets three measures, computed on its pixels before JPEG encoding:

``pen``
    Share of the tile's pixels whose colour H&E does not produce (sampled every ``stride``-th pixel in
    both directions).  A pixel is ink when it is

    - *green or blue* (marker ink): saturation (HSV) at least ``ink_saturation``, not white (some channel
      at or below 220), and hue in [60, 230] degrees.  Hematoxylin and eosin absorb green at least as much
      as red, so H&E pixels have green at or below red: their hues lie in about [240, 360] and [0, 30]
      (measured on the shipped TCGA tiles: 0.008% of tissue pixels with saturation above 0.3 fall in
      [60, 230]).  Blue ink lets green through and stops red, which moves its hue below 240; a *deep blue*
      pixel (hue 180-250, saturation at least 0.6: blue ink over purple tissue) is ink too (0.016% of
      the shipped tissue pixels are; 0.021% are ink by any rule);
    - *black*: every channel at or below ``black_level`` (the darkest nuclei keep some red or blue), or at
      most twice that with saturation at most 0.2 (black ink over glass);
    - *dark red* (red marker): hue within 15 degrees below and 20 above pure red, saturation at least 0.75
      and value at most 0.6 (erythrocytes are as red but brighter).

``blur``
    Variance of the 4-neighbour Laplacian of the green channel at the tile's own scale, over tissue
    pixels, on 16 rows spread over the tile (full-resolution rows: the measure is the tile's, not a
    downsampled view's).
    Low is blurred: sharp tissue at 20x is in the hundreds to thousands, a Gaussian blur of 1.5 px brings
    it below about 110.  ``blurred`` = ``blur < min_blur``.  Tiles under 32 px are not measured (NaN).

``dark``
    Share of the tile's pixels (every ``stride``-th) whose mean grey level is at or below ``dark_level``:
    folded tissue is two layers thick, so its optical density doubles and much of the tile turns dark.

A tile is dropped (``qc`` says why: ``pen``, ``blur``, ``dark``, joined by ``+``) when ``pen >= max_pen``,
``blur < min_blur`` or ``dark >= max_dark``; kept tiles have ``qc`` null.  Pen and dark
shares are one look-up per sampled pixel in a 32 KB colour table; all of it takes about 0.1 ms per 512 px
tile, 5% of the tiling CPU time (docs/qc-and-stain.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np

from .config import QcConfig, default

#: smallest tile whose blur is measured (the Laplacian of a few rows of a tiny tile says nothing)
MIN_BLUR_PX = 32


@dataclass(frozen=True)
class QcParams:
    """Thresholds of :func:`tile_qc` (``qc.*`` in the configuration, whose defaults these are; see
    :mod:`pathomch_assets.qc`)."""

    max_pen: float = default(QcConfig, "max_pen")
    min_blur: float = default(QcConfig, "min_blur")
    max_dark: float = default(QcConfig, "max_dark")
    dark_level: int = default(QcConfig, "dark_level")
    black_level: int = default(QcConfig, "black_level")
    ink_saturation: float = default(QcConfig, "ink_saturation")
    stride: int = default(QcConfig, "stride")

    @classmethod
    def from_config(cls, qc) -> QcParams | None:
        """From ``cfg.qc`` (:class:`~pathomch_assets.config.QcConfig`), field by name; None when QC is off."""
        if not qc.enabled:
            return None
        return cls(**{f.name: getattr(qc, f.name) for f in fields(cls)})


def ink_mask(rgb: np.ndarray, params: QcParams = QcParams()) -> np.ndarray:
    """Pixels of ``rgb`` (``(..., 3)`` or ``(..., 4)`` uint8) that are pen ink: green/blue, black, dark red.

    Integer arithmetic: the hue limits are inequalities between channel differences and the chroma
    ``c = max - min`` (for a blue-dominant pixel, hue <= 230 degrees is ``6 (G - R) >= c``).
    """
    p = rgb[..., :3].astype(np.int32)
    r, g, b = p[..., 0], p[..., 1], p[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    c = mx - mn
    saturated = c * 1000 >= mx * round(params.ink_saturation * 1000)
    green = (g >= r) & (g >= b) & (c > 0)  # hue 60-180
    blue = (b > r) & (b > g) & (6 * (g - r) >= c)  # hue 180-230
    deep_blue = (b > r) & (b > g) & (6 * (r - g) <= c) & (5 * c >= 3 * mx)  # hue 180-250, saturation >= 0.6
    coloured = ((green | blue) & saturated | deep_blue) & (mn <= 220)
    black = (mx <= params.black_level) | ((mx <= 2 * params.black_level) & (5 * c <= mx))  # grey-black on glass
    red = (r >= g) & (r >= b) & (3 * (g - b) <= c) & (4 * (b - g) <= c) & (4 * c >= 3 * mx) & (mx <= 153)
    return coloured | black | red


#: colour look-up: 5 bits per channel (index ``r5 | g5 << 5 | b5 << 10``), each bin judged at its centre; 32 KB,
#: so it stays in cache between the JPEG decodes and encodes around it (with a 6-bit table, 256 KB, QC took 9.6% of
#: the tiling CPU time on the bench slide instead of 5.2%: bench/qc_overhead.py)
_BITS = 5


@lru_cache(maxsize=8)
def colour_table(params: QcParams) -> np.ndarray:
    """Per quantised colour: bit 0 = ink (:func:`ink_mask`), bit 1 = dark (mean grey <= ``dark_level``)."""
    levels = (np.arange(1 << _BITS) << (8 - _BITS)) + (1 << (7 - _BITS))  # bin centres
    b, g, r = np.meshgrid(levels, levels, levels, indexing="ij")  # index b5 << 10 | g5 << 5 | r5
    rgb = np.stack([r, g, b], -1).reshape(-1, 3).astype(np.uint8)
    dark = rgb.astype(np.int32).sum(-1) <= 3 * params.dark_level
    return (ink_mask(rgb, params).astype(np.uint8) | (dark.astype(np.uint8) << 1)).reshape(-1)


def colour_index(rgb: np.ndarray) -> np.ndarray:
    """Each pixel's index into :func:`colour_table` (RGBX pixels read as one 32-bit word each)."""
    if rgb.shape[-1] == 4 and rgb.dtype == np.uint8 and rgb.strides[-1] == 1 and np.little_endian:
        w = rgb.view(np.uint32)[..., 0]  # R | G << 8 | B << 16 | X << 24
        return ((w >> 3) & 0x1F) | ((w >> 6) & 0x3E0) | ((w >> 9) & 0x7C00)
    p = rgb[..., :3].astype(np.uint32) >> (8 - _BITS)
    return p[..., 0] | (p[..., 1] << _BITS) | (p[..., 2] << (2 * _BITS))


def laplacian_variance(rgb: np.ndarray, threshold: int = 220, rows: int = 16) -> float:
    """Variance of the green channel's 4-neighbour Laplacian over the tissue pixels (green at or below
    ``threshold``) of ``rows`` full-resolution rows spread over the tile (every ``height / rows``-th).

    NaN when the tile is smaller than ``MIN_BLUR_PX`` or fewer than 64 sampled pixels are tissue.
    """
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_BLUR_PX:
        return float("nan")
    step = max(2, h // rows)
    g = rgb[..., 1]
    up = np.asarray(g[0 : h - 2 : step], np.int16)  # contiguous copies: the arithmetic runs on packed rows
    mid = np.asarray(g[1 : h - 1 : step], np.int16)
    lap = up[:, 1:-1] + np.asarray(g[2:h:step, 1:-1], np.int16)
    lap += mid[:, :-2]
    lap += mid[:, 2:]
    lap -= 4 * mid[:, 1:-1]
    values = lap[mid[:, 1:-1] <= threshold]
    if values.size < 64:
        return float("nan")
    return float(values.var(dtype=np.float64))


def tile_qc(rgb: np.ndarray, params: QcParams, threshold: int = 220) -> tuple[float, float, bool, float, str | None]:
    """``(pen, blur, blurred, dark, qc)`` of one tile (``H x W x 3``, or RGBX ``H x W x 4``, uint8).

    ``threshold``: the tiling's background threshold (blur is measured on tissue only).  ``qc`` is None
    when the tile is kept, else why it is dropped (``pen``, ``blur``, ``dark`` joined by ``+``).

    Examples
    --------
    >>> white = np.full((64, 64, 3), 255, np.uint8)
    >>> tile_qc(white, QcParams())[0]  # no ink on white
    0.0
    >>> ink = white.copy()
    >>> ink[:, :8] = (40, 140, 90)  # a green stroke over an eighth of the tile
    >>> tile_qc(ink, QcParams())[4]
    'pen'
    """
    s = params.stride
    view = rgb[::s, ::s]
    flags = colour_table(params)[colour_index(view)]
    n = flags.size
    pen = float(np.count_nonzero(flags & 1) / n)
    dark = float(np.count_nonzero(flags & 2) / n)
    blur = laplacian_variance(rgb, threshold)
    blurred = bool(blur < params.min_blur)  # NaN (not measured) is not blurred
    failed = (("pen", pen >= params.max_pen), ("blur", blurred), ("dark", dark >= params.max_dark))
    return pen, blur, blurred, dark, "+".join(name for name, bad in failed if bad) or None


def kept_tiles(tiles):
    """The rows of a ``tiles`` frame whose tiles are in the slide's TFRecord (``idx`` not null), by ``idx``.

    Tiles dropped by QC keep their rows (with ``pen``, ``blur``, ``dark`` and the ``qc`` reason, for maps) but
    have no ``idx``: every reader of tile positions (training, scoring, maps, HTI) goes through this.
    """
    kept = tiles[tiles["idx"].notna()]
    return kept.astype({"idx": "int64"}).sort_values(["slide_id", "idx"] if "slide_id" in kept else "idx")


def dropped_tiles(tiles):
    """The rows of a ``tiles`` frame that QC dropped (``qc`` not null, no ``idx``)."""
    if "qc" not in tiles:
        return tiles.iloc[0:0]
    return tiles[tiles["qc"].notna() & tiles["idx"].isna()]
