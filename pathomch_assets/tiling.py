"""Tiling (SPEC 3.3): non-overlapping tiles at the target magnification, background dropped.

A slide is read from the pyramid level closest to (not below) the target magnification, a
row band of tiles at a time (one grid cell at a time on the DCT-scaled path), so no whole level is
ever held in memory.  Where that level is 2, 4 or 8 times the target (TCGA's 40x slides have no 20x
level) its JPEG tiles are decoded at that scale in the DCT domain (``tiling.scaled_decode``).  Tiles
are JPEG-encoded into one TFRecord file per slide (fast ``tf.data`` input), written without TensorFlow
(:mod:`pathomch_assets.tilestore`): a tiling worker never loads it.  A slide that fails is reported in
the result, never raised past :func:`tile_slide`, so one bad slide never stops the others.  Worker
processes exit with their parent (a ``kill -9`` of the pipeline leaves no tiler running).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .config import StainConfig, TilingConfig, default
from .qc import QcParams, tile_qc
from .slides import (
    LevelChoice,
    SlideError,
    check_grid,
    check_manifest_entry,
    choose_level,
    open_slide,
    slide_info,
)
from .tables import SCHEMAS

#: tiles whose pixels are sampled for a slide's stain statistics (at most; spread over the grid)
STAIN_SAMPLE_TILES = 256

#: tiles read per band along a row where cells are read whole (OpenSlide or the full decode; bounds memory:
#: 16 x 512 px x 512 px x 4 B = 16 MB); the DCT-scaled path holds one cell per thread instead
BAND_TILES = 16


#: tiling settings that change how fast tiles are made or how they are checked, never which tiles or their pixels
#: (``threads`` is ``TilingParams``' name for ``threads_per_slide``; ``reader: auto`` decodes the same pixels)
NOT_RESULTS = frozenset({"workers", "threads", "threads_per_slide", "reader", "min_tiles_per_slide"})


def result_settings(settings: dict) -> dict:
    """The tiling settings that change results: ``settings`` (``TilingParams`` or ``tiling`` config fields) less
    :data:`NOT_RESULTS`.

    The one rule behind both ``TilingParams.digest`` (tiles made with other such settings are not reused) and the
    assets' code versions (``versions.tiling_version``): raising ``tiling.workers`` on a bigger machine re-tiles
    nothing and stales nothing.  ``scaled_decode: false`` (the exact path) is left out, so tiles made before the
    scaled decode existed keep their digest.

    Examples
    --------
    >>> result_settings({"tile_px": 512, "workers": 8, "threads_per_slide": 4, "scaled_decode": False})
    {'tile_px': 512}
    """
    out = {k: v for k, v in settings.items() if k not in NOT_RESULTS}
    if out.get("scaled_decode") is False:
        del out["scaled_decode"]
    return out


@dataclass(frozen=True)
class TilingParams:
    """The tiling settings of one run: ``tiling.*``, ``qc.*`` and ``stain.*`` of the configuration, whose defaults
    these are (:meth:`from_config`); built by hand (tools, tests), they read with one thread and without QC."""

    magnification: float = default(TilingConfig, "magnification")
    tile_px: int = default(TilingConfig, "tile_px")
    background_threshold: int = default(TilingConfig, "background_threshold")
    max_background_fraction: float = default(TilingConfig, "max_background_fraction")
    jpeg_quality: int = default(TilingConfig, "jpeg_quality")
    magnification_tolerance: float = default(TilingConfig, "magnification_tolerance")
    threads: int = 1  # per slide (tiling.threads_per_slide); not part of the digest (results do not depend on it)
    reader: str = default(TilingConfig, "reader")  # auto: a matching tiled TIFF page is decoded directly
    scaled_decode: bool = default(TilingConfig, "scaled_decode")  # JPEG tiles decoded at 1/2, 1/4, 1/8 (DCT)
    qc: QcParams | None = None  # artifact QC (pen, blur, dark) per tile; None: every tissue tile is kept (qc.enabled)
    stain_normalize: str = default(StainConfig, "normalize")  # none | macenko | reinhard, per kept tile
    stain_target: tuple[float, ...] = ()  # the normalisation target's numbers (stain.fit_target)
    stain_sample_tiles: int = default(StainConfig, "sample_tiles")  # tiles sampled for a slide's stain estimate

    def digest(self) -> str:
        """Short hash of the settings: tiles made with other settings are not reused."""
        import hashlib
        import json
        from dataclasses import asdict

        settings = result_settings(asdict(self))
        if self.qc is None:  # no QC: the tiles of before QC existed
            del settings["qc"]
        if self.stain_normalize == "none":  # no normalisation: the tiles of before it existed
            for k in ("stain_normalize", "stain_target", "stain_sample_tiles"):
                del settings[k]
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_config(cls, cfg) -> TilingParams:
        """From the configuration: the ``tiling`` settings of the same name, ``threads_per_slide``, QC and stain."""
        from .stain import fit_target

        t = cfg.tiling
        same = {f.name: getattr(t, f.name) for f in fields(cls) if f.name in TilingConfig.model_fields}
        return cls(
            **same,
            threads=t.threads_per_slide,
            qc=QcParams.from_config(cfg.qc),
            stain_normalize=cfg.stain.normalize,
            stain_target=fit_target(cfg.stain.normalize, cfg.stain.reference),
            stain_sample_tiles=cfg.stain.sample_tiles,
        )


#: ``tiles`` rows (``tables.SCHEMAS["tiles"]`` without the key ``cohort, slide_id``; after ``idx`` the measures
#: of :func:`~pathomch_assets.qc.tile_qc`, in its order): ``idx`` (the record's place in the slide's TFRecord) is
#: None for a tile QC dropped
TILE_COLUMNS = [c for c in SCHEMAS["tiles"] if c not in ("cohort", "slide_id")]


@dataclass
class SlideTilingResult:
    """Outcome for one slide: a ``slides`` row and the ``tiles`` rows.

    The rows are kept as tuples (``records``) and ``tiles`` makes the DataFrame when asked: a
    tiling worker never imports pandas for them, and results cross the process pool as tuples.
    """

    cohort: str
    slide_id: str
    path: str
    status: str  # ok | error | no_tissue
    error: str | None = None
    records: list[tuple] = field(default_factory=list)  # TILE_COLUMNS
    info: dict = field(default_factory=dict)  # the slide's ``slides`` columns, and the DIAGNOSTICS
    seconds: float = 0.0
    stain: dict | None = None  # the slide's ``stain`` row (stain.slide_stain_row), None when not tiled

    #: ``info`` keys that say how this run read the slide (``reader``: tifffile or openslide; ``decode_scale``: the
    #: JPEG DCT scale the tiles were decoded at) for the benchmarks and tests, not ``slides`` columns: the demo's
    #: stored digest pins that table's columns, and they are known from the slide and the settings
    #: (``tiling.reader``, ``tiling.scaled_decode``) rather than results of the tiling
    DIAGNOSTICS = ("reader", "decode_scale")

    def key(self) -> dict:
        """``cohort`` and ``slide_id``, as table rows carry them."""
        return {"cohort": self.cohort, "slide_id": self.slide_id}

    def row_info(self) -> dict:
        """``info`` less the :attr:`DIAGNOSTICS`: what the slide's ``slides`` row records of this tiling."""
        return {k: v for k, v in self.info.items() if k not in self.DIAGNOSTICS}

    @property
    def n_kept(self) -> int:
        """Tiles in the TFRecord."""
        return sum(1 for r in self.records if r[3] is not None)

    @property
    def n_qc_dropped(self) -> int:
        """Tissue tiles QC dropped (rows without ``idx``)."""
        return len(self.records) - self.n_kept

    @property
    def tiles(self):
        """The ``tiles`` rows as a DataFrame (``TILE_COLUMNS``)."""
        import pandas as pd

        return pd.DataFrame(self.records, columns=TILE_COLUMNS).astype({"idx": "Int64"})

    @tiles.setter
    def tiles(self, frame) -> None:
        self.records = list(frame[TILE_COLUMNS].itertuples(index=False, name=None))


class Finished(NamedTuple):
    """A tissue tile after :class:`TileFinisher`: its JPEG (None when QC dropped it) and QC measures."""

    jpeg: bytes | None
    pen: float | None = None
    blur: float | None = None
    blurred: bool | None = None
    dark: float | None = None
    qc: str | None = None


class TileFinisher:
    """What happens to a tissue tile's pixels once it passed the tissue rule, on the thread that decoded it:
    QC measures (:func:`pathomch_assets.qc.tile_qc`), then for a kept tile optional stain normalisation and
    the JPEG encode, and a pixel sample for the slide's stain statistics (every ``tile_px / 32``-th pixel,
    from the middle of the first step: not the corners of JPEG blocks) of every ``every``-th grid cell
    (``row * cols + col``; a memory bound on large slides).

    ``encode=False``: nothing is encoded (the stain pre-pass).  Samples are keyed by grid position, so the
    slide's sample does not depend on the order threads finish in.
    """

    def __init__(self, params: TilingParams, normalize=None, encode: bool = True, every: int = 1, cols: int = 1):
        self.params, self.normalize, self.encode = params, normalize, encode
        self.step = max(1, params.tile_px // 32)
        self.every, self.cols = max(1, every), cols
        self.samples: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, pixels: np.ndarray, col: int, row: int) -> Finished:
        """``pixels``: the tile, ``px x px x 3`` RGB or C-contiguous ``px x px x 4`` RGBX (X = 255)."""
        import imagecodecs

        p = self.params
        measures: tuple = (None, None, None, None, None)
        if p.qc is not None:
            measures = tile_qc(pixels, p.qc, p.background_threshold)
            if measures[4] is not None:
                return Finished(None, *measures)
        if (row * self.cols + col) % self.every == 0:
            first = self.step // 2
            self.samples[(col, row)] = np.array(pixels[first :: self.step, first :: self.step, :3])
        if not self.encode:
            return Finished(None, *measures)
        if self.normalize is not None:
            pixels = self.normalize(pixels)
        if pixels.shape[-1] == 4:
            # the encoder reads RGBX as it reads RGB (the same bytes: test_tiling), so X is never copied away
            jpeg = imagecodecs.jpeg8_encode(
                pixels, level=p.jpeg_quality, colorspace=imagecodecs.JPEG8.CS.EXT_RGBX,
                outcolorspace=imagecodecs.JPEG8.CS.YCbCr,
            )  # fmt: skip
        else:
            jpeg = imagecodecs.jpeg8_encode(np.ascontiguousarray(pixels), level=p.jpeg_quality)
        return Finished(bytes(jpeg), *measures)

    def sample(self, max_tiles: int = STAIN_SAMPLE_TILES) -> tuple[np.ndarray, int]:
        """The pixels sampled (``(N, 3)`` uint8) from at most ``max_tiles`` tiles evenly spread over the grid
        order, and from how many tiles."""
        keys = sorted(self.samples)
        if not keys:
            return np.zeros((0, 3), np.uint8), 0
        if len(keys) > max_tiles:
            keys = [keys[i] for i in np.linspace(0, len(keys) - 1, max_tiles).round().astype(int)]
        return np.concatenate([self.samples[k].reshape(-1, 3) for k in keys]), len(keys)


def tissue_fraction(rgb: np.ndarray, threshold: int = 220) -> np.ndarray | float:
    """Share of pixels that are not background; background = every channel above ``threshold``.

    ``rgb`` is ``(..., H, W, 3)`` uint8; the fraction is taken over the last three axes.
    """
    darkest = np.minimum(rgb[..., 0], rgb[..., 1])
    np.minimum(darkest, rgb[..., 2], out=darkest)
    background = np.count_nonzero(darkest > threshold, axis=(-2, -1))
    return 1.0 - background / (rgb.shape[-3] * rgb.shape[-2])


def tissue_mask(rgb: np.ndarray, threshold: int = 220) -> np.ndarray:
    """Tissue pixels: some channel at or below ``threshold`` (:func:`tissue_fraction`'s non-background)."""
    return np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) <= threshold


def rgbx_background(rgbx: np.ndarray, threshold: int) -> int:
    """Background pixels of RGBX pixels (X = 255): all four bytes above ``threshold``, one comparison pass."""
    return int(np.count_nonzero(np.greater(rgbx, threshold).view(np.uint32) == 0x01010101))


def rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide returns premultiplied RGBA; transparent (unscanned) pixels become white."""
    if rgba[..., 3].min() == 255:  # fully opaque: the common case, a view, no copy
        return rgba[..., :3]
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = rgb + (255 - alpha)  # premultiplied: colour + (1 - a) * white
    return np.minimum(out, 255).astype(np.uint8)


def qc_read(slide, info, path, max_px: int = 4096 * 4096) -> np.ndarray | None:
    """Read the smallest level whole (when small): corrupt tile data fails here, before tiling."""
    level = len(info.level_dimensions) - 1
    w, h = info.level_dimensions[level]
    if w * h > max_px:
        return None
    try:
        return rgba_to_rgb_on_white(np.asarray(slide.read_region((0, 0), level, (w, h))))
    except Exception as err:  # OpenSlideError
        raise SlideError(path, f"read failed at level {level} (whole-level QC read): {err}") from None


def grid_shape(info, choice: LevelChoice) -> tuple[int, int]:
    """Complete tiles per row and column at the chosen level."""
    w, h = info.level_dimensions[choice.level]
    return w // choice.read_px, h // choice.read_px


def candidate_cells(thumb: np.ndarray | None, info, choice: LevelChoice, params: TilingParams) -> np.ndarray | None:
    """Grid cells that may hold tissue, from the whole-level QC thumbnail (None: all).

    Conservative: a cell is dropped only when its thumbnail area is blank to within 2% (and
    only when a cell spans at least 4 x 4 thumbnail pixels).  Downsampling blends tissue into
    white, which lowers a mixed cell's pixels below the threshold: blank at low resolution
    means blank at full resolution.
    """
    if thumb is None:
        return None
    n_cols, n_rows = grid_shape(info, choice)
    scale = thumb.shape[1] / info.level_dimensions[choice.level][0]  # thumb px per level px
    cell = choice.read_px * scale
    if cell < 4:
        return None
    keep = np.ones((n_rows, n_cols), bool)
    tissue = tissue_mask(thumb, params.background_threshold)
    for r in range(n_rows):
        y0, y1 = int(r * cell), int(np.ceil((r + 1) * cell))
        for c in range(n_cols):
            x0, x1 = int(c * cell), int(np.ceil((c + 1) * cell))
            keep[r, c] = tissue[y0:y1, x0:x1].mean() > 0.02
    return keep


def _runs(flags: np.ndarray):
    """(start, length) of consecutive True runs."""
    idx = np.flatnonzero(flags)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]])
    return [(int(a), int(b - a + 1)) for a, b in zip(starts, ends)]


_buffers = threading.local()


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 buffer ``name`` of ``shape``, kept per thread and reused: no fresh pages (and their faults)
    per cell, and it stays in this core's cache."""
    held = getattr(_buffers, "arrays", None)
    if held is None:
        held = _buffers.arrays = {}
    key = (name, shape)
    if key not in held:
        held[key] = np.empty(shape, np.uint8)
    return held[key]


class TiffLevelReader:
    """Regions of one pyramid level decoded straight from its tiled TIFF page (tifffile).

    OpenSlide's ``read_region`` composites every region through cairo into premultiplied
    RGBA, about 3x the cost of decoding the stored tiles.  When a TIFF page is exactly the
    OpenSlide level (same size, integer downsample, tiled, 3 samples, contiguous), its tiles
    are decoded once with the codec tifffile picks; otherwise :meth:`open` returns None and
    the tiler reads through OpenSlide.

    ``factor`` 2, 4 or 8 (JPEG pages only): each stored tile is decoded at ``1/factor`` scale in
    the DCT domain (libjpeg-turbo through ``simplejpeg``), so a region comes back ``factor``
    times smaller without ever being decoded whole; see :class:`ScaledJpeg`.
    """

    def __init__(self, tif, page, factor: int = 1):
        self.tif, self.page = tif, page
        self.decode = page.decode
        tif.filehandle.set_lock(True)  # row bands are read on threads
        self.scaled = ScaledJpeg.for_page(page, factor) if factor > 1 else None
        self.factor = factor if self.scaled is not None else 1
        self._fd = os.open(tif.filehandle.path, os.O_RDONLY) if self.scaled is not None else None
        self._hint: np.ndarray | None = None  # hint_tissue

    @classmethod
    def open(cls, path, info, level: int, factor: int = 1) -> TiffLevelReader | None:
        """A reader of ``level``, or None; ``reader.factor`` says whether the scaled decode was possible."""
        import tifffile

        down = info.level_downsamples[level]
        if abs(down - round(down)) > 1e-9:
            return None
        try:
            tif = tifffile.TiffFile(path)
        except Exception:  # not a TIFF (or one tifffile cannot parse): OpenSlide reads it
            return None
        w, h = info.level_dimensions[level]
        for page in tif.pages:
            if (
                isinstance(page, tifffile.TiffPage)  # a TiffFrame only with useframes, never here
                and page.is_tiled
                and (page.imagewidth, page.imagelength) == (w, h)
                and page.samplesperpixel == 3
                and page.imagedepth == 1
                and page.planarconfig == 1
                and page.bitspersample == 8
            ):
                return cls(tif, page, factor)
        tif.close()
        return None

    def _segments(self, x: int, y: int, width: int, height: int):
        """Stored tiles covering the region: ``(first tile column, first tile row, [(data, index), ...])``."""
        p = self.page
        tw, th = p.tilewidth, p.tilelength
        across = -(-p.imagewidth // tw)
        tx0, tx1, ty0, ty1 = x // tw, (x + width - 1) // tw, y // th, (y + height - 1) // th
        index = [ty * across + tx for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
        fh = self.tif.filehandle
        segments = fh.read_segments(
            [p.dataoffsets[i] for i in index], [p.databytecounts[i] for i in index], indices=index, lock=fh.lock
        )
        return tx0, ty0, tx1 - tx0 + 1, ty1 - ty0 + 1, segments

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """``height x width x 3`` uint8 pixels at level coordinates ``(x, y)``; with ``factor`` > 1,
        ``height / factor x width / factor`` (``x``, ``y``, ``width``, ``height`` multiples of it)."""
        if self.scaled is not None:
            return self._read_scaled(x, y, width, height)
        p = self.page
        tw, th = p.tilewidth, p.tilelength
        tx0, ty0, nx, ny, segments = self._segments(x, y, width, height)
        out = np.empty((ny * th, nx * tw, 3), np.uint8)
        for data, i in segments:
            if p.compression == 7 and data:  # JPEG: refuse a declared size that is not the tile's, before decoding
                check_jpeg_size(data, tw, th, f"tile {i} of page {p.index}")
            seg, (_, _, sy, sx, _), _ = self.decode(data, i, jpegtables=p.jpegtables, jpegheader=p.jpegheader)
            if seg is None:
                raise ValueError(f"tile {i} of page {p.index} has no data")
            seg = seg.reshape(seg.shape[-3:])[..., :3]  # (depth,) height, width, samples
            out[sy - ty0 * th : sy - ty0 * th + seg.shape[0], sx - tx0 * tw : sx - tx0 * tw + seg.shape[1]] = seg
        oy, ox = y - ty0 * th, x - tx0 * tw
        return out[oy : oy + height, ox : ox + width]

    def _read_scaled(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        p, f = self.page, self.factor
        if (x | y | width | height) % f:
            raise ValueError(f"region {x}, {y}, {width} x {height} is not a multiple of the decode factor {f}")
        tw, th = p.tilewidth, p.tilelength
        across = -(-p.imagewidth // tw)
        tx0, tx1, ty0, ty1 = x // tw, (x + width - 1) // tw, y // th, (y + height - 1) // th
        ny, nx, sw, sh = ty1 - ty0 + 1, tx1 - tx0 + 1, tw // f, th // f
        grid = np.empty((ny, nx, sh, sw, 3), np.uint8)  # each stored tile decoded in place
        offsets, counts, fd, scaled = p.dataoffsets, p.databytecounts, self._fd, self.scaled
        assert scaled is not None and fd is not None  # read() calls this only for a scaled reader
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                i = ty * across + tx
                if not counts[i]:
                    raise ValueError(f"tile {i} of page {p.index} has no data")
                # pread: a positioned read, safe on threads without a lock
                scaled.decode(os.pread(fd, counts[i], offsets[i]), grid[ty - ty0, tx - tx0])
        out = grid.transpose(0, 2, 1, 3, 4).reshape(ny * sh, nx * sw, 3)
        oy, ox = (y - ty0 * th) // f, (x - tx0 * tw) // f
        return out[oy : oy + height // f, ox : ox + width // f]

    def aligned(self, read_px: int) -> bool:
        """Grid cells of ``read_px`` cover whole stored tiles (scaled decode only): see :meth:`read_cell`."""
        p = self.page
        return self.scaled is not None and read_px % p.tilewidth == 0 and read_px % p.tilelength == 0

    def read_cells(self, x: int, y: int, n: int, read_px: int) -> np.ndarray:
        """``n`` grid cells of ``read_px`` along a row from level coordinates ``(x, y)``, decoded at
        ``1/factor`` as RGBX (X = 255): ``(n, read_px / factor, read_px / factor, 4)``, each cell one
        C-contiguous tile (``aligned(read_px)`` must hold); see :meth:`read_cell`."""
        side = read_px // self.factor
        cells = np.empty((n, side, side, 4), np.uint8)
        for c in range(n):
            self.read_cell(x + c * read_px, y, read_px, cells[c])
        return cells

    def read_cell(self, x: int, y: int, read_px: int, out: np.ndarray, order=None, stop=None) -> bool:
        """The grid cell of ``read_px`` at level coordinates ``(x, y)`` decoded at ``1/factor`` as RGBX
        (X = 255) into ``out``, C-contiguous ``(read_px / factor, read_px / factor, 4)``.  Each stored tile
        is decoded into a small scratch buffer and copied to its place at once, while it is still in cache.

        ``order``: the cell's stored tiles as ``(dy, dx)`` in the order to decode them (default: row by
        row); ``stop(k, pixels)`` is called after the k-th and may end the read early (True): the cell is
        then incomplete and False is returned."""
        p, f = self.page, self.factor
        tw, th = p.tilewidth, p.tilelength
        across = -(-p.imagewidth // tw)
        ky, kx = read_px // th, read_px // tw
        h, w = th // f, tw // f
        if out.shape != (ky * h, kx * w, 4) or not out.flags.c_contiguous:  # reshape must give a view, not a copy
            raise ValueError(f"output array {out.shape} is not a C-contiguous {(ky * h, kx * w, 4)} cell")
        cell = out.reshape(ky, h, kx, w, 4)  # stored tile (dy, dx) is cell[dy, :, dx]
        scratch = _scratch("stored tile", (h, w, 4))
        offsets, counts, fd, scaled = p.dataoffsets, p.databytecounts, self._fd, self.scaled
        assert scaled is not None and fd is not None, "read_cell needs aligned(read_px): a scaled reader"
        first = (y // th) * across + x // tw
        for k, (dy, dx) in enumerate(order if order is not None else np.ndindex(ky, kx)):
            i = first + dy * across + dx
            if not counts[i]:
                raise ValueError(f"tile {i} of page {p.index} has no data")
            scaled.decode(os.pread(fd, counts[i], offsets[i]), scratch)
            cell[dy, :, dx] = scratch
            if stop is not None and stop(k, scratch):
                return False
        return True

    def hint_tissue(self, thumb: np.ndarray | None, threshold: int) -> None:
        """Remember, per stored tile of the page, the share of its area that the QC thumbnail shows as
        tissue (:meth:`tissue_hint`); nothing when there is no thumbnail or a stored tile is under one of
        its pixels."""
        self._hint = None
        p = self.page
        if thumb is None:
            return
        h, w = thumb.shape[:2]
        bh, bw = p.tilelength * h / p.imagelength, p.tilewidth * w / p.imagewidth  # thumbnail px per stored tile
        if bh < 1 or bw < 1:
            return
        area = np.zeros((h + 1, w + 1))  # summed-area table: any box's tissue in four look-ups
        area[1:, 1:] = tissue_mask(thumb, threshold).cumsum(0).cumsum(1)
        rows, cols = -(-p.imagelength // p.tilelength), -(-p.imagewidth // p.tilewidth)
        y0 = np.minimum((np.arange(rows) * bh).astype(int), h - 1)
        x0 = np.minimum((np.arange(cols) * bw).astype(int), w - 1)
        y1 = np.clip((np.arange(1, rows + 1) * bh).astype(int), y0 + 1, h)
        x1 = np.clip((np.arange(1, cols + 1) * bw).astype(int), x0 + 1, w)
        inside = area[np.ix_(y1, x1)] - area[np.ix_(y0, x1)] - area[np.ix_(y1, x0)] + area[np.ix_(y0, x0)]
        self._hint = inside / np.outer(y1 - y0, x1 - x0)

    def tissue_hint(self, x: int, y: int, read_px: int) -> np.ndarray | None:
        """The thumbnail's tissue share of each stored tile of the cell at ``(x, y)``: ``(ky, kx)``, or None."""
        if self._hint is None:
            return None
        p = self.page
        ty, tx = y // p.tilelength, x // p.tilewidth
        return self._hint[ty : ty + read_px // p.tilelength, tx : tx + read_px // p.tilewidth]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.tif.close()


class ScaledJpeg:
    """Decode a TIFF page's JPEG tiles at ``1/factor`` scale (libjpeg-turbo's DCT scaling).

    libjpeg-turbo computes a 1/2, 1/4 or 1/8 size image straight from the DCT coefficients (a
    reduced inverse DCT), skipping most of the work of a full decode and the resampling after it.
    TIFF JPEG tiles are often abbreviated streams whose tables are in the ``JPEGTables`` tag: the
    tables are spliced into every tile (as tifffile and imagecodecs do).  The colour space is the
    TIFF's ``Photometric`` (RGB or YCbCr), as OpenSlide decodes it; libjpeg guesses it from JFIF /
    Adobe markers and component ids instead, so when its guess would differ an Adobe marker with
    the right transform is inserted, and where that cannot decide it (a JFIF marker on RGB data)
    :meth:`for_page` returns None and the exact path is used.
    """

    def __init__(self, prefix: bytes, tile_w: int, tile_h: int, factor: int):
        import simplejpeg

        self._decode = simplejpeg.decode_jpeg
        self.prefix, self.factor = prefix, factor
        self.size = (tile_h // factor, tile_w // factor)

    @classmethod
    def for_page(cls, page, factor: int) -> ScaledJpeg | None:
        """The decoder for ``page``, or None when this page is decoded exactly."""
        if factor not in (2, 4, 8) or page.compression != 7 or page.jpegheader is not None:
            return None
        if page.tilewidth % factor or page.tilelength % factor or page.photometric not in (2, 6):
            return None
        try:
            import simplejpeg  # noqa: F401
        except ImportError:
            return None
        tables = bytes(page.jpegtables or b"")
        if tables and not (tables.startswith(b"\xff\xd8") and tables.endswith(b"\xff\xd9")):
            return None
        body = tables[2:-2]  # DQT / DHT segments without SOI and EOI
        first = next((i for i, n in enumerate(page.databytecounts) if n), None)
        if first is None:
            return None
        fh = page.parent.filehandle
        with fh.lock:
            fh.seek(page.dataoffsets[first])
            tile = fh.read(page.databytecounts[first])
        want = "RGB" if page.photometric == 2 else "YCbCr"
        markers = jpeg_colour_markers(body + tile[2:])
        if markers is None:
            return None
        jfif, adobe, ids = markers
        if jpeg_colour_space(jfif, adobe, ids) == want:
            prefix = b"\xff\xd8" + body
        elif not jfif and adobe is None:  # libjpeg follows an Adobe marker when there is no JFIF marker
            prefix = b"\xff\xd8" + adobe_marker(0 if want == "RGB" else 1) + body
        else:
            return None
        return cls(prefix, page.tilewidth, page.tilelength, factor)

    def decode(self, tile: bytes, out: np.ndarray) -> np.ndarray:
        """The tile at ``1/factor`` scale into ``out``: C-contiguous, ``size`` x 3 (RGB) or x 4 (RGBX)."""
        h, w = self.size
        if out.shape[:2] != (h, w) or out.shape[2] not in (3, 4):
            raise ValueError(f"output array {out.shape} does not fit a {h} x {w} tile")
        got = self._decode(self.prefix + tile[2:], "RGB" if out.shape[2] == 3 else "RGBX", buffer=out,
                           min_height=h, min_width=w)  # fmt: skip
        if got.shape != out.shape:
            raise ValueError(f"JPEG tile decoded to {got.shape[:2]}, expected {(h, w)}")
        return got


def adobe_marker(transform: int) -> bytes:
    """An APP14 "Adobe" segment: transform 0 = RGB, 1 = YCbCr (for 3 components)."""
    import struct

    return b"\xff\xee" + struct.pack(">H5sHHHB", 14, b"Adobe", 100, 0, 0, transform)


def jpeg_colour_markers(stream: bytes) -> tuple[bool, int | None, tuple[int, ...]] | None:
    """(JFIF marker seen, Adobe transform or None, component ids of the frame) from the segments
    before the first SOS, or None when the stream does not parse."""
    import struct

    adobe: int | None = None
    ids: tuple[int, ...] = ()
    jfif, pos = False, 0
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            return None
        marker = stream[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # SOI, TEM, RSTn: no length
            pos += 2
            continue
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", stream[pos + 2 : pos + 4])
        seg = stream[pos + 4 : pos + 2 + length]
        if marker == 0xE0 and seg.startswith(b"JFIF\x00"):
            jfif = True
        elif marker == 0xEE and seg.startswith(b"Adobe") and len(seg) >= 12:
            adobe = seg[11]
        elif marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            ids = tuple(seg[6 + 3 * k] for k in range(seg[5]))
        elif marker == 0xDA:  # SOS: entropy-coded data follows
            return (jfif, adobe, ids) if ids else None
        pos += 2 + length
    return None


def jpeg_frame_size(stream: bytes) -> tuple[int, int] | None:
    """``(width, height)`` a JPEG stream's frame header (SOFn) declares, or None when it has none before SOS."""
    import struct

    pos = 0
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            return None
        marker = stream[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker == 0xFF:
            pos += 1
            continue
        (length,) = struct.unpack(">H", stream[pos + 2 : pos + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if pos + 9 > len(stream):
                return None
            height, width = struct.unpack(">HH", stream[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA:
            return None
        pos += 2 + length
    return None


def check_jpeg_size(stream: bytes, width: int, height: int, what: str) -> None:
    """Raise ``ValueError`` when a JPEG tile declares another size than its TIFF tile (as OpenSlide does:
    "Dimensional mismatch"): a 60000 x 60000 header on a 256 x 256 tile would allocate gigabytes."""
    declared = jpeg_frame_size(stream)
    if declared is not None and declared != (width, height):
        raise ValueError(
            f"Dimensional mismatch reading JPEG {what}: its header declares {declared[0]} x {declared[1]}, "
            f"the TIFF tile is {width} x {height}"
        )


def jpeg_colour_space(jfif: bool, adobe: int | None, ids: tuple[int, ...]) -> str | None:
    """The colour space libjpeg(-turbo) assumes for a 3-component stream (jdapimin.c)."""
    if len(ids) != 3:
        return None
    if jfif:
        return "YCbCr"
    if adobe is not None:
        return "RGB" if adobe == 0 else "YCbCr"
    return "RGB" if ids == (82, 71, 66) else "YCbCr"


def decode_factor(choice: LevelChoice, params: TilingParams) -> int:
    """2, 4 or 8 when a tile is exactly that many times smaller than its read at the level, else 1."""
    for f in (2, 4, 8):
        if choice.read_px == f * params.tile_px:
            return f
    return 1


def _read_band(slide, reader, info, choice: LevelChoice, path, x: int, y: int, width: int, height: int):
    """Level pixels (RGB on white) from the TIFF page when possible, else OpenSlide."""
    try:
        if reader is not None:
            return reader.read(x, y, width, height)
        down = info.level_downsamples[choice.level]
        band = np.asarray(slide.read_region((round(x * down), round(y * down)), choice.level, (width, height)))
    except Exception as err:  # OpenSlideError, codec errors: corrupt tile data
        raise SlideError(path, f"read failed at level {choice.level}, level pixels x={x}, y={y}: {err}") from None
    return rgba_to_rgb_on_white(band)


def _tile_row(
    slide,
    info,
    choice: LevelChoice,
    params: TilingParams,
    path,
    row: int,
    cols: np.ndarray,
    reader: TiffLevelReader | None = None,
    finish: TileFinisher | None = None,
):
    """Tissue tiles of one grid row: ``[(col, fraction, Finished), ...]`` (``finish``: default
    ``TileFinisher(params)``)."""
    from PIL import Image

    finish = finish if finish is not None else TileFinisher(params)
    s = choice.read_px
    out = []
    for start, length in _runs(cols):
        for c0 in range(start, start + length, BAND_TILES):
            n = min(BAND_TILES, start + length - c0)
            if reader is not None and reader.aligned(s):
                out.extend(_scaled_cells(reader, choice, params, path, row, c0, n, finish))
                continue
            band = _read_band(slide, reader, info, choice, path, c0 * s, row * s, n * s, s)
            px = band.shape[0]  # read_px, or tile_px when the reader decoded the level's JPEG tiles scaled
            tiles = band.reshape(px, n, px, 3).transpose(1, 0, 2, 3)
            if px != params.tile_px:
                tiles = np.stack(
                    [
                        np.asarray(
                            Image.fromarray(np.ascontiguousarray(t)).resize(
                                (params.tile_px, params.tile_px), Image.Resampling.BOX
                            )
                        )
                        for t in tiles
                    ]
                )
            fracs = np.asarray(tissue_fraction(tiles, params.background_threshold))  # one per tile
            for k in np.flatnonzero(fracs >= 1.0 - params.max_background_fraction):
                out.append((c0 + int(k), float(fracs[k]), finish(tiles[k], c0 + int(k), row)))
    return out


def _scaled_cells(
    reader: TiffLevelReader,
    choice: LevelChoice,
    params: TilingParams,
    path,
    row: int,
    c0: int,
    n: int,
    finish: TileFinisher | None = None,
):
    """Tissue tiles of ``n`` cells from column ``c0`` through :meth:`TiffLevelReader.read_cell`, one cell at a
    time: decoded, counted and encoded while it is in cache, in a buffer this thread reuses.

    The tissue fraction is :func:`tissue_fraction`'s, counted on RGBX pixels (a pixel is background
    when all four bytes exceed the threshold; X is 255): one comparison pass, no band assembled.
    A cell the QC thumbnail shows as partly blank (tissue borders) has its stored tiles decoded blank-first
    and counted one by one: once the background counted so far fails the tissue rule, the cell is dropped
    without decoding the rest (exact: the same rule on pixels already decoded, and background only grows).
    """
    finish = finish if finish is not None else TileFinisher(params)
    s, px = choice.read_px, params.tile_px
    cell = _scratch("cell", (px, px, 4))
    min_fraction, area, threshold = 1.0 - params.max_background_fraction, px * px, params.background_threshold
    out = []
    for c in range(n):
        x, y = (c0 + c) * s, row * s
        order = stop = None
        background = [0]
        hint = reader.tissue_hint(x, y, s)
        if hint is not None and (hint < 0.5).any():
            order = [np.unravel_index(k, hint.shape) for k in np.argsort(hint, axis=None, kind="stable")]

            def stop(k, pixels, background=background):
                background[0] += rgbx_background(pixels, threshold)
                return 1.0 - background[0] / area < min_fraction  # fails the rule already: more cannot pass it

        try:
            whole = reader.read_cell(x, y, s, cell, order, stop)
        except Exception as err:  # codec errors: corrupt tile data
            raise SlideError(path, f"read failed at level {choice.level}, level pixels x={x}, y={y}: {err}") from None
        if not whole:
            continue
        if stop is None:  # counted as a whole (the stored tiles partition the cell: the same count)
            background[0] = rgbx_background(cell, threshold)
        fraction = 1.0 - background[0] / area
        if fraction >= min_fraction:
            out.append((c0 + c, float(fraction), finish(cell, c0 + c, row)))
    return out


def iter_tiles(
    slide,
    info,
    choice: LevelChoice,
    params: TilingParams,
    path: str | Path = "slide",
    thumb=None,
    threads: int = 1,
    reader: TiffLevelReader | None = None,
    finish: TileFinisher | None = None,
    cells: np.ndarray | None = None,
):
    """Yield ``(col, row, tissue_fraction, Finished)`` for tissue tiles, row by row (``Finished.jpeg`` is
    None for a tile QC dropped).

    Rows are read on ``threads`` threads (OpenSlide and the JPEG codecs release the GIL) and
    yielded in order; a thread holds a row band of at most ``BAND_TILES`` tiles, or one cell on the
    DCT-scaled path.  ``cells``: the grid cells to look at (rows x cols bool; default the candidate cells).
    """
    from concurrent.futures import ThreadPoolExecutor

    n_cols, n_rows = grid_shape(info, choice)
    keep = cells if cells is not None else candidate_cells(thumb, info, choice, params)
    finish = finish if finish is not None else TileFinisher(params)
    rows = [(r, keep[r] if keep is not None else np.ones(n_cols, bool)) for r in range(n_rows)]
    rows = [(r, cols) for r, cols in rows if cols.any()]
    work = lambda rc: (rc[0], _tile_row(slide, info, choice, params, path, rc[0], rc[1], reader, finish))  # noqa: E731
    if threads <= 1:
        results = map(work, rows)
        for row, tiles in results:
            for col, frac, jpeg in tiles:
                yield col, row, frac, jpeg
        return
    with ThreadPoolExecutor(threads) as pool:
        pending = []
        for rc in rows:  # bounded look-ahead keeps memory flat
            pending.append(pool.submit(work, rc))
            if len(pending) >= 2 * threads:
                row, tiles = pending.pop(0).result()
                yield from ((col, row, frac, jpeg) for col, frac, jpeg in tiles)
        for fut in pending:
            row, tiles = fut.result()
            yield from ((col, row, frac, jpeg) for col, frac, jpeg in tiles)


def tile_slide(
    cohort: str,
    slide_id: str,
    path: str | Path,
    out_file: str | Path,
    params: TilingParams,
    default_magnification: float | None = None,
    manifest_ref=None,
) -> SlideTilingResult:
    """Tile one slide into ``out_file`` (TFRecord, written atomically); never raises for bad slides.

    ``manifest_ref``: the slide's ``SlideRef`` when a GDC manifest lists it; its size and MD5 are checked
    here, in the worker (one streamed read, in parallel), before the slide is opened.
    """
    from .tilestore import TileWriter

    t0 = time.perf_counter()
    res = SlideTilingResult(cohort, slide_id, str(path), status="ok")
    slide = reader = None
    try:
        readable(path)
        if manifest_ref is not None and (problem := check_manifest_entry(manifest_ref)):
            raise SlideError(path, problem.removeprefix(f"{path}: "))
        slide = open_slide(path)
        info = slide_info(slide, path, default_magnification)
        thumb = qc_read(slide, info, path)
        choice = choose_level(
            info.base_magnification,
            info.level_downsamples,
            params.magnification,
            params.tile_px,
            params.magnification_tolerance,
        )
        check_grid(path, *grid_shape(info, choice), choice.read_px, choice.level_magnification)
        res.info = {
            "width": info.width,
            "height": info.height,
            "vendor": info.vendor,
            "base_magnification": info.base_magnification,
            "magnification_source": info.magnification_source,
            "mpp": info.mpp,
            "level": choice.level,
            "level_magnification": choice.level_magnification,
            "read_px": choice.read_px,
        }
        factor = decode_factor(choice, params) if params.scaled_decode else 1
        reader = TiffLevelReader.open(path, info, choice.level, factor) if params.reader == "auto" else None
        if reader is not None and reader.scaled is not None:
            reader.hint_tissue(thumb, params.background_threshold)  # blank-first decoding at tissue borders
        res.info["reader"] = "tifffile" if reader is not None else "openslide"
        res.info["decode_scale"] = 1 / reader.factor if reader is not None else 1.0
        cells = candidate_cells(thumb, info, choice, params)
        n_cols, n_rows = grid_shape(info, choice)
        every = -(-int(cells.sum() if cells is not None else n_cols * n_rows) // STAIN_SAMPLE_TILES)
        finish = TileFinisher(params, every=every, cols=n_cols)
        if params.stain_normalize != "none":
            finish, res.stain = stain_prepass(slide, info, choice, params, path, thumb, reader)
        records: list[tuple] = []
        kept = 0
        with TileWriter(out_file, params.jpeg_quality) as writer:
            for col, row, frac, done in iter_tiles(
                slide, info, choice, params, path, thumb, params.threads, reader, finish, cells
            ):
                if done.jpeg is not None:
                    writer.write_jpeg(done.jpeg, col, row)
                records.append((col, row, frac, kept if done.jpeg is not None else None, *done[1:]))
                kept += done.jpeg is not None
            if not kept:
                writer.abort()
        res.records = records
        res.info["tiles_digest"] = writer.digest if kept else None
        if res.stain is None and kept:
            from .stain import slide_stain_row

            res.stain = slide_stain_row(*finish.sample())
        if not kept:
            res.stain = None
            res.status, res.error = (
                "no_tissue",
                f"{path}: no tile with at least {1 - params.max_background_fraction:.0%} tissue"
                + (f" that passed QC ({len(records)} dropped by QC)" if records else ""),
            )
    except Exception as err:  # SlideError, and anything else (OSError writing tiles, codec errors): this slide only
        res.status, res.error = "error", str(err) if isinstance(err, SlideError) else f"{path}: {_describe(err)}"
        res.records = []
        res.stain = getattr(err, "stain", None) if isinstance(err, StainFailed) else None
        from .files import as_path

        with contextlib.suppress(OSError):
            as_path(out_file).unlink(missing_ok=True)
    finally:
        if slide is not None:
            slide.close()
        if reader is not None:
            reader.close()
    res.seconds = time.perf_counter() - t0
    return res


class StainFailed(SlideError):
    """Normalisation was asked for and this slide's stain estimate failed: the slide is not tiled."""

    stain: dict | None = None  # the slide's ``stain`` row, saying why


def stain_prepass(slide, info, choice: LevelChoice, params: TilingParams, path, thumb, reader):
    """The finisher that normalises this slide's tiles (``stain.normalize``) and the slide's ``stain`` row.

    The slide's stain is estimated from up to ``stain_sample_tiles`` candidate cells spread evenly over the
    grid, read, tissue-ruled and QC'd as in tiling, before any tile is written.  When it fails the slide
    raises :class:`StainFailed` (reported with its ``stain`` row; never normalised with a guess).
    """
    from .stain import StainError, normalizer, slide_stain_row

    n_cols, n_rows = grid_shape(info, choice)
    keep = candidate_cells(thumb, info, choice, params)
    keep = keep if keep is not None else np.ones((n_rows, n_cols), bool)
    flat = np.flatnonzero(keep)
    chosen = flat[np.linspace(0, len(flat) - 1, min(len(flat), params.stain_sample_tiles)).round().astype(int)]
    cells = np.zeros(keep.size, bool)
    cells[chosen] = True
    probe = TileFinisher(params, encode=False)
    for _ in iter_tiles(
        slide, info, choice, params, path, thumb, params.threads, reader, probe, cells.reshape(keep.shape)
    ):
        pass
    sample, n = probe.sample()
    row = slide_stain_row(sample, n, params.stain_normalize, params.stain_target)
    try:
        if row["status"] != "ok":  # either method: a slide whose H&E cannot be told apart is not normalised
            raise StainError(row["error"])
        norm = normalizer(params.stain_normalize, params.stain_target, sample, params.background_threshold)
    except StainError as err:
        row = {**row, "status": "failed", "error": str(err)}
        failed = StainFailed(path, f"stain.normalize {params.stain_normalize}: the slide's stain estimate failed "
                             f"({err}); it is not tiled rather than normalised with a guess")  # fmt: skip
        failed.stain = row
        raise failed from None
    return TileFinisher(params, norm), row


def readable(path) -> None:
    """Read the file's first byte: permission denied or an I/O error is reported as such (OpenSlide
    would call the file "not a slide format"), and is transient (the slide is tried again next run)."""
    p = Path(path)
    if p.is_dir():  # DICOM and some vendors' formats are read from a folder by OpenSlide
        return
    try:
        with p.open("rb") as fh:
            fh.read(1)
    except OSError as err:
        raise SlideError(
            path, f"cannot read the file: {err.strerror or err} (fix it; it is tried again on the next run)"
        ) from None


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        name = err.filename2 or err.filename  # os.replace(tmp, target): the target
        where = f" ({name})" if name else ""
        return f"{type(err).__name__}: {err.strerror}{where}"
    return f"{type(err).__name__}: {err}"


def _tile_job(args):
    return tile_slide(*args)


def exit_with_parent(parent_pid: int) -> None:
    """Pool initializer: this worker dies with the process that started it.

    Linux: ``PR_SET_PDEATHSIG`` (the kernel sends SIGKILL when the parent exits, even by
    ``kill -9``).  Everywhere: a daemon thread that exits when the parent is gone (the worker is
    re-parented, ``os.getppid()`` changes).
    """
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _failed(job: tuple, err: BaseException) -> SlideTilingResult:
    """The result of a job whose worker failed (e.g. killed for memory): an error for that slide."""
    cohort, slide_id, path = job[:3]
    return SlideTilingResult(
        cohort,
        slide_id,
        str(path),
        status="error",
        error=f"{path}: tiling worker failed: {_describe(err)} (tried again on the next run)",
    )


def tile_slides(jobs: list[tuple], workers: int = 1, progress=None):
    """Tile several slides, ``workers`` at a time (fresh processes: TensorFlow is not fork-safe).

    ``jobs`` are ``tile_slide`` argument tuples.  Yields results as slides finish; ``progress``
    is called as ``progress(done, total, result)``.
    """
    total = len(jobs)
    if workers <= 1 or total <= 1:
        for i, job in enumerate(jobs, 1):
            try:
                res = tile_slide(*job)
            except Exception as err:  # tile_slide reports slide errors itself; anything else fails this slide only
                res = _failed(job, err)
            if progress:
                progress(i, total, res)
            yield res
        return
    with ProcessPoolExecutor(
        max_workers=min(workers, total),
        mp_context=get_context("spawn"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        futures = {pool.submit(_tile_job, job): job for job in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            try:
                res = fut.result()
            except Exception as err:  # BrokenProcessPool (a worker killed), pickling: only these slides fail
                res = _failed(futures[fut], err)
            if progress:
                progress(i, total, res)
            yield res
