"""Molecular cartography (SPEC 3.8): tile calls on the slide's tile grid.

Per slide and trait, a 2-D binary matrix on the tile grid (1 positive tile, 0 negative tissue
tile, masked where there is no tissue); the tensor cartography stacks the traits.  Maps are
kept as small arrays (one cell per tile) and rendered small, never as full-resolution canvases.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .ensemble import usable_sets, without_ensemble_note
from .files import as_path, atomic_path, local_copy
from .heterogeneity import combination_codes, combination_counts, combination_shares, hti_stats, robust_calls
from .slides import patient_id


@dataclass
class Cartography:
    """``tensor[k, row, col]`` = 1 where trait *k* is positive; ``mask`` marks tissue tiles."""

    traits: list[str]
    tensor: np.ndarray  # uint8, traits x rows x cols
    mask: np.ndarray  # bool, rows x cols

    def calls(self) -> np.ndarray:
        """Tissue tiles x traits booleans (input of :func:`~pathomch_assets.heterogeneity.hti_from_calls`)."""
        return self.tensor[:, self.mask].T.astype(bool)

    def masked(self) -> np.ma.MaskedArray:
        return np.ma.MaskedArray(self.tensor, mask=np.broadcast_to(~self.mask, self.tensor.shape))

    def save(self, path: str | Path, feeds: list[str] | None = None) -> Path:
        """Write the ``.npz``; ``feeds``: the traits that feed maps and HTI (validity gate), stored as a
        boolean per trait (``feeds``) beside the tensor, which keeps every trait with a usable ensemble."""
        target = as_path(path)
        arrays: dict[str, Any] = {"tensor": self.tensor, "mask": self.mask, "traits": np.array(self.traits)}
        if feeds is not None:
            arrays["feeds"] = np.array([t in feeds for t in self.traits], bool)
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        return target

    def subset(self, traits: list[str]) -> Cartography:
        """The cartography of ``traits`` only (in that order)."""
        return Cartography(list(traits), self.tensor[[self.traits.index(t) for t in traits]], self.mask)

    @classmethod
    def load(cls, path: str | Path) -> Cartography:
        with np.load(local_copy(path)) as z:
            return cls([str(t) for t in z["traits"]], z["tensor"], z["mask"])


def hti_trait_sets(
    cohort: str, c, usable: list[str], feeds: list[str], ensemble_test: pd.DataFrame
) -> tuple[list[list[str]], list[list[str]], str | None]:
    """The cohort's trait sets for the HTI: (kept, dropped, note).

    The survival pairs (default: the two traits that feed maps with the best ensemble test AUC, from
    ``ensemble_test``: the cohort's ``model_metrics`` rows of the ensemble on the test set), then any configured
    larger sets (``c``: the cohort's configuration).  A set with a trait that does not feed maps (``feeds``, the
    validity gate's) is dropped, and ``note`` names the trait and the sets, so the maps and HTI of the other
    traits go on: a trait without a usable ensemble (not in ``usable``: its ``ensemble`` partition failed or was
    not run), or one the validity gate left out (not learned on held-out validation slides;
    ``maps.include_invalid`` keeps it).
    """
    pairs = [list(p) for p in c.survival_pairs]
    if not pairs and len(c.traits) >= 2:
        m = ensemble_test[ensemble_test["trait"].isin(feeds)]
        best = m.sort_values(["auc", "trait"], ascending=[False, True])["trait"].tolist()[:2]
        pairs = [best] if len(best) == 2 else [(feeds + [t for t in c.traits if t not in feeds])[:2]]
    kept, dropped = usable_sets(pairs + [list(s) for s in c.hti_sets if list(s) not in pairs], feeds)
    notes = []  # the gate's own note (traits without a decision yet) is the caller's to log
    if dropped:
        sets = ", ".join(map("+".join, dropped))
        missing = sorted({t for s in dropped for t in s} - set(usable))
        if missing:
            notes.append(without_ensemble_note(cohort, missing))
        gated = sorted({t for s in dropped for t in s} & (set(usable) - set(feeds)))
        if gated:
            notes.append(
                f"{cohort}: {', '.join(gated)} left out by the validity gate (trait_validity: not learned on "
                f"held-out validation slides)"
            )
        notes.append(f"no map or HTI of {sets}")
    return kept, dropped, "; ".join(notes) or None


def build_cartography(calls: pd.DataFrame, traits: list[str], shape: tuple[int, int] | None = None) -> Cartography:
    """From long tile calls (``col, row, trait, call``) of one slide.

    ``shape`` (rows, cols) defaults to the extent of the tiles.  Every tissue tile must have a
    call for every trait.
    """
    if calls.empty:
        rows, cols = shape or (0, 0)
        return Cartography(list(traits), np.zeros((len(traits), rows, cols), np.uint8), np.zeros((rows, cols), bool))
    rows, cols = shape or (int(calls["row"].max()) + 1, int(calls["col"].max()) + 1)
    tensor = np.zeros((len(traits), rows, cols), np.uint8)
    mask = np.zeros((rows, cols), bool)
    for k, trait in enumerate(traits):
        t = calls[calls["trait"] == trait]
        tensor[k, t["row"].to_numpy(), t["col"].to_numpy()] = t["call"].to_numpy().astype(np.uint8)
        mask[t["row"].to_numpy(), t["col"].to_numpy()] = True
    counts = calls.groupby(["col", "row"])["trait"].nunique()
    if (counts != len(traits)).any():
        raise ValueError(f"{int((counts != len(traits)).sum())} tiles lack a call for some of {traits}")
    return Cartography(list(traits), tensor, mask)


def combination_names(traits: list[str]) -> list[str]:
    """Names of the 2^N - 1 positive combinations, indexed by code - 1 (bit k = trait k)."""
    return ["+".join(t for k, t in enumerate(traits) if code >> k & 1) for code in range(1, 2 ** len(traits))]


def soft_calls(cfg, calls: pd.DataFrame, carto: Cartography) -> tuple[np.ndarray, float]:
    """The ensemble's soft calls on the grid (traits x rows x cols) and the threshold that makes them calls.

    The members' mean tile probability (``p``, written by ``slide_predictions`` for every slide, trained on
    or arrived later) with ``ensemble.threshold``; slide calls from before ``p`` was stored give the hard
    calls themselves (the robust HTI is then the HTI).
    """
    soft = carto.tensor.astype(float)
    if "p" in calls.columns and calls["p"].notna().all():
        for k, trait in enumerate(carto.traits):
            t = calls[calls["trait"] == trait]
            soft[k, t["row"].to_numpy(), t["col"].to_numpy()] = t["p"].to_numpy(float)
        return soft, cfg.ensemble.threshold
    return soft, 0.5


#: the ``hti_stats`` columns taken from ``heterogeneity.hti_stats``
STATS_KEYS = (
    "hti",
    "ci_low",
    "ci_high",
    "hti_robust",
    "p_spatial",
    "hta",
    "hta_random",
    "hti_present",
    "n_combinations",
    "region_side",
)


def set_results(
    cohort: str, sid: str, tset: list[str], sub: Cartography, soft: np.ndarray, threshold
) -> tuple[dict, dict, pd.DataFrame]:
    """The ``hti``, ``hti_stats`` rows and the ``hti_combinations`` rows of one slide and trait set."""
    c = sub.calls()
    robust = robust_calls(soft, sub.mask, threshold)  # once: for hti_robust and share_robust
    seed = zlib.crc32(f"{sid}|{'+'.join(tset)}".encode())
    stats = hti_stats(sub.tensor, sub.mask, soft, threshold, seed=seed, robust=robust)
    rc = robust[:, sub.mask].T
    key = {"cohort": cohort, "traits": "+".join(tset), "slide_id": sid, "patient_id": patient_id(sid)}
    n_tiles = int(sub.mask.sum())
    hti_row = {**key, "hti": stats["hti"], "n_tiles": n_tiles, "n_positive": int(c.any(axis=1).sum())}
    stats_row = {**key, **{k: stats[k] for k in STATS_KEYS}, "n_tiles": n_tiles}
    counts = combination_counts(c)
    names = ["none"] + combination_names(tset)
    combos = pd.DataFrame(
        {
            **key,
            "combination": names,
            "n_tiles": counts,
            "share": np.r_[np.nan, combination_shares(c)],
            "tissue_share": counts / max(n_tiles, 1),
            "share_robust": np.r_[np.nan, combination_shares(rc)],
        }
    )
    return hti_row, stats_row, combos


def stats_summary(stats: pd.DataFrame) -> pd.DataFrame:
    """Per cohort and trait set: mean HTI and robust HTI, median CI width, share of slides with spatial p < 0.05."""
    if stats.empty:
        return stats
    return (
        stats.groupby(["cohort", "traits"])
        .agg(
            slides=("slide_id", "size"),
            hti_mean=("hti", "mean"),
            hti_robust_mean=("hti_robust", "mean"),
            ci_width_median=("ci_high", lambda s: float((s - stats.loc[s.index, "ci_low"]).median())),
            spatial_p_below_005=("p_spatial", lambda s: float((s < 0.05).mean())),
        )
        .reset_index()
    )


def combination_colours(n_traits: int) -> np.ndarray:
    """One readable RGB colour (0-255) per combination code 1..2^N-1."""
    import matplotlib

    n = 2**n_traits - 1
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return (np.array([cmap(i % cmap.N)[:3] for i in range(n)]) * 255).astype(np.uint8)


NEGATIVE_RGB = (200, 200, 200)
BACKGROUND_RGB = (255, 255, 255)
#: tissue tiles QC dropped (pen, blur, dark: ``tiles.qc``): dark grey, hatched in the PNG
QC_DROPPED_RGB = (110, 110, 110)


def _dropped_mask(dropped: pd.DataFrame | None, shape: tuple[int, int]) -> np.ndarray:
    """Rows x cols bool of the QC-dropped tiles (``col``, ``row``) on a grid of at least ``shape``."""
    rows, cols = shape
    if dropped is not None and len(dropped):
        rows, cols = max(rows, int(dropped["row"].max()) + 1), max(cols, int(dropped["col"].max()) + 1)
    mask = np.zeros((rows, cols), bool)
    if dropped is not None and len(dropped):
        mask[dropped["row"].to_numpy(int), dropped["col"].to_numpy(int)] = True
    return mask


def heterogeneity_image(carto: Cartography, dropped: pd.DataFrame | None = None) -> np.ndarray:
    """RGB image, one pixel per tile: combination colour, grey for negative tissue, ``QC_DROPPED_RGB`` for
    tiles QC dropped (``dropped``: their ``col``, ``row``; the grid grows to hold them), white elsewhere."""
    qc = _dropped_mask(dropped, carto.mask.shape)
    codes = np.zeros(qc.shape, np.int64)
    mask = np.zeros(qc.shape, bool)
    mask[: carto.mask.shape[0], : carto.mask.shape[1]] = carto.mask
    if carto.mask.any():
        codes[mask] = combination_codes(carto.calls())
    img = np.empty((*qc.shape, 3), np.uint8)
    img[:] = BACKGROUND_RGB
    img[qc & ~mask] = QC_DROPPED_RGB
    img[mask & (codes == 0)] = NEGATIVE_RGB
    colours = combination_colours(len(carto.traits))
    pos = mask & (codes > 0)
    img[pos] = colours[codes[pos] - 1]
    return img


def heterogeneity_png(
    carto: Cartography, path: str | Path, cell_px: int = 12, title: str = "", dropped: pd.DataFrame | None = None
) -> Path:
    """The heterogeneity map as a small PNG with a legend of trait combinations (PIL, fast).

    One ``cell_px`` square per tile: a slide of 100 x 80 tiles is a 1200 x 960 px picture, never
    a full-resolution canvas.  Tiles QC dropped (``dropped``: ``col``, ``row``) are dark grey and hatched,
    with their own legend entry.
    """
    from PIL import Image, ImageDraw, ImageFont

    grid = heterogeneity_image(carto, dropped)
    rows, cols = grid.shape[:2]
    names = combination_names(carto.traits) + ["negative tissue"]
    colours = [tuple(int(v) for v in c) for c in combination_colours(len(carto.traits))] + [NEGATIVE_RGB]
    qc = _dropped_mask(dropped, carto.mask.shape)
    if qc.any():
        names.append("dropped by QC")
        colours.append(QC_DROPPED_RGB)
    font = ImageFont.load_default()
    legend_w = 14 + max(int(font.getlength(n)) for n in names) + 12
    top = 16 if title else 0
    width = max(cols * cell_px, 1) + legend_w
    height = max(rows * cell_px + top, top + 16 * len(names) + 4)
    img = Image.new("RGB", (width, height), BACKGROUND_RGB)
    if rows and cols:
        img.paste(Image.fromarray(grid).resize((cols * cell_px, rows * cell_px), Image.Resampling.NEAREST), (0, top))
    draw = ImageDraw.Draw(img)
    for r, c in zip(*np.nonzero(qc & np.all(grid == QC_DROPPED_RGB, axis=-1))):  # hatch: one diagonal per cell
        x, y = c * cell_px, top + r * cell_px
        draw.line([x, y + cell_px - 1, x + cell_px - 1, y], fill=BACKGROUND_RGB)
    if title:
        draw.text((2, 2), title, fill=(0, 0, 0), font=font)
    x0 = cols * cell_px + 8
    for i, (name, colour) in enumerate(zip(names, colours)):
        y = top + 4 + 16 * i
        draw.rectangle([x0, y, x0 + 10, y + 10], fill=colour, outline=(90, 90, 90))
        draw.text((x0 + 14, y - 1), name, fill=(0, 0, 0), font=font)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return as_path(path)


def plot_heterogeneity_map(carto: Cartography, title: str = "", hti: float | None = None, ax=None):
    """The heterogeneity map with a legend of trait combinations; returns the axes."""
    from matplotlib.patches import Patch

    from .plots import pyplot

    plt = pyplot()

    if ax is None:
        ax = plt.gca()
    ax.imshow(heterogeneity_image(carto), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    colours = combination_colours(len(carto.traits)) / 255
    handles = [Patch(color=colours[i], label=name) for i, name in enumerate(combination_names(carto.traits))]
    r, g, b = (v / 255 for v in NEGATIVE_RGB)
    handles.append(Patch(color=(r, g, b), label="negative"))
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_title(f"{title}" + (f"\nHTI {hti:.2f}" if hti is not None else ""), fontsize=8)
    return ax


def maps_gallery(gallery: list[tuple[str, Cartography, dict]]):
    """A figure of up to six slides' maps (2 x 3), each titled with its HTI, 95% CI, robust HTI and spatial p
    (``gallery``: slide id, the cartography of its first trait set, its ``hti_stats`` row)."""
    from .plots import pyplot

    fig, axes = pyplot().subplots(2, 3, figsize=(11, 6))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (sid, carto, st) in zip(axes.flat, gallery):
        plot_heterogeneity_map(
            carto,
            f"{sid[:23]}\n95% CI [{st['ci_low']:.2f}, {st['ci_high']:.2f}], robust "
            f"{st['hti_robust']:.2f}, spatial p {st['p_spatial']:.2g}",
            st["hti"],
            ax=ax,
        )
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class TileGeometry:
    """Where the tiler read the tiles of a slide: grid cell ``(col, row)`` is ``read_px`` x ``read_px`` pixels of a
    pyramid level ``downsample`` times smaller than level 0, from level pixel ``(col * read_px, row * read_px)``
    (``tiling``), then resized to ``tile_px``.

    So a tile's level-0 square is ``read_px * downsample`` wide whatever the target magnification: on a 19.5x
    slide tiled at 20x the level is read as is (within ``tiling.magnification_tolerance``) and a 512 px tile
    covers 512 level-0 px, not ``512 * 19.5 / 20``.

    Examples
    --------
    >>> g = TileGeometry.recorded({"read_px": 512, "base_magnification": 19.5, "level_magnification": 19.5})
    >>> g.square(2, 1)
    (1024.0, 512.0, 1536.0, 1024.0)
    >>> TileGeometry.recorded({"read_px": 512, "base_magnification": 40.0, "level_magnification": 10.0}).side
    2048.0
    """

    read_px: int
    downsample: float

    @classmethod
    def recorded(cls, slide, tile_px: int | None = None, magnification: float | None = None) -> TileGeometry:
        """From the slide's ``slides`` row (``read_px``, ``base_magnification``, ``level_magnification``: the
        level the tiler chose, ``base / level`` its downsample).

        A row without them (tiled before they were recorded) gets the estimate from the settings, ``tile_px``
        target pixels at ``magnification``, when both are given; else a ``ValueError`` says what to do.
        """

        def number(key: str) -> float:
            try:
                value = float(slide[key])
            except (KeyError, TypeError, ValueError):
                return float("nan")
            return value if value > 0 else float("nan")

        read_px, base, level = number("read_px"), number("base_magnification"), number("level_magnification")
        if read_px > 0 and base > 0 and level > 0:
            return cls(int(read_px), base / level)
        if tile_px and magnification and base > 0:
            return cls(int(tile_px), base / magnification)
        raise ValueError(
            f"slide {getattr(slide, 'name', '')!r}: no recorded read_px/base_magnification/level_magnification "
            "in the slides table; re-materialize its slide_tiles partition"
        )

    @property
    def side(self) -> float:
        """Level-0 pixels per tile side."""
        return self.read_px * self.downsample

    def square(self, col: int, row: int) -> tuple[float, float, float, float]:
        """Level-0 ``(x0, y0, x1, y1)`` of the tile at grid ``(col, row)``."""
        s = self.side
        return col * s, row * s, (col + 1) * s, (row + 1) * s


def to_geojson(
    carto: Cartography, geometry: TileGeometry | float, name: str = "", dropped: pd.DataFrame | None = None
) -> dict:
    """Tile calls as a QuPath-readable GeoJSON FeatureCollection in level-0 pixel coordinates.

    Each tissue tile is a square polygon with its combination as QuPath classification and
    one 0/1 measurement per trait (File > Import objects in QuPath, over the same slide).  ``geometry``: the
    tiler's recorded geometry (:class:`TileGeometry`), or a level-0 tile side in pixels.  Tiles QC
    dropped (``dropped``: ``col``, ``row``, ``qc`` and the measures ``pen``, ``blur``, ``dark``) follow, classified
    ``QC dropped`` with the reason as property ``qc`` and the measures as measurements.
    """
    if not isinstance(geometry, TileGeometry):
        geometry = TileGeometry(1, float(geometry))
    colours = combination_colours(len(carto.traits))
    names = combination_names(carto.traits)

    def tile(col: int, row: int, classification: dict, measurements: dict, **extra) -> dict:
        """One tile's square as a QuPath tile object."""
        x0, y0, x1, y1 = geometry.square(col, row)
        return {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "properties": {
                "objectType": "tile",
                "name": f"{name} col {col} row {row}",
                "classification": classification,
                **extra,
                "measurements": measurements,
            },
        }

    features = []
    rows, cols = np.nonzero(carto.mask)
    codes: np.ndarray | list[int] = combination_codes(carto.tensor[:, rows, cols].T.astype(bool)) if len(rows) else []
    for r, c, code in zip(rows, cols, codes):
        klass = (
            {"name": names[code - 1], "color": [int(v) for v in colours[code - 1]]}
            if code
            else {"name": "negative", "color": list(NEGATIVE_RGB)}
        )
        calls = {t: int(carto.tensor[k, r, c]) for k, t in enumerate(carto.traits)}
        features.append(tile(int(c), int(r), klass, calls))
    dropped_class = {"name": "QC dropped", "color": list(QC_DROPPED_RGB)}
    for t in dropped.itertuples(index=False) if dropped is not None else ():
        measures = {k: float(getattr(t, k)) for k in ("pen", "blur", "dark") if pd.notna(getattr(t, k, None))}
        features.append(tile(int(t.col), int(t.row), dropped_class, measures, qc=str(t.qc)))
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    carto: Cartography,
    path: str | Path,
    geometry: TileGeometry | float,
    name: str = "",
    dropped: pd.DataFrame | None = None,
) -> Path:
    target = as_path(path)
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(to_geojson(carto, geometry, name, dropped)))
    return target
