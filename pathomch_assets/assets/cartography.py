"""Tensor molecular cartography and HTI per slide (SPEC 3.8-3.9)."""

import zlib
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pandas as pd

from .. import layout
from ..cartography import (
    Cartography,
    TileGeometry,
    analysis_sets,  # noqa: F401  (the survival asset and check read the same trait sets from here)
    build_cartography,
    combination_names,
    heterogeneity_png,
    plot_heterogeneity_map,
    trait_gate,
    trait_sets,
    write_geojson,
)
from ..config import PathomchConfig
from ..ensemble import usable_traits
from ..heterogeneity import (
    BOOTSTRAP,
    KERNEL_SHARE,
    KERNEL_SIGMAS,
    NEIGHBOUR_WEIGHT,
    PERMUTATIONS,
    combination_codes,
    hti_stats,
    robust_calls,
)
from ..partitions import ALL, configured_by_cohort, model_deps, slides
from ..plots import pyplot
from ..qc import dropped_tiles
from ..reporting import figure_file, md_table
from ..resources import PathomchResource
from ..slides import patient_id
from ..tables import read_parquet
from ..versions import code_version

if TYPE_CHECKING:  # Dagster's type of a metadata value (ints, strings, MetadataValue); not exported by `dagster`
    from dagster._core.definitions.metadata import RawMetadataValue


def slide_calls(cfg: PathomchConfig, cohort: str, slide_id: str) -> pd.DataFrame | None:
    """Ensemble tile calls of one slide (``col, row, trait, call`` and, where scoring wrote them, ``votes``
    and the members' mean probability ``p``), or None if it has none."""
    path = layout.slide_calls_file(cfg, cohort, slide_id)
    if not path.exists():
        return None
    df = read_parquet(path)
    return df[[c for c in ("col", "row", "trait", "call", "votes", "p") if c in df.columns]]


def soft_calls(cfg: PathomchConfig, calls: pd.DataFrame, carto: Cartography) -> tuple[np.ndarray, float]:
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


def set_results(
    cohort: str, sid: str, tset: list[str], sub: Cartography, soft: np.ndarray, threshold
) -> tuple[dict, dict, pd.DataFrame]:
    """The ``hti``, ``hti_stats`` rows and the ``hti_combinations`` rows of one slide and trait set."""
    c = sub.calls()
    stats = hti_stats(sub.tensor, sub.mask, soft, threshold, seed=zlib.crc32(f"{sid}|{'+'.join(tset)}".encode()))
    rc = robust_calls(soft, sub.mask, threshold)[:, sub.mask].T
    key = {"cohort": cohort, "traits": "+".join(tset), "slide_id": sid, "patient_id": patient_id(sid)}
    n_tiles = int(sub.mask.sum())
    hti_row = {**key, "hti": stats["hti"], "n_tiles": n_tiles, "n_positive": int(c.any(axis=1).sum())}
    stats_row = {
        **key,
        **{
            k: stats[k]
            for k in (
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
        },
        "n_tiles": n_tiles,
    }
    n_comb = 2 ** len(tset)
    counts = np.bincount(combination_codes(c), minlength=n_comb) if len(c) else np.zeros(n_comb, int)
    rcounts = np.bincount(combination_codes(rc), minlength=n_comb) if len(rc) else np.zeros(n_comb, int)
    pos, rpos = counts[1:].sum(), rcounts[1:].sum()
    names = ["none"] + combination_names(tset)
    combos = pd.DataFrame(
        {
            **key,
            "combination": names,
            "n_tiles": counts,
            "share": [np.nan] + [v / pos if pos else 0.0 for v in counts[1:]],
            "tissue_share": counts / max(n_tiles, 1),
            "share_robust": [np.nan] + [v / rpos if rpos else 0.0 for v in rcounts[1:]],
        }
    )
    return hti_row, stats_row, combos


def analysis_settings(cfg: PathomchConfig, cohort: str) -> dict:
    """The settings that decide which of ``cohort``'s trait sets get an HTI (part of its cartography and survival
    code versions; another cohort's settings are not)."""
    c = cfg.cohorts[cohort]
    return {cohort: [c.traits, c.survival_pairs, c.hti_sets]}


def build(
    cfg: PathomchConfig, cohort: str, slide_predictions_asset, trait_model_asset, ensemble_asset, trait_validity_asset
):
    """``cohort``'s ``slide_cartography`` (key ``<cohort>/slide_cartography``)."""

    @dg.asset(
        partitions_def=slides(cohort),
        backfill_policy=dg.BackfillPolicy.single_run(),
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"numpy", "geojson"},
        code_version=code_version(cfg.tiling.tile_px, analysis_settings(cfg, cohort), hti_settings(cfg)),
        deps=[
            slide_predictions_asset,
            dg.AssetDep(trait_validity_asset, partition_mapping=ALL),
            *model_deps(trait_model_asset, ensemble_asset),
        ],
        description="Per slide: the tensor molecular cartography (traits x rows x cols ensemble tile calls "
        "with a tissue mask, .npz, with a `feeds` flag per trait), a heterogeneity map (.png, with a legend of "
        "trait combinations), a QuPath "
        "GeoJSON of the tile calls, and the HTI of each analysed trait set (`hti` table). Beside the paper's HTI "
        "(`hti_stats`): a block-bootstrap 95% CI, a spatial p-value against random placement of the same calls "
        "(`p_spatial`, after the authors' hta package), the HTI normalised by combinations present as hta does, "
        "and a robust HTI where unsure tile calls are decided by their neighbours; the share of each trait "
        "combination per slide (`hti_combinations`). Maps of a sample of slides are shown here. Only traits that "
        "pass the validity gate (`trait_validity`) are drawn, exported and enter an HTI; with maps.include_invalid "
        "the others do too, flagged in every `hti` row (`valid`, `invalid_traits`).",
    )
    def slide_cartography(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        gallery: list[tuple[str, Cartography, dict]] = []
        rows_all, stats_all, notes = [], [], []
        groups, skipped = configured_by_cohort(context.partition_keys, cfg, context.log.warning)
        for cohort, sids in groups.items():
            traits = usable_traits(cfg, cohort)
            gate = trait_gate(cfg, cohort, store)  # maps and HTI of the traits that feed them (trait_validity)
            sets, _, note = trait_sets(cfg, cohort, store)
            for n in (gate.note, note):
                if n:
                    context.log.warning(n)
                    notes.append(n)
            keys = [f"{cohort}/{s}" for s in sids]  # these slides' partition files only
            slides = store.read("slides", "cohort = ?", [cohort], partitions=keys).set_index("slide_id")
            qc_dropped = dropped_tiles(store.read("tiles", "cohort = ?", [cohort], partitions=keys))  # on the maps
            for sid in sids:
                drop = qc_dropped[qc_dropped["slide_id"] == sid]
                g = slide_calls(cfg, cohort, sid)
                g = None if g is None or not traits else g[g["trait"].isin(traits)]
                if g is None:
                    for table in ("hti", "hti_stats", "hti_combinations"):
                        store.delete(table, f"{cohort}/{sid}")
                    for ext in ("npz", "geojson", "png"):
                        layout.cartography_file(cfg, cohort, sid, ext).unlink(missing_ok=True)
                    skipped += 1
                    continue
                carto = build_cartography(g, traits)
                carto.save(layout.cartography_file(cfg, cohort, sid), feeds=gate.feeds)
                shown = carto.subset(gate.feeds)
                # the level and read size the tiler used (older rows: the settings' estimate)
                geometry = TileGeometry.recorded(slides.loc[sid], cfg.tiling.tile_px, cfg.tiling.magnification)
                write_geojson(shown, layout.cartography_file(cfg, cohort, sid, "geojson"), geometry, sid, drop)
                soft, threshold = soft_calls(cfg, g, carto)
                if not sets:  # no trait set with usable ensembles: the map of the usable traits, no HTI
                    for table in ("hti", "hti_stats", "hti_combinations"):
                        store.delete(table, f"{cohort}/{sid}")
                    heterogeneity_png(shown, layout.cartography_file(cfg, cohort, sid, "png"), title=sid, dropped=drop)
                    continue
                rows, stats, combos = [], [], []
                for tset in sets:
                    idx = [traits.index(t) for t in tset]
                    h, st, cb = set_results(
                        cohort, sid, tset, Cartography(tset, carto.tensor[idx], carto.mask), soft[idx], threshold
                    )
                    rows.append({**h, **gate.flags(tset)})
                    stats.append(st)
                    combos.append(cb)
                store.write("hti", f"{cohort}/{sid}", pd.DataFrame(rows).assign(n_tiles_qc_dropped=len(drop)))
                store.write("hti_stats", f"{cohort}/{sid}", pd.DataFrame(stats))
                store.write("hti_combinations", f"{cohort}/{sid}", pd.concat(combos, ignore_index=True))
                stats_all.extend(stats)
                first = Cartography(sets[0], carto.tensor[[traits.index(t) for t in sets[0]]], carto.mask)
                heterogeneity_png(
                    first,
                    layout.cartography_file(cfg, cohort, sid, "png"),
                    title=f"{sid}  HTI {rows[0]['hti']:.2f}",
                    dropped=drop,
                )
                rows_all.extend(rows)
                if len(gallery) < 6:
                    gallery.append((sid, first, stats[0]))
        store.ensure_views()
        hti = pd.DataFrame(rows_all)
        meta: dict[str, RawMetadataValue] = {
            "slides_mapped": int(hti["slide_id"].nunique()) if len(hti) else 0,
            "slides_without_calls": skipped,
        }
        if notes:
            meta["left_out"] = "\n".join(notes)
        if len(hti):
            meta["hti_summary"] = md_table(hti.groupby(["cohort", "traits"])["hti"].describe().reset_index())
            meta["hti_stats_summary"] = md_table(stats_summary(pd.DataFrame(stats_all)))
            meta["dagster/row_count"] = len(hti)
        if gallery:
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
            maps_file = layout.maps_gallery_file(cfg, context.run.run_id)
            meta.update(figure_file(fig, maps_file, "heterogeneity_maps", cfg.output_root))
        if len(hti) and hti["slide_id"].nunique() == 1:
            cohort, sid = hti["cohort"].iloc[0], hti["slide_id"].iloc[0]
            meta["map"] = dg.MetadataValue.path(str(layout.cartography_file(cfg, cohort, sid, "png")))
            meta["hti_stats"] = md_table(pd.DataFrame(stats_all).drop(columns=["cohort", "slide_id", "patient_id"]))
        return dg.MaterializeResult(metadata=meta)

    return slide_cartography


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
