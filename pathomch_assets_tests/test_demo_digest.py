"""The demo digest (``demo_digest.py``) on small frames: what it ignores, and how a changed result reads."""

import copy

import numpy as np
import pandas as pd
import pytest

from pathomch_assets import layout
from pathomch_assets.config import DEMO_CONFIG, load_config
from pathomch_assets.tables import SCHEMAS

from . import demo_digest as dd


def metrics(auc=0.912345678, n=40):
    return pd.DataFrame(
        {
            "cohort": ["brca", "brca"],
            "trait": ["MKI67", "MKI67"],
            "model": ["ensemble", "ensemble"],
            "eval_set": ["test", "ood_near"],
            "auc": [auc, 0.61],
            "n_slides": [n, 45],
        }
    )


def test_rows_are_sorted_floats_rounded_and_run_specific_columns_left_out():
    a = dd.table_digest(metrics(), "model_metrics")
    shuffled = metrics(auc=0.912345678 + 1e-12).iloc[::-1]
    assert dd.table_digest(shuffled, "model_metrics") == a
    assert dd.canonical(0.1234564999) == dd.canonical(0.1234565001 - 2e-10) == 0.123456
    assert dd.canonical(np.float32(np.nan)) is None and dd.canonical(-0.0) == 0.0
    slides = pd.DataFrame({"cohort": ["brca"], "slide_id": ["s1"], "path": ["/x/root/data/s1.svs"], "seconds": [0.1]})
    b = dd.table_digest(slides, "slides", root="/x/root")
    assert b == dd.table_digest(slides.assign(path="/y/data/s1.svs", seconds=9.0), "slides", root="/y")
    assert b["rows"] == [["brca", "s1", "<root>/data/s1.svs"]]


def test_a_changed_value_names_the_table_row_column_and_how_much():
    old = dd.table_digest(metrics(), "model_metrics")
    new = dd.table_digest(metrics(auc=0.85), "model_metrics")
    lines = dd.table_differences("model_metrics", old, new)
    assert lines[0] == "table model_metrics:"
    assert "  columns with other values: ['auc']" in lines
    assert "  row brca/MKI67/ensemble/test: auc 0.912346 -> 0.85 (-0.062346, -6.83%)" in lines
    assert dd.table_differences("model_metrics", old, old) == []


def test_a_large_table_names_the_groups_that_differ(monkeypatch):
    monkeypatch.setattr(dd, "FULL_ROWS", 2)
    hti = pd.DataFrame(
        {"cohort": "brca", "traits": "A+B", "slide_id": ["s1", "s2", "s3"], "hti": [0.1, 0.2, 0.3], "n_tiles": 9}
    )
    old = dd.table_digest(hti, "hti")
    new = dd.table_digest(hti.assign(hti=[0.1, 0.25, 0.3]), "hti")
    assert "rows" not in old
    lines = dd.table_differences("hti", old, new)
    assert "  1 of 3 groups (cohort/traits/slide_id) differ: brca/A+B/s2" in lines
    assert "    hti min/mean/max: [0.1, 0.2, 0.3] -> [0.1, 0.216667, 0.3]" in lines


def test_figures_are_read_from_png_headers_and_every_layout_figure_has_its_data(tmp_path):
    from PIL import Image

    Image.new("RGB", (30, 20)).save(tmp_path / "x.png")
    assert dd.png_size(tmp_path / "x.png") == (30, 20)
    (tmp_path / "y.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="y.png: not a PNG"):
        dd.png_size(tmp_path / "y.png")
    # every figure layout.py places is one FIGURE_DATA says the data of
    cfg = load_config(DEMO_CONFIG, check_files=False)
    paths = [
        layout.cartography_file(cfg, "brca", "TCGA-A1-0MX0-01Z-00-DX1.3A750380", "png"),
        layout.training_curve_file(cfg, "brca", "miR-17-5p", "round_0"),
        layout.scores_figure_file(cfg, "brca"),
        layout.validity_figure_file(cfg, "brca"),
        layout.site_effects_figure_file(cfg, "brca"),
        layout.maps_gallery_file(cfg, "50802ec9-d10d-416f-b7ff-31291e79bbca"),
        *(
            layout.survival_figure_file(cfg, "brca", "MKI67+miR-17-5p", f)
            for f in ("kaplan_meier", "hti_by_expression", "hti_by_clinical")
        ),
    ]
    kinds = {dd.figure_kind(dd.figure_name(p.relative_to(cfg.output_root).as_posix())) for p in paths}
    assert None not in kinds and kinds == set(dd.FIGURE_DATA)
    assert all(set(data) <= set(SCHEMAS) | {"histories"} for data in dd.FIGURE_DATA.values())


def test_a_figure_gone_resized_or_drawn_from_changed_data_is_a_difference():
    base = {
        "significant_digits": dd.SIGNIFICANT,
        "versions": {},
        "tables": {},
        "histories": {},
        "figures": {"figures/brca_trait_validity.png": [600, 400]},
        "figure_data": {"figures/*_trait_validity.png": {"draws": ["trait_validity"], "hash": "a"}},
    }
    assert dd.differences(base, copy.deepcopy(base)) == []
    slightly = copy.deepcopy(base)
    slightly["figures"]["figures/brca_trait_validity.png"] = [590, 410]  # another FreeType's text extents
    assert dd.differences(base, slightly) == []
    new = copy.deepcopy(base)
    new["figures"] = {"figures/brca_trait_validity.png": [600, 800], "figures/brca_new.png": [10, 10]}
    new["figure_data"]["figures/*_trait_validity.png"]["hash"] = "b"
    new["versions"] = {"matplotlib": "9.0"}
    assert dd.differences(base, new) == [
        "figure figures/brca_new.png: new",
        "figure figures/brca_trait_validity.png: 600x400 px -> 600x800 px",
        "figure figures/brca_new.png: no FIGURE_DATA entry says what it draws",
        "figures figures/*_trait_validity.png: the data they draw (trait_validity) changed",
        "libraries differ from the stored digest's: matplotlib None -> 9.0",
    ]


def test_the_stored_digest_covers_every_table_of_the_schema():
    stored = dd.load()
    assert set(stored["tables"]) == set(SCHEMAS) and stored["significant_digits"] == dd.SIGNIFICANT
    assert {dd.figure_kind(name) for name in stored["figures"]} == set(dd.FIGURE_DATA)
