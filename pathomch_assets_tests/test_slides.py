"""Slides on real OpenSlide fixtures: ids, magnification provenance, level choice, bad slides."""

import shutil

import pandas as pd
import pytest

from pathomch_assets.slides import (
    SlideError,
    base_magnification,
    choose_level,
    discover_slides,
    is_diagnostic,
    open_slide,
    patient_id,
    primary_slides,
    read_gdc_manifest,
    slide_id_from_path,
    slide_info,
    tss_code,
    usable_slides,
)
from pathomch_assets.tiling import TilingParams, tile_slide

from .conftest import FIXTURES, OPENSLIDE

TINY = TilingParams(magnification=20, tile_px=8, max_background_fraction=1.0)


def test_ids_follow_tcga_rules():
    sid = slide_id_from_path("x/TCGA-AR-A5QM-01Z-00-DX1.A9017CED-FF57-4090-95B9-94DC91854347.svs")
    assert sid == "TCGA-AR-A5QM-01Z-00-DX1.A9017CED-FF57-4090-95B9-94DC91854347"
    assert patient_id(sid) == "TCGA-AR-A5QM"
    assert slide_id_from_path("study/TCGA-AA-0001-01Z-00-DX1/frame_0.dcm") == "TCGA-AA-0001-01Z-00-DX1"


def test_lowercase_barcodes_are_the_same_patient_and_tissue_slides_are_not_diagnostic():
    assert patient_id("tcga-ar-a5qm-01z-00-dx1.a9017ced") == "TCGA-AR-A5QM"
    assert is_diagnostic("tcga-ar-a5qm-01z-00-dx1.a9017ced")
    assert not is_diagnostic("tcga-ar-a5qm-01a-01-ts1.1234")
    assert not is_diagnostic("TCGA-AR-A5QM-01A-01-TS1.1234")
    assert is_diagnostic("case_17")  # not a TCGA name: taken as diagnostic


@pytest.mark.parametrize(
    "barcode, site",
    [
        ("TCGA-A2-A04N", "A2"),
        ("tcga-e2-a1b1", "E2"),
        ("TCGA-AR-A5QM-01Z-00-DX1.A9017CED", "AR"),
        ("TCGA-5T-A9QA", "5T"),
    ],
)
def test_tss_code_is_the_second_barcode_field(barcode, site):
    assert tss_code(barcode) == site


@pytest.mark.parametrize("bad", ["TCGA-A2", "TCGA-A2_A04N", "A2-A04N-TCGA", "case_17", "", "TCGA-A!-A04N"])
def test_tss_code_refuses_a_malformed_barcode_with_what_to_do(bad):
    with pytest.raises(ValueError, match="is not a TCGA patient barcode.*site_file"):
        tss_code(bad)


def test_magnification_from_mpp_on_a_real_svs():
    with open_slide(OPENSLIDE / "small.svs") as s:
        info = slide_info(s, OPENSLIDE / "small.svs")
    assert info.magnification_source == "mpp"
    assert info.base_magnification == pytest.approx(10 / 0.499, rel=1e-3)
    assert info.vendor == "aperio"


def test_nonsense_mpp_without_objective_power_is_an_error_naming_the_file():
    path = OPENSLIDE / "boxes.tiff"
    with open_slide(path) as s:
        with pytest.raises(SlideError) as err:
            slide_info(s, path)
        assert str(path) in str(err.value) and "implausible mpp of 352.7" in str(err.value)
        # ...unless the cohort sets a default magnification
        info = slide_info(s, path, default_magnification=20)
    assert (info.base_magnification, info.magnification_source) == (20, "config_default")
    assert len(info.level_downsamples) == 4


def test_objective_power_used_when_mpp_is_missing():
    assert base_magnification({"openslide.objective-power": "40"}, "x.svs") == (40.0, "objective_power", None)
    with pytest.raises(SlideError, match="no objective power and no mpp"):
        base_magnification({}, "x.svs")


def test_dicom_slide_opens():
    with open_slide(OPENSLIDE / "boxes_0.dcm") as s:
        assert slide_info(s, "boxes_0.dcm").magnification_source == "mpp"


@pytest.mark.parametrize(
    "base,downs,target,expect",
    [
        (40.0, (1.0, 2.0, 8.0), 20.0, (1, 20.0, 512)),  # 40x slide with a 20x level: read it as is
        (40.0, (1.0, 4.0, 16.0), 20.0, (0, 40.0, 1024)),  # no 20x level: 1024 px at 40x, resized
        (20.0, (1.0, 4.0), 20.0, (0, 20.0, 512)),
        (20.04, (1.0, 4.0), 20.0, (0, 20.04, 512)),  # within tolerance: no resampling
        (10.0, (1.0, 4.0), 20.0, (0, 10.0, 256)),  # below target everywhere: upsample level 0
        (20.0, (1.0, 4.0, 16.0), 5.0, (1, 5.0, 512)),
    ],
)
def test_level_choice_is_closest_not_below(base, downs, target, expect):
    c = choose_level(base, downs, target, 512)
    assert (c.level, pytest.approx(c.level_magnification), c.read_px) == expect


def test_unopenable_slide_is_recorded_with_the_openslide_error(tmp_path):
    res = tile_slide("c", "unopenable", OPENSLIDE / "unopenable.tiff", tmp_path / "u.tfrecord", TINY)
    assert res.status == "error"
    assert "unopenable.tiff" in res.error and "Unsupported TIFF compression" in res.error
    assert res.tiles.empty and not (tmp_path / "u.tfrecord").exists()


def test_corrupt_slide_fails_mid_read_and_leaves_no_file(tmp_path):
    res = tile_slide("c", "unreadable", OPENSLIDE / "unreadable.svs", tmp_path / "r.tfrecord", TINY)
    assert res.status == "error"
    assert "unreadable.svs" in res.error and "read failed" in res.error
    assert not list(tmp_path.iterdir())


def test_small_real_svs_tiles(tmp_path):
    res = tile_slide("c", "small", OPENSLIDE / "small.svs", tmp_path / "s.tfrecord", TINY)
    assert res.status == "ok" and len(res.tiles) == 4  # 16 x 16 px -> 2 x 2 tiles of 8 px
    assert res.info["magnification_source"] == "mpp"


def test_gdc_manifest_real_layout():
    m = read_gdc_manifest(FIXTURES / "gdc" / "gdc_manifest_brca_head.txt")
    assert list(m.columns) == ["id", "filename", "md5", "size", "state"] and len(m) == 5
    assert m.filename[0].startswith("TCGA-AR-A5QM-01Z-00-DX1.")


def test_manifest_with_wrong_header_names_the_file(tmp_path):
    p = tmp_path / "m.txt"
    p.write_text("uuid\tfile\n1\tTCGA.svs\n")
    with pytest.raises(ValueError, match=r"m\.txt: line 1: expected GDC manifest header"):
        read_gdc_manifest(p)


def test_discovery_in_gdc_client_layout_and_by_manifest(tmp_path):
    m = read_gdc_manifest(FIXTURES / "gdc" / "gdc_manifest_brca_head.txt")
    for rec in m.head(3).itertuples():  # gdc-client writes <id>/<filename>
        (tmp_path / rec.id).mkdir()
        shutil.copy(OPENSLIDE / "small.svs", tmp_path / rec.id / rec.filename)
    (tmp_path / "notes.txt").write_text("not a slide")
    found = discover_slides("brca", tmp_path)
    assert len(found) == 3 and all(r.patient_id.startswith("TCGA-") for r in found)
    by_manifest = discover_slides("brca", tmp_path, FIXTURES / "gdc" / "gdc_manifest_brca_head.txt")
    assert len(by_manifest) == 5 and sum(r.missing for r in by_manifest) == 2


def test_primary_slide_is_dx1():
    df = pd.DataFrame(
        {
            "cohort": "c",
            "slide_id": [
                "TCGA-AA-0001-01Z-00-DX2.x",
                "TCGA-AA-0001-01Z-00-DX1.y",
                "TCGA-AA-0002-01Z-00-DX3.z",
                "TCGA-AA-0003-01Z-00-DX1.w",
            ],
            "status": ["ok", "ok", "ok", "error"],
        }
    )
    df["patient_id"] = df.slide_id.str[:12]
    p = primary_slides(df)
    assert p.slide_id.tolist() == ["TCGA-AA-0001-01Z-00-DX1.y", "TCGA-AA-0002-01Z-00-DX3.z"]


def test_every_diagnostic_slide_is_used_and_dx1_only_for_survival(tmp_path):
    """A patient with DX1 and DX2 slides: both are training/scoring slides, only DX1 is the survival slide."""
    from pathomch_assets.ingest import survival_slides, training_slides
    from pathomch_assets.tables import TableStore

    ids = [
        "TCGA-AA-0001-01Z-00-DX2.x",
        "TCGA-AA-0001-01Z-00-DX1.y",
        "TCGA-AA-0002-01Z-00-DX1.z",
        "TCGA-AA-0003-01Z-00-DX1.w",
        "TCGA-AA-0002-01A-01-TS1.t",
    ]
    df = pd.DataFrame(
        {"cohort": "c", "slide_id": ids, "path": "p", "status": ["ok", "ok", "ok", "error", "skipped"], "error": None}
    )
    df["patient_id"] = df.slide_id.str[:12]
    assert usable_slides(df).slide_id.tolist() == sorted(ids[:3])
    store = TableStore(tmp_path / "tables", tmp_path / "db.duckdb")
    store.write("slides", "c", df)
    assert training_slides(store, "c").slide_id.tolist() == sorted(ids[:3])
    assert survival_slides(store, "c").slide_id.tolist() == ["TCGA-AA-0001-01Z-00-DX1.y", "TCGA-AA-0002-01Z-00-DX1.z"]


def test_tiling_outcome_counts_problems_and_one_slide_rows():
    from pathomch_assets.ingest import TilingOutcome

    ok = {"slide_id": "a", "status": "ok", "error": None, "level": 0, "n_tiles": 12, "read_px": 512}
    bad = {"slide_id": "b", "status": "error", "error": "cannot open", "level": None}
    out = TilingOutcome({"c/a": ok, "c/b": bad}, reused=3, tiled=2, tiles_total=12, unrecorded={"c/d": "disk full"})
    assert out.counts() == {
        "slides": 5,
        "slides_reused": 3,
        "slides_tiled": 2,
        "slides_tiled_again_after_a_change": 0,
        "tiles_written": 12,
        "status_error": 1,
        "status_ok": 1,
    }
    assert out.problems().to_dict("records") == [{"slide_id": "b", "status": "error", "error": "cannot open"}]
    assert out.not_written().to_dict("records") == [{"slide": "c/d", "error": "disk full"}]
    assert out.one_slide() == {}  # two slides: nothing of one slide's row
    assert TilingOutcome({"c/a": ok}).one_slide() == {"status": "ok", "level": 0, "n_tiles": 12}
