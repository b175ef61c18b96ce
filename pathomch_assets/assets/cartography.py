"""Tensor molecular cartography and HTI per slide (SPEC 3.8-3.9)."""

import dagster as dg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..cartography import Cartography, build_cartography, heterogeneity_png, plot_heterogeneity_map, write_geojson
from ..config import PathomchConfig
from ..heterogeneity import hti_from_calls
from ..partitions import SLIDES, by_cohort
from ..reporting import figure_file, md_table
from ..resources import PathomchResource
from ..storage import read_parquet, safe_stem
from ..versions import code_version
from .models import model_deps
from .scoring import slide_calls_path

ALL = dg.AllPartitionMapping()


def analysis_sets(cfg: PathomchConfig, cohort: str, store) -> list[list[str]]:
    """Trait sets for HTI: the survival pairs (default: the two traits with the best ensemble test
    AUC), then any configured larger sets."""
    c = cfg.cohorts[cohort]
    pairs = [list(p) for p in c.survival_pairs]
    if not pairs and len(c.traits) >= 2:
        m = store.read("model_metrics", "cohort = ? AND model = 'ensemble' AND eval_set = 'test'", [cohort])
        best = m.sort_values(["auc", "trait"], ascending=[False, True])["trait"].tolist()[:2]
        pairs = [best] if len(best) == 2 else [c.traits[:2]]
    return pairs + [list(s) for s in c.hti_sets if list(s) not in pairs]


def cartography_file(cfg: PathomchConfig, cohort: str, slide_id: str, ext: str = "npz"):
    return cfg.maps_dir / cohort / f"{safe_stem(slide_id)}.{ext}"


def slide_calls(cfg: PathomchConfig, cohort: str, slide_id: str) -> pd.DataFrame | None:
    """Ensemble tile calls of one slide (``col, row, trait, call``), or None if it has none."""
    path = slide_calls_path(cfg, cohort, slide_id)
    return read_parquet(path, columns=["col", "row", "trait", "call"]) if path.exists() else None


def analysis_settings(cfg: PathomchConfig) -> dict:
    """The settings that decide which trait sets get an HTI (part of the cartography and survival code versions)."""
    return {name: [c.traits, c.survival_pairs, c.hti_sets] for name, c in cfg.cohorts.items()}


def build(cfg: PathomchConfig, slide_predictions_asset, trait_model_asset, ensemble_asset):
    @dg.asset(
        partitions_def=SLIDES, backfill_policy=dg.BackfillPolicy.single_run(), group_name="cartography",
        kinds={"numpy", "geojson"}, code_version=code_version(cfg.tiling.tile_px, analysis_settings(cfg)),
        deps=[slide_predictions_asset, *model_deps(trait_model_asset, ensemble_asset)],
        description="Per slide: the tensor molecular cartography (traits x rows x cols ensemble tile calls "
        "with a tissue mask, .npz), a heterogeneity map (.png, with a legend of trait combinations), a QuPath "
        "GeoJSON of the tile calls, and the HTI of each analysed trait set (`hti` table). Maps of a sample of "
        "slides are shown here.",
    )
    def slide_cartography(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        gallery, rows_all, skipped = [], [], 0
        for cohort, sids in by_cohort(context.partition_keys).items():
            traits = cfg.cohorts[cohort].traits
            sets = analysis_sets(cfg, cohort, store)
            slides = store.read("slides", "cohort = ?", [cohort]).set_index("slide_id")
            for sid in sids:
                g = slide_calls(cfg, cohort, sid)
                if g is None:
                    store.delete("hti", f"{cohort}/{sid}")
                    for ext in ("npz", "geojson", "png"):
                        cartography_file(cfg, cohort, sid, ext).unlink(missing_ok=True)
                    skipped += 1
                    continue
                carto = build_cartography(g, traits)
                carto.save(cartography_file(cfg, cohort, sid))
                s = slides.loc[sid]
                level0_px = cfg.tiling.tile_px * float(s["base_magnification"]) / cfg.tiling.magnification
                write_geojson(carto, cartography_file(cfg, cohort, sid, "geojson"), level0_px, sid)
                rows = []
                for tset in sets:
                    idx = [traits.index(t) for t in tset]
                    sub = Cartography(tset, carto.tensor[idx], carto.mask)
                    c = sub.calls()
                    rows.append({"cohort": cohort, "traits": "+".join(tset), "slide_id": sid, "patient_id": sid[:12],
                                 "hti": hti_from_calls(c), "n_tiles": int(carto.mask.sum()),
                                 "n_positive": int(c.any(axis=1).sum())})
                store.write("hti", f"{cohort}/{sid}", pd.DataFrame(rows))
                first = Cartography(sets[0], carto.tensor[[traits.index(t) for t in sets[0]]], carto.mask)
                heterogeneity_png(first, cartography_file(cfg, cohort, sid, "png"), title=f"{sid}  HTI {rows[0]['hti']:.2f}")
                rows_all.extend(rows)
                if len(gallery) < 6:
                    gallery.append((sid, first, rows[0]["hti"]))
        store.ensure_views()
        hti = pd.DataFrame(rows_all)
        meta = {"slides_mapped": int(hti["slide_id"].nunique()) if len(hti) else 0, "slides_without_calls": skipped}
        if len(hti):
            meta["hti_summary"] = md_table(hti.groupby(["cohort", "traits"])["hti"].describe().reset_index())
            meta["dagster/row_count"] = len(hti)
        if gallery:
            fig, axes = plt.subplots(2, 3, figsize=(11, 6))
            for ax in axes.flat:
                ax.axis("off")
            for ax, (sid, carto, h) in zip(axes.flat, gallery):
                plot_heterogeneity_map(carto, sid[:23], h, ax=ax)
            fig.tight_layout()
            meta.update(figure_file(fig, cfg.output_root / "figures" / "heterogeneity_maps" / f"{context.run.run_id}.png",
                                    "heterogeneity_maps", cfg.output_root))
        if len(hti) and hti["slide_id"].nunique() == 1:
            cohort, sid = hti["cohort"].iloc[0], hti["slide_id"].iloc[0]
            meta["map"] = dg.MetadataValue.path(str(cartography_file(cfg, cohort, sid, "png")))
        return dg.MaterializeResult(metadata=meta)

    @dg.asset_check(asset=slide_cartography, description="Every HTI lies in [0, 1].")
    def hti_within_unit_interval(pathomch: PathomchResource) -> dg.AssetCheckResult:
        hti = pathomch.get_store().read("hti")
        bad = hti[(hti["hti"] < 0) | (hti["hti"] > 1) | hti["hti"].isna()]
        return dg.AssetCheckResult(passed=bad.empty, metadata={"rows": len(hti), "out_of_range": len(bad)})

    return [slide_cartography], [hti_within_unit_interval]
