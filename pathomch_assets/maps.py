"""Maps and HTI of a run's slides: the ``slide_cartography`` procedure (SPEC 3.8-3.9).

Per cohort: the traits with a usable ensemble, the validity gate over them (:func:`trait_gate`) and the trait
sets that get an HTI (:func:`trait_sets`); per slide: its ensemble tile calls (``slide_predictions``,
:func:`slide_calls`) to the tensor cartography (``.npz``), a QuPath GeoJSON, the heterogeneity picture and the
``hti``, ``hti_stats`` and ``hti_combinations`` rows (:func:`map_slides`).  The settings behind them
(:func:`analysis_settings`, :func:`hti_settings`) are part of the code versions of ``slide_cartography`` and
``survival_analysis``.  The science is in :mod:`~pathomch_assets.cartography` and
:mod:`~pathomch_assets.heterogeneity`; this module reads and writes.  Nothing here imports Dagster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from . import layout
from .cartography import (
    Cartography,
    TileGeometry,
    build_cartography,
    heterogeneity_png,
    hti_trait_sets,
    set_results,
    soft_calls,
    write_geojson,
)
from .config import PathomchConfig
from .heterogeneity import BOOTSTRAP, KERNEL_SHARE, KERNEL_SIGMAS, NEIGHBOUR_WEIGHT, PERMUTATIONS
from .predictions import usable_traits
from .qc import dropped_tiles
from .tables import read_parquet
from .validity import Gate, apply_gate

log = logging.getLogger(__name__)

#: the per-slide tables of the HTI (cleared with the slide's map files when it has no calls)
HTI_TABLES = ("hti", "hti_stats", "hti_combinations")
#: slides of a run whose maps are drawn in the asset's gallery
GALLERY_SIZE = 6


def hti_settings(cfg: PathomchConfig) -> dict:
    """Settings behind the HTI statistics (part of the cartography and survival code versions)."""
    return {
        "bootstrap": BOOTSTRAP,
        "permutations": PERMUTATIONS,
        "neighbour_weight": NEIGHBOUR_WEIGHT,
        "kernel_sigmas": list(KERNEL_SIGMAS),
        "kernel_share": KERNEL_SHARE,
        "robust": "member mean probability, Gaussian kernel of leave-one-out width, then confidence-weighted 3x3",
        "ensemble": cfg.ensemble.model_dump(mode="json"),
    }


def analysis_settings(cfg: PathomchConfig, cohort: str) -> dict:
    """The settings that decide which of ``cohort``'s trait sets get an HTI (part of its cartography and survival
    code versions; another cohort's settings are not)."""
    c = cfg.cohorts[cohort]
    return {cohort: [c.traits, c.survival_pairs, c.hti_sets]}


def trait_gate(cfg: PathomchConfig, cohort: str, store) -> Gate:
    """The validity gate over the cohort's traits with a usable ensemble (``validity.apply_gate`` of the
    cohort's ``trait_validity`` rows: one small table, read once per cohort and run)."""
    return apply_gate(cohort, usable_traits(cfg, cohort), store.read("trait_validity", "cohort = ?", [cohort]))


def trait_sets(cfg: PathomchConfig, cohort: str, store) -> tuple[list[list[str]], list[list[str]], str | None]:
    """The cohort's trait sets for the HTI, (kept, dropped, note): ``cartography.hti_trait_sets`` of the traits
    with a usable ensemble (``ensemble.json``), the validity gate (``trait_validity``) and the ensemble's test
    AUCs (``model_metrics``)."""
    test = store.read("model_metrics", "cohort = ? AND model = 'ensemble' AND eval_set = 'test'", [cohort])
    feeds = trait_gate(cfg, cohort, store).feeds
    return hti_trait_sets(cohort, cfg.cohorts[cohort], usable_traits(cfg, cohort), feeds, test)


def analysis_sets(cfg: PathomchConfig, cohort: str, store) -> list[list[str]]:
    """The trait sets of :func:`trait_sets` that get an HTI (every trait with a usable ensemble); logs the others."""
    kept, _, note = trait_sets(cfg, cohort, store)
    if note:
        log.warning(note)
    return kept


def slide_calls(cfg: PathomchConfig, cohort: str, slide_id: str) -> pd.DataFrame | None:
    """Ensemble tile calls of one slide (``col, row, trait, call`` and, where scoring wrote them, ``votes``
    and the members' mean probability ``p``), or None if it has none."""
    path = layout.slide_calls_file(cfg, cohort, slide_id)
    if not path.exists():
        return None
    df = read_parquet(path)
    return df[[c for c in ("col", "row", "trait", "call", "votes", "p") if c in df.columns]]


@dataclass
class MapRun:
    """What one ``slide_cartography`` run made: ``hti`` and ``hti_stats`` rows, notes on traits left out, up to
    :data:`GALLERY_SIZE` (slide, map of its first trait set, ``hti_stats`` row) to draw, slides without calls."""

    rows: list[dict] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gallery: list[tuple[str, Cartography, dict]] = field(default_factory=list)
    skipped: int = 0


@dataclass
class CohortMaps:
    """What every slide of a cohort is mapped with: traits with a usable ensemble, the gate, the HTI sets, the
    slides' ``slides`` rows (by slide id) and their QC-dropped tiles."""

    cohort: str
    traits: list[str]
    gate: Gate
    sets: list[list[str]]
    slides: pd.DataFrame
    qc_dropped: pd.DataFrame


def map_slides(cfg: PathomchConfig, store, groups: dict[str, list[str]], warn: Callable[[str], object]) -> MapRun:
    """Map the slides of ``groups`` (cohort -> slide ids): per slide its cartography files and HTI rows
    (:func:`map_slide`); ``warn`` gets each note on traits left out (gate, missing ensembles)."""
    run = MapRun()
    for cohort, sids in groups.items():
        gate = trait_gate(cfg, cohort, store)  # maps and HTI of the traits that feed them (trait_validity)
        sets, _, note = trait_sets(cfg, cohort, store)
        for n in (gate.note, note):
            if n:
                warn(n)
                run.notes.append(n)
        keys = [f"{cohort}/{s}" for s in sids]  # these slides' partition files only
        slides = store.read("slides", "cohort = ?", [cohort], partitions=keys).set_index("slide_id")
        qc_dropped = dropped_tiles(store.read("tiles", "cohort = ?", [cohort], partitions=keys))  # on the maps
        ctx = CohortMaps(cohort, usable_traits(cfg, cohort), gate, sets, slides, qc_dropped)
        for sid in sids:
            map_slide(cfg, store, ctx, sid, run)
    store.ensure_views()
    return run


def clear_slide(cfg: PathomchConfig, store, cohort: str, slide_id: str, files: bool = True) -> None:
    """Remove the slide's HTI rows and (``files``) its cartography files: no result of earlier calls stands."""
    for table in HTI_TABLES:
        store.delete(table, f"{cohort}/{slide_id}")
    for ext in ("npz", "geojson", "png") if files else ():
        layout.cartography_file(cfg, cohort, slide_id, ext).unlink(missing_ok=True)


def map_slide(cfg: PathomchConfig, store, ctx: CohortMaps, sid: str, run: MapRun) -> None:
    """One slide: cartography (``.npz``, every usable trait, with a ``feeds`` flag), GeoJSON and picture of the
    traits that feed maps, and the HTI rows of each trait set; a slide without calls is cleared and counted."""
    cohort, traits = ctx.cohort, ctx.traits
    drop = ctx.qc_dropped[ctx.qc_dropped["slide_id"] == sid]
    g = slide_calls(cfg, cohort, sid)
    g = None if g is None or not traits else g[g["trait"].isin(traits)]
    if g is None:
        clear_slide(cfg, store, cohort, sid)
        run.skipped += 1
        return
    carto = build_cartography(g, traits)
    carto.save(layout.cartography_file(cfg, cohort, sid), feeds=ctx.gate.feeds)
    shown = carto.subset(ctx.gate.feeds)
    # the level and read size the tiler used (older rows: the settings' estimate)
    geometry = TileGeometry.recorded(ctx.slides.loc[sid], cfg.tiling.tile_px, cfg.tiling.magnification)
    write_geojson(shown, layout.cartography_file(cfg, cohort, sid, "geojson"), geometry, sid, drop)
    soft, threshold = soft_calls(cfg, g, carto)
    png = layout.cartography_file(cfg, cohort, sid, "png")
    if not ctx.sets:  # no trait set with usable ensembles: the map of the usable traits, no HTI
        clear_slide(cfg, store, cohort, sid, files=False)
        heterogeneity_png(shown, png, title=sid, dropped=drop)
        return
    rows, stats, combos = [], [], []
    for tset in ctx.sets:
        idx = [traits.index(t) for t in tset]
        sub = Cartography(tset, carto.tensor[idx], carto.mask)
        h, st, cb = set_results(cohort, sid, tset, sub, soft[idx], threshold)
        rows.append({**h, **ctx.gate.flags(tset)})
        stats.append(st)
        combos.append(cb)
    store.write("hti", f"{cohort}/{sid}", pd.DataFrame(rows).assign(n_tiles_qc_dropped=len(drop)))
    store.write("hti_stats", f"{cohort}/{sid}", pd.DataFrame(stats))
    store.write("hti_combinations", f"{cohort}/{sid}", pd.concat(combos, ignore_index=True))
    run.stats.extend(stats)
    first = Cartography(ctx.sets[0], carto.tensor[[traits.index(t) for t in ctx.sets[0]]], carto.mask)
    heterogeneity_png(first, png, title=f"{sid}  HTI {rows[0]['hti']:.2f}", dropped=drop)
    run.rows.extend(rows)
    if len(run.gallery) < GALLERY_SIZE:
        run.gallery.append((sid, first, stats[0]))
