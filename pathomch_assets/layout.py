"""Where every output lives: one function per file kind, all under the configuration's ``data_dir``.

The folders right below ``data_dir`` are the configuration's (``PathomchConfig.tiles_dir``, ``models_dir``,
``tables_dir``, ``maps_dir``); every file the assets write below them is named here, except three kinds named by
the module that writes them: the files inside one model's folder (``model.keras``, ``history.csv``, ``model.json``:
``training.save_model``), a table's partition files (``tables.TableStore``) and Dagster's own ``dagster_home``
(``runner``).  Below ``data_dir`` (``output_root``):

- ``tiles/<cohort>/<slide>.tfrecord``: the slide's tissue tiles (``slide_tiles``)
- ``models/<cohort>/<trait>/round_<i>/``: one trained model with its history (``trait_model``)
- ``models/<cohort>/<trait>/ensemble.json``: the trait's ensemble members and vote (``ensemble``)
- ``predictions/<cohort>/<trait>/round_<i>.parquet``: every tile's probability by one model (``trait_model``)
- ``predictions/<cohort>/slides/<slide>.parquet``: a slide's ensemble tile calls (``slide_predictions``)
- ``cartography/<cohort>/<slide>.{npz,geojson,png}``: map, QuPath GeoJSON, picture (``slide_cartography``)
- ``figures/training_curves/<cohort>/<trait>/round_<i>.png``: a model's training curve (``trait_model``)
- ``figures/<cohort>_figure_2_scores.png``: paper Figure 2 (``model_evaluation``)
- ``figures/<cohort>_trait_validity.png``: held-out AUC and interval per trait against ``maps.min_auc``
  (``trait_validity``)
- ``figures/<cohort>_label_share_by_site.png``: share of high labels per site and trait (``site_effects``)
- ``figures/heterogeneity_maps/<run id>.png``: maps of a sample of a run's slides (``slide_cartography``)
- ``survival/<cohort>_<A+B>_{kaplan_meier,hti_by_expression,hti_by_clinical}.png`` (``survival_analysis``)
- ``tables/<table>/<partition>.parquet``: the result tables (``tables.TableStore``), DuckDB views at
  ``duckdb_path``

Slide file names go through ``files.safe_stem`` (any slide id gives a valid, bounded name).  Round names
(``round_<i>``) are built and parsed here only.
"""

from __future__ import annotations

from pathlib import Path

from .files import as_path, safe_stem

ROUND_PREFIX = "round_"
ENSEMBLE_FILE = "ensemble.json"


def round_name(index: int) -> str:
    """The name of training round ``index`` (partition key, ``model`` column, model folder).

    Examples
    --------
    >>> round_name(3)
    'round_3'
    """
    return f"{ROUND_PREFIX}{index}"


def round_index(name: str) -> int:
    """The index of a round name; ``ValueError`` for any other name (``ensemble``, ``mean_of_rounds``).

    Examples
    --------
    >>> round_index("round_3")
    3
    """
    if not is_round(name):
        raise ValueError(f"{name!r} is not a round name (expected {ROUND_PREFIX}<number>)")
    return int(name[len(ROUND_PREFIX) :])


def is_round(name: str) -> bool:
    """Whether ``name`` names one training round (not the ensemble or a summary of rounds).

    Examples
    --------
    >>> [is_round(m) for m in ("round_0", "ensemble", "mean_of_rounds")]
    [True, False, False]
    """
    return name.startswith(ROUND_PREFIX) and name[len(ROUND_PREFIX) :].isdigit()


def tile_file(cfg, cohort: str, slide_id: str) -> Path:
    """The slide's tile store (TFRecord of JPEG tiles)."""
    return tile_path(cfg.tiles_dir, cohort, slide_id)


def tile_path(tiles_dir, cohort: str, slide_id: str) -> Path:
    """:func:`tile_file` under a given tiles folder (tools and tests without a configuration)."""
    return as_path(tiles_dir) / cohort / f"{safe_stem(slide_id)}.tfrecord"


def model_dir(cfg, cohort: str, trait: str, model: str) -> Path:
    """The folder of one trained model (``model.keras``, its history and settings)."""
    return as_path(cfg.models_dir) / cohort / trait / model


def ensemble_file(cfg, cohort: str, trait: str) -> Path:
    """The trait's ensemble: members, validation AUCs, excluded rounds, vote.  Absent: no usable ensemble."""
    return as_path(cfg.models_dir) / cohort / trait / ENSEMBLE_FILE


def predictions_file(cfg, cohort: str, trait: str, model: str) -> Path:
    """Every tile's probability by one model in one file (``slide_id, col, row, p``), as stored before
    :func:`member_predictions_dir`: still read where no per-slide files are."""
    return cfg.output_root / "predictions" / cohort / trait / f"{model}.parquet"


def member_predictions_dir(cfg, cohort: str, trait: str, model: str) -> Path:
    """One model's tile probabilities, one file per slide (``<slide_id>.parquet``: ``slide_id, col, row, p,
    tiles_digest``), so that scoring one slide reads one file per member (``predictions.read_member``)."""
    return cfg.output_root / "predictions" / cohort / trait / model


def member_predictions_file(cfg, cohort: str, trait: str, model: str, slide_id: str) -> Path:
    """One slide's file in :func:`member_predictions_dir`."""
    return member_predictions_dir(cfg, cohort, trait, model) / f"{safe_stem(slide_id)}.parquet"


def slide_calls_file(cfg, cohort: str, slide_id: str) -> Path:
    """One slide's ensemble tile calls of every trait with a usable ensemble (``col, row, trait, call, votes, p``)."""
    return cfg.output_root / "predictions" / cohort / "slides" / f"{safe_stem(slide_id)}.parquet"


def cartography_file(cfg, cohort: str, slide_id: str, ext: str = "npz") -> Path:
    """The slide's tensor cartography (``npz``), QuPath GeoJSON (``geojson``) or picture (``png``)."""
    return cfg.maps_dir / cohort / f"{safe_stem(slide_id)}.{ext}"


def training_curve_file(cfg, cohort: str, trait: str, model: str) -> Path:
    return cfg.output_root / "figures" / "training_curves" / cohort / trait / f"{model}.png"


def scores_figure_file(cfg, cohort: str) -> Path:
    """Paper Figure 2: ensemble slide scores by label."""
    return cfg.output_root / "figures" / f"{cohort}_figure_2_scores.png"


def validity_figure_file(cfg, cohort: str) -> Path:
    """The validity gate's figure: held-out AUC with its interval per trait, ``maps.min_auc`` marked."""
    return cfg.output_root / "figures" / f"{cohort}_trait_validity.png"


def site_effects_figure_file(cfg, cohort: str) -> Path:
    """Share of high labels per tissue source site, per trait."""
    return cfg.output_root / "figures" / f"{cohort}_label_share_by_site.png"


def maps_gallery_file(cfg, run_id: str) -> Path:
    return cfg.output_root / "figures" / "heterogeneity_maps" / f"{run_id}.png"


def survival_figure_file(cfg, cohort: str, traits: str, figure: str) -> Path:
    """``figure``: ``kaplan_meier``, ``hti_by_expression`` or ``hti_by_clinical`` of a trait set (``A+B``)."""
    return cfg.output_root / "survival" / f"{cohort}_{traits}_{figure}.png"
