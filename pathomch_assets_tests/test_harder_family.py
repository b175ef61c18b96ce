"""Issue 19: the hard case, the harder planted family (a fine texture at the scale of nuclei), end to end.

An 80-patient cohort of ``HARDER_COHORT`` (its survival pair: ``FOXC1`` planted as a granular chromatin
texture in 4 um cells, ``miR-17-5p`` as a blue tint) runs with the demo's settings.  The texture is found at
slide level, but many of its tiles are missed, so the tile calls are noisy: the paper's HTI is far from the
planted HTI on the held-out slides (measured at 32 px: mean absolute error 0.185, Spearman 0.51; the demo
family's: 0.026, 0.90).  The robust HTI must do better there.  On these 15-25-tile slides it does not halve
the error: no re-deciding of tiles from their probabilities can (``bench/resolution.py``: even the per-slide
threshold that makes the most calls right by the planted truth leaves 0.100).  On the family's slides with 4x
as many tiles across (``--grid-scale 4``, 275-392 tiles) it does: 0.064 -> 0.017 (``resolution_slides.json``;
too slow for the suite).  The same cohort is the ``hard`` family of the bench.
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import spearmanr

from pathomch_assets.config import DEMO_CONFIG, load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.runner import materialize_all
from pathomch_assets.tables import TableStore

from .conftest import UNGATED, balanced_seed

pytestmark = pytest.mark.slow

DEMO_SPLITS = {"test_fraction": 0.3, "val_fraction": 0.15}  # pathomch_assets/configs/demo.yaml


@pytest.fixture(scope="module")
def hard(tmp_path_factory, monkeypatch_module):
    from pathomch_assets.demo_cohort import HARDER_COHORT, build_demo

    spec = dataclasses.replace(
        HARDER_COHORT, traits={t: HARDER_COHORT.traits[t] for t in HARDER_COHORT.survival_pair}, n_patients=80
    )
    out = tmp_path_factory.mktemp("hard")
    shipped = yaml.safe_load(DEMO_CONFIG.read_text())
    assert shipped["splits"] == DEMO_SPLITS, "keep DEMO_SPLITS equal to the demo's"
    path = build_demo(
        out,
        seed=balanced_seed((spec,), splits=DEMO_SPLITS),
        cohorts=(spec,),
        progress=lambda *a: None,
        overrides=UNGATED,
    )
    cfg = load_config(path)
    monkeypatch_module.setenv("PATHOMCH_CONFIG", str(path))
    monkeypatch_module.setenv("DAGSTER_HOME", str(out / "dagster_home"))  # not the demo's instance
    summary = materialize_all(build_definitions(cfg), cfg, log=lambda *a: None)
    assert not summary.failed, summary.failed
    return cfg, TableStore(cfg.tables_dir, cfg.duckdb_path), out, shipped["training"]["input_px"]


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def held_out_hti(store, out) -> pd.DataFrame:
    """``hti_stats`` of the held-out slides (the survival set, DX1) with their planted HTI."""
    from pathomch_assets.slides import primary_slides
    from pathomch_assets.survival import survival_set

    pair = ["FOXC1", "miR-17-5p"]
    held = survival_set(store.read("labels"), store.read("splits"), pair)
    slides = primary_slides(store.read("slides"))
    stats = store.read("hti_stats", "traits = ?", ["+".join(pair)])
    truth = pd.read_csv(out / "ground_truth_slides.csv")[["slide_id", "planted_hti"]]
    return stats[stats["slide_id"].isin(slides.loc[slides["patient_id"].isin(held), "slide_id"])].merge(
        truth, on="slide_id"
    )


def test_the_fine_texture_is_found_at_slide_level(hard):
    cfg, store, _, input_px = hard
    assert cfg.training.input_px == input_px
    auc = store.query("select trait, auc from model_metrics where model = 'ensemble' and eval_set = 'test'")
    assert (auc.set_index("trait")["auc"] >= 0.85).all(), auc


def test_where_calls_are_noisy_the_robust_hti_is_closer_to_the_planted_hti(hard):
    _, store, out, _ = hard
    m = held_out_hti(store, out)
    assert len(m) >= 25
    err_paper = float(np.abs(m["hti"] - m["planted_hti"]).mean())
    err_robust = float(np.abs(m["hti_robust"] - m["planted_hti"]).mean())
    rho_paper = spearmanr(m["hti"], m["planted_hti"]).statistic
    rho_robust = spearmanr(m["hti_robust"], m["planted_hti"]).statistic
    assert err_robust <= 0.9 * err_paper and rho_robust >= rho_paper, (err_paper, err_robust, rho_paper, rho_robust)
    assert rho_robust >= 0.5, rho_robust  # it still orders the slides by their planted HTI
