"""Survival by HTI of one cohort: the ``survival_analysis`` procedure (SPEC 3.10, paper Figures 4-6).

Per trait pair that gets an HTI (``maps.trait_sets``, pairs only): the survival frame from the cohort's
tables (:func:`read_survival_frame`), the ``survival`` rows and the figures of ``survival.pair_rows`` (Kaplan-Meier
panels, HTI by expression, HTI by clinical group where the clinical table allows).  The statistics are in
:mod:`~pathomch_assets.survival`; this module reads the tables and writes ``survival``; each figure goes, as it
is made, to the caller's ``show`` (the asset's: ``reporting.figure_file``).  Nothing here imports Dagster.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from . import layout
from .config import PathomchConfig
from .ingest import survival_slides
from .maps import trait_gate, trait_sets
from .plots import pyplot
from .survival import clinical_groups, pair_rows, plot_hti_by_clinical, plot_hti_by_expression, plot_km, survival_frame

#: the columns of `survival` shown in the UI
SHOWN = ["traits", "grouping", "n_low", "n_high", "logrank_p", "hazard_ratio", "c_index", "p_value", "status"]


def read_survival_frame(store, cohort: str, pair: list[str]) -> tuple[pd.DataFrame, set[str]]:
    """``survival.survival_frame`` of ``pair`` from the cohort's tables (DX1 slides: ``ingest.survival_slides``)."""
    name = "+".join(pair)
    return survival_frame(
        pair,
        store.read("labels", "cohort = ?", [cohort]),
        store.read("splits", "cohort = ? AND round = 0", [cohort]),
        survival_slides(store, cohort),
        store.read("hti", "cohort = ? AND traits = ?", [cohort, name]),
        store.read("hti_stats", "cohort = ? AND traits = ?", [cohort, name]),
        store.read("clinical", "cohort = ?", [cohort]),
    )


def km_figure(panels: list, title: str):
    """The Kaplan-Meier panels of a pair, one row per grouping kind (``survival.pair_rows``)."""
    width = max(len(p) for p in panels)
    fig, axes = pyplot().subplots(len(panels), width, figsize=(3.8 * width, 4.4 * len(panels)), squeeze=False)
    for row, panel in zip(axes, panels):
        for ax, t in zip(row, panel):
            plot_km(t, ax=ax)
        for ax in row[len(panel) :]:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def cohort_survival(
    cfg: PathomchConfig, store, cohort: str, warn: Callable[[str], object], show: Callable[..., dict]
) -> tuple[pd.DataFrame, dict]:
    """Write the cohort's ``survival`` rows (its earlier rows cleared first, so no result of earlier inputs stands
    while this runs or if it fails); returns them and the notes, counts and figure entries to show, in order.

    ``warn`` gets each note on traits left out and each grouping not tested; ``show(fig, path, label)`` saves a
    figure to its file, closes it and returns its entries (``reporting.figure_file``).
    """
    sv = cfg.survival
    rows: list[dict] = []
    meta: dict[str, object] = {}
    sets, _, note = trait_sets(cfg, cohort, store)  # traits without a usable ensemble or failing the gate left out
    if note:
        warn(note)
        meta["traits_without_ensemble"] = note
    gate = trait_gate(cfg, cohort, store)
    if gate.note:
        warn(gate.note)
        meta["validity_note"] = gate.note
    if gate.invalid:
        meta["invalid_traits"] = ", ".join(gate.invalid)  # left out, or kept by maps.include_invalid
    store.delete("survival", cohort)
    for pair in (s for s in sets if len(s) == 2):
        name = "+".join(pair)
        df, _ = read_survival_frame(store, cohort, pair)
        pair_result, panels = pair_rows(cohort, pair, df, sv.hti_split, sv.contrast_low, sv.contrast_high)
        rows += pair_result
        for r in (r for r in pair_result if r["reason"]):
            warn(f"{cohort} {name}: {r['grouping']}: not tested: {r['reason']}")
        km = km_figure(panels, f"{cohort}: {name} (n = {len(df)})")
        meta.update(show(km, layout.survival_figure_file(cfg, cohort, name, "kaplan_meier"), f"kaplan_meier_{name}"))
        meta[f"patients_{name}"] = len(df)
        by_expression = plot_hti_by_expression(df, pair)
        path = layout.survival_figure_file(cfg, cohort, name, "hti_by_expression")
        meta.update(show(by_expression, path, f"hti_by_expression_{name}"))
        groups, why = clinical_groups(df, cfg.cohorts[cohort].clinical)
        if groups:
            path = layout.survival_figure_file(cfg, cohort, name, "hti_by_clinical")
            meta.update(show(plot_hti_by_clinical(df, groups), path, f"hti_by_clinical_{name}"))
        if why:
            warn(f"{cohort} {name}: {why}")
            meta[f"hti_by_clinical_{name}_note"] = why
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["cohort", "traits", *SHOWN[1:], "n_patients"])
    store.write("survival", cohort, table)
    store.ensure_views()
    return table, meta
