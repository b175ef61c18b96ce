"""End to end on a small demo cohort: slides -> tiles -> labels and splits, through Dagster."""

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from pathomch_assets.config import load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.runner import materialize_all
from pathomch_assets.storage import TableStore

from .conftest import OPENSLIDE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def foundation(small_demo, tmp_path_factory, monkeypatch_module):
    cfg = load_config(small_demo)
    slides = cfg.cohorts["brca"].slides_dir
    # bad slides among good ones, named as diagnostic slides so that they are tried
    shutil.copy(OPENSLIDE / "unopenable.tiff", slides / "TCGA-ZZ-0002-01Z-00-DX1.BAD.tiff")
    shutil.copy(OPENSLIDE / "unreadable.svs", slides / "TCGA-ZZ-0003-01Z-00-DX1.BAD.svs")
    monkeypatch_module.setenv("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster_home")))
    defs = build_definitions(cfg)
    summary = materialize_all(defs, cfg, selection="slide_tiles,expression,labels,splits,clinical",
                              log=lambda *a: None)
    yield cfg, summary, TableStore(cfg.tables_dir, cfg.duckdb_path)
    for f in slides.glob("TCGA-ZZ-*"):
        f.unlink()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_bad_slides_are_recorded_and_the_rest_is_tiled(foundation):
    cfg, summary, store = foundation
    assert not summary.failed, summary.failed
    slides = store.query("select * from slides").set_index("slide_id")
    bad = slides.loc["TCGA-ZZ-0002-01Z-00-DX1.BAD"]
    assert bad.status == "error" and "Unsupported TIFF compression" in bad.error and "BAD.tiff" in bad.error
    bad = slides.loc["TCGA-ZZ-0003-01Z-00-DX1.BAD"]
    assert bad.status == "error" and "read failed" in bad.error and "BAD.svs" in bad.error
    ok = slides[slides.status == "ok"]
    assert len(ok) >= 70
    assert set(slides[slides.status == "skipped"].index.str.contains("-TS")) <= {True}
    assert store.query("select count(*) n from tiles where slide_id like 'TCGA-ZZ%'").n[0] == 0


def test_tile_counts_match_independent_count_on_demo_slides(foundation):
    cfg, _, store = foundation
    slides = store.query("select * from slides where status = 'ok' order by slide_id").head(12)
    counts = store.query("select slide_id, count(*) n from tiles group by 1").set_index("slide_id").n
    px = cfg.tiling.tile_px
    for s in slides.itertuples():
        with tifffile.TiffFile(s.path) as tif:
            levels = [p for p in tif.pages if p.is_tiled]
            # the page at 5x, or the 10x page reduced by PIL, counted with numpy
            mag0 = s.base_magnification
            page = next(i for i, p in enumerate(levels) if mag0 * p.shape[1] / levels[0].shape[1] >= cfg.tiling.magnification - 1e-6
                        and mag0 * p.shape[1] / levels[0].shape[1] / 4 < cfg.tiling.magnification - 1e-6)
            img = levels[page].asarray()
        factor = round(mag0 * img.shape[1] / levels[0].shape[1] / cfg.tiling.magnification)
        if factor > 1:
            img = np.asarray(Image.fromarray(img).reduce(factor))
        n = sum(1 - np.all(img[r * px:(r + 1) * px, c * px:(c + 1) * px] > 220, axis=-1).mean() >= 0.5
                for r in range(img.shape[0] // px) for c in range(img.shape[1] // px))
        assert counts[s.slide_id] == n, s.slide_id


def test_labels_and_splits_tables(foundation):
    cfg, _, store = foundation
    labels = store.query("select * from labels")
    assert set(labels.subset) == {"labeled", "ood_near", "ood_all"}
    near = labels[labels.subset == "ood_near"].patient_id
    assert set(near) <= set(labels[labels.subset == "ood_all"].patient_id)
    splits = store.query("select * from splits")
    assert set(splits["round"]) == set(range(5)) and set(splits.split) == {"train", "val", "test"}
    ok_patients = set(store.query("select patient_id from slides where status='ok'").patient_id)
    assert set(splits.patient_id) == ok_patients
    # only patients with slides are labelled; the extra expression-only patients are not
    assert set(labels.patient_id) <= ok_patients
