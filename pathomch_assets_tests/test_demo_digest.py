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
    # the machine it was made on, and the tables that depend on training as the asset graph says today
    assert set(stored["signature"]) == set(dd.signature()) and stored["training_derived"] == dd.training_derived()


# --------------------------------------------------------------------------- another machine
SIGNATURE = {
    "machine": "x86_64",
    "cpu_model": "AMD EPYC",
    "cpu_flags": "sse4_2 avx avx2 fma avx512f avx512bw avx512_bf16",
    "cpus": 2,
    "libraries": {"tensorflow-cpu": "2.21.0", "keras": "3.15.1", "numpy": "2.4.6"},
    "env": {},
}
AVX2_16 = {**SIGNATURE, "cpu_model": "Intel Xeon", "cpu_flags": "sse4_2 avx avx2 fma", "cpus": 16}


def labels(flip=False):
    return pd.DataFrame(
        {
            "cohort": "brca",
            "trait": "MKI67",
            "patient_id": ["TCGA-A1-0001", "TCGA-A1-0002", "TCGA-A1-0003"],
            "percentile": [0.1, 0.5, 0.9],
            "label": [0, 1 if flip else 0, 1],
        }
    )


def hti(values=(0.1, 0.2, 0.3)):
    return pd.DataFrame({"cohort": "brca", "traits": "A+B", "slide_id": ["s1", "s2", "s3"], "hti": list(values)})


def run(signature=SIGNATURE, auc=0.912345678, flip=False, hti_values=(0.1, 0.2, 0.3), history="a1"):
    """A digest of a small demo: a table from before training (labels) and two trained ones, one stored whole."""
    return {
        "significant_digits": dd.SIGNIFICANT,
        "versions": {},
        "signature": signature,
        "training_derived": ["hti", "model_metrics", "slide_scores"],
        "tables": {
            "labels": dd.table_digest(labels(flip), "labels"),
            "model_metrics": dd.table_digest(metrics(auc), "model_metrics"),
            "hti": dd.table_digest(hti(hti_values), "hti"),
        },
        "histories": {"models/brca/MKI67/round_0/history.csv": history},
        "figures": {"figures/brca_figure_2_scores.png": [600, 400]},
        "figure_data": {"figures/*_figure_2_scores.png": {"draws": ["slide_scores", "labels"], "hash": history}},
    }


@pytest.fixture
def grouped(monkeypatch):
    monkeypatch.setattr(dd, "FULL_ROWS", 2)  # hti (3 rows) stored as group hashes, as the demo's large tables are


def test_same_signature_a_changed_training_derived_value_fails(grouped):
    result = dd.compare(run(), run(auc=0.9123, hti_values=(0.1, 0.2, 0.3001), history="b2"))
    assert result.mode == "exact" and result.reasons == []
    assert "  row brca/MKI67/ensemble/test: auc 0.912346 -> 0.9123 (-4.6e-05, -0.01%)" in result.lines
    assert "  1 of 3 groups (cohort/traits/slide_id) differ: brca/A+B/s3" in result.lines
    assert "training histories differ (1): models/brca/MKI67/round_0/history.csv" in result.lines
    assert result.header() == "demo digest: exact comparison (this machine's signature is the stored digest's)"


def test_another_signature_the_same_change_within_tolerance_passes_and_says_why(grouped):
    result = dd.compare(run(), run(AVX2_16, auc=0.9123, hti_values=(0.1, 0.2, 0.3001), history="b2"))
    assert result.mode == "across machines" and result.lines == []
    assert result.reasons == [
        "cpu_flags: only stored ['avx512_bf16', 'avx512bw', 'avx512f'], only here []",
        "cpu_model: 'AMD EPYC' -> 'Intel Xeon'",
        "cpus: 2 -> 16",
    ]
    assert result.tolerated == ["hti", "model_metrics", "training histories"]
    header = result.header()
    assert header.startswith("demo digest: comparison across machines") and "cpus: 2 -> 16" in header
    assert "column means within 10%, AUCs within 0.1" in header
    newer_tf = {**SIGNATURE, "libraries": {**SIGNATURE["libraries"], "tensorflow-cpu": "2.22.0"}}
    assert dd.compare(run(), run(newer_tf, auc=0.9123)).reasons == ["libraries tensorflow-cpu: 2.21.0 -> 2.22.0"]
    assert dd.compare(run(), run({**SIGNATURE, "env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}})).reasons == [
        "env ONEDNN_MAX_CPU_ISA: None -> AVX2"
    ]


def test_another_signature_a_changed_table_from_before_training_fails(grouped):
    result = dd.compare(run(), run(AVX2_16, flip=True))
    assert result.mode == "across machines"
    assert result.lines == [
        "table labels:",
        "  columns with other values: ['label']",
        "    label min/mean/max: [0.0, 0.333333, 1.0] -> [0.0, 0.666667, 1.0]",
        "  1 of 1 groups (cohort/trait) differ: brca/MKI67",
    ]


def test_another_signature_a_training_derived_change_beyond_tolerance_or_of_structure_fails(grouped):
    # an AUC 0.91 -> 0.70: beyond AUC_TOLERANCE, and the table's mean AUC beyond MEAN_TOLERANCE
    lines = dd.compare(run(), run(AVX2_16, auc=0.70)).lines
    assert lines[0] == "table model_metrics (training-derived):"
    assert "  row brca/MKI67/ensemble/test: AUC auc 0.912346 -> 0.7 (-0.212346, -23.27%) beyond 0.1" in lines
    assert "  auc mean 0.761173 -> 0.655 (-0.106173, -13.95%), beyond 10% (of at least 0.1)" in lines
    # a large table's mean 0.2 -> 0.3 (+50%); an HTI that is no longer a number
    assert dd.compare(run(), run(AVX2_16, hti_values=(0.2, 0.3, 0.4))).lines == [
        "table hti (training-derived):",
        "  hti mean 0.2 -> 0.3 (+0.1, +50.00%), beyond 10% (of at least 0.1)",
    ]
    assert "  hti: 3 -> 2 finite values" in dd.compare(run(), run(AVX2_16, hti_values=(0.1, np.nan, 0.3))).lines
    # a model's row gone, a slide more, another column
    new = run(AVX2_16)
    new["tables"]["model_metrics"] = dd.table_digest(metrics().iloc[:1], "model_metrics")
    new["tables"]["hti"] = dd.table_digest(pd.concat([hti(), hti().iloc[:1].assign(slide_id="s4")]), "hti")
    lines = dd.compare(run(), new).lines
    assert "  row brca/MKI67/ensemble/ood_near: gone" in lines
    assert "  groups (cohort/traits/slide_id) gone: [], new: ['brca/A+B/s4']" in lines
    new = run(AVX2_16)
    new["tables"]["hti"] = dd.table_digest(hti().assign(n_tiles=9), "hti")
    columns = "['cohort', 'traits', 'slide_id', 'hti'] -> ['cohort', 'traits', 'slide_id', 'hti', 'n_tiles']"
    assert f"  columns: {columns}" in dd.compare(run(), new).lines
    # a model trained more or fewer times: its history is gone
    new = run(AVX2_16)
    new["histories"] = {}
    assert dd.compare(run(), new).lines == ["training histories differ (1): models/brca/MKI67/round_0/history.csv"]


def test_the_signature_reads_the_flags_that_change_numerics(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma aes sha_ni avx512f amx_tile\n"
        "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma aes sha_ni avx512f amx_tile\n"
    )
    assert dd.cpu_flags(info) == ("AMD EPYC", "sse4_2 avx avx2 fma avx512f amx_tile")
    sig = dd.signature()
    assert set(sig) == {"machine", "cpu_model", "cpu_flags", "cpus", "libraries", "env"} and sig["cpus"] >= 1
    assert set(sig["libraries"]) == set(dd.TRAINING_LIBRARIES) and sig["libraries"]["numpy"] == np.__version__


def test_the_training_derived_tables_follow_the_asset_graph():
    """Tables written by ``trait_model`` or an asset downstream of it; ``WRITTEN_BY`` checked against the sources:
    each ``.write("<table>"`` of an asset module is in a module defining one of the table's writers, and each one of
    a plain module in a module an asset module imports that defines one."""
    import re
    from pathlib import Path

    import pathomch_assets

    trained = set(dd.training_derived())
    before = {"slides", "tiles", "stain", "expression", "labels", "splits", "split_counts", "clinical"}
    assert before.isdisjoint(trained) and before | trained == set(SCHEMAS)
    assert {"model_metrics", "slide_scores", "hti", "survival"} <= trained
    package = Path(pathomch_assets.__file__).parent
    writes = re.compile(r"\.write\(\s*\"(\w+)\"")
    asset_files = {p: p.read_text() for p in (package / "assets").glob("*.py")}
    defines = {p: set(re.findall(r"^\s*def (\w+)\(\s*context", text, re.M)) for p, text in asset_files.items()}
    for path in package.rglob("*.py"):
        for table in set(writes.findall(path.read_text())):
            writers = set(dd.WRITTEN_BY[table])
            if path in asset_files:
                assert writers & defines[path], (path.name, table)
            else:
                importers = [p for p, text in asset_files.items() if re.search(rf"from \.\.{path.stem} import", text)]
                assert any(writers & defines[p] for p in importers), (path.name, table)
