"""Assets called directly, as Dagster's example projects test them, on a tiny store written by hand.

``dg.materialize([...], partition_key=...)`` for ``slide_tiles`` (a real OpenSlide slide); the asset functions
themselves with ``dg.build_asset_context(partition_key=...)`` for ``ensemble`` and ``survival_analysis``, whose
inputs are a few rows of the result tables.  Expected values are computed here by brute force (the vote, the
slide score, the AUC as a count of ordered pairs, the survival set) or taken from R.
"""

import json
import shutil
from itertools import product

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from pathomch_assets import layout
from pathomch_assets.config import load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.partitions import slides_name
from pathomch_assets.reporting import EMBED_MAX_BYTES
from pathomch_assets.resources import PathomchResource
from pathomch_assets.tables import TableStore

from .conftest import OPENSLIDE

CONFIG = """\
data_dir: out
duckdb_path: out/pathomch.duckdb
seed: 1
cohorts:
  brca:
    slides_dir: slides
    mrna: mrna.tsv
    mirna: mirna.csv
    clinical: clinical.txt
    traits: [A, B, C]
    survival_pairs: [[A, B]]
tiling: {magnification: 20, tile_px: 16, max_background_fraction: 1.0, workers: 1}
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A deployment with one cohort of three traits and nothing computed: (config, resource, store, defs)."""
    (tmp_path / "slides").mkdir()
    for name in ("mrna.tsv", "mirna.csv", "clinical.txt"):
        (tmp_path / name).touch()
    path = tmp_path / "pathomch.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv("PATHOMCH_CONFIG", str(path))
    cfg = load_config(path)
    return (
        cfg,
        PathomchResource(config_path=str(path)),
        TableStore(cfg.tables_dir, cfg.duckdb_path),
        build_definitions(cfg),
    )


def asset(defs, name) -> dg.AssetsDefinition:
    """The asset of cohort brca as defined (resources not bound)."""
    return next(a for a in defs.assets if dg.AssetKey(["brca", name]) in a.keys)


def auc_by_pairs(labels, scores) -> float:
    """AUC as the share of (positive, negative) pairs ordered right, ties half (its definition)."""
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg)) / (len(pos) * len(neg))


# ------------------------------------------------------------------------------------------------ slide_tiles
def test_slide_tiles_tiles_a_slide_once_and_reuses_it(tiny):
    cfg, pathomch, store, defs = tiny
    shutil.copy(OPENSLIDE / "small.svs", cfg.cohorts["brca"].slides_dir / "small.svs")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(slides_name("brca"), ["brca/small"])

        def run():
            result = dg.materialize(
                [asset(defs, "slide_tiles")],
                instance=instance,
                partition_key="brca/small",
                resources={"pathomch": pathomch},
            )
            assert result.success
            (event,) = result.asset_materializations_for_node("brca__slide_tiles")
            return {k: v.value for k, v in event.metadata.items()}

        first = run()
        tile_file = layout.tile_file(cfg, "brca", "small")
        assert first["status"] == "ok" and first["slides_tiled"] == 1 and first["slides_reused"] == 0
        assert first["n_tiles"] == len(store.read("tiles", "slide_id = ?", ["small"])) > 0 and tile_file.exists()
        written = tile_file.stat().st_mtime_ns
        second = run()
        assert second["slides_reused"] == 1 and second["slides_tiled"] == 0
        assert tile_file.stat().st_mtime_ns == written  # not tiled again
        # a touch is no change (the same content: reused); other content is tiled again
        (cfg.cohorts["brca"].slides_dir / "small.svs").touch()
        assert run()["slides_reused"] == 1
        with open(cfg.cohorts["brca"].slides_dir / "small.svs", "ab") as fh:
            fh.write(b"\0")  # other bytes at its end
        assert run()["slides_tiled"] == 1


# ------------------------------------------------------------------------------------------------ ensemble
def write_models(cfg, store, trait: str, val_auc: dict, rng) -> pd.DataFrame:
    """Five rounds of ``trait``: their validation AUCs in ``model_metrics`` and random tile probabilities of six
    slides (three tiles each) as ``trait_model`` writes them; returns the probabilities (long)."""
    ids = [f"TCGA-AA-000{i}-01Z-00-DX1" for i in range(6)]
    slides = pd.DataFrame(
        {
            "cohort": "brca",
            "slide_id": ids,
            "patient_id": [s[:12] for s in ids],
            "path": "",
            "status": "ok",
            "error": None,
        }
    )
    store.write("slides", "brca", slides)
    rows = []
    for r, auc in val_auc.items():
        p = rng.random(18)
        preds = pd.DataFrame({"slide_id": np.repeat(slides.slide_id, 3), "col": [0, 1, 2] * 6, "row": 0, "p": p})
        path = layout.predictions_file(cfg, "brca", trait, r)
        path.parent.mkdir(parents=True, exist_ok=True)
        preds.to_parquet(path, index=False)
        rows.append(preds.assign(model=r))
        store.write(
            "model_metrics",
            f"brca/{trait}/{r}",
            pd.DataFrame(
                [{"cohort": "brca", "trait": trait, "model": r, "eval_set": "val", "auc": auc, "n_slides": 2}]
            ),
        )
        store.write(
            "model_rounds",
            f"brca/{trait}/{r}",
            pd.DataFrame([{"cohort": "brca", "trait": trait, "model": r, "status": "trained", "reason": None}]),
        )
    # patients 0-3 test (labels 1, 1, 0, 0), 4-5 validation
    pids = slides.patient_id.tolist()
    store.write(
        "labels",
        "brca",
        pd.DataFrame(
            {
                "cohort": "brca",
                "trait": trait,
                "patient_id": pids,
                "subset": "labeled",
                "label": [1, 1, 0, 0, 1, 0],
                "percentile": 50.0,
            }
        ),
    )
    store.write(
        "splits",
        "brca",
        pd.DataFrame({"cohort": "brca", "round": 0, "patient_id": pids, "split": ["test"] * 4 + ["val"] * 2}),
    )
    store.ensure_views()
    return pd.concat(rows, ignore_index=True)


def test_ensemble_is_the_best_three_rounds_voting_two_of_three(tiny):
    cfg, pathomch, store, defs = tiny
    val_auc = {"round_0": 0.6, "round_1": 0.9, "round_2": 0.7, "round_3": 0.8, "round_4": 0.5}
    probs = write_models(cfg, store, "A", val_auc, np.random.default_rng(0))
    ensemble = asset(defs, "ensemble")
    result = ensemble(context=dg.build_asset_context(partition_key="brca/A"), pathomch=pathomch)
    spec = json.loads(layout.ensemble_file(cfg, "brca", "A").read_text())
    assert spec["members"] == ["round_1", "round_3", "round_2"] and spec["min_votes"] == 2
    # brute force: a tile is positive when two of the three members give p >= 0.5; the score is % positive tiles
    members = probs[probs.model.isin(spec["members"])]
    votes = members.assign(yes=members.p >= 0.5).groupby(["slide_id", "col"]).yes.sum()
    score = (votes >= 2).groupby("slide_id").mean() * 100
    test = [f"TCGA-AA-000{i}-01Z-00-DX1" for i in range(4)]
    expected = auc_by_pairs([1, 1, 0, 0], [score[s] for s in test])
    m = store.query("select * from model_metrics where model = 'ensemble' and eval_set = 'test'").iloc[0]
    assert m.auc == pytest.approx(expected) and m.n_slides == 4
    assert result.metadata["members"] == "round_1, round_3, round_2"


def test_an_ensemble_with_too_few_rounds_fails_and_leaves_no_stale_members(tiny):
    cfg, pathomch, store, defs = tiny
    write_models(cfg, store, "A", dict.fromkeys(layout.round_name(i) for i in range(5)), np.random.default_rng(1))
    ensemble = asset(defs, "ensemble")
    ensemble(context=dg.build_asset_context(partition_key="brca/A"), pathomch=pathomch)
    assert layout.ensemble_file(cfg, "brca", "A").exists()
    for r in ("round_0", "round_2", "round_4"):  # a later split leaves three rounds without a class
        store.delete("model_metrics", f"brca/A/{r}")
        store.write(
            "model_rounds",
            f"brca/A/{r}",
            pd.DataFrame(
                [
                    {
                        "cohort": "brca",
                        "trait": "A",
                        "model": r,
                        "status": "excluded",
                        "reason": "the val split has one class",
                    }
                ]
            ),
        )
    with pytest.raises(dg.Failure, match=r"brca/A: only 2 usable rounds \(round_1, round_3\) but ensemble.size is 3"):
        ensemble(context=dg.build_asset_context(partition_key="brca/A"), pathomch=pathomch)
    assert not layout.ensemble_file(cfg, "brca", "A").exists()
    assert store.query("select * from model_metrics where model in ('ensemble', 'mean_of_rounds')").empty


# ------------------------------------------------------------------------------------------------ survival
#: for tests on :func:`write_survival_inputs`: its HTI orders the deaths almost perfectly (planted), so lifelines
#: rightly warns that the Cox fit is nearly separable and converges poorly; the tests are about which rows are written
SEPARABLE = pytest.mark.filterwarnings("ignore::lifelines.exceptions.ConvergenceWarning")


def write_survival_inputs(cfg, store, usable=("A", "B", "C")):
    """40 patients: 0-9 train (never in the survival set), 10-29 test, 30-39 OOD for both traits; one DX1 slide each
    (and a DX2 for patient 10, which survival must not use); HTI high for early deaths."""
    rng = np.random.default_rng(3)
    pids = [f"TCGA-AA-{i:04d}" for i in range(40)]
    split = ["train"] * 10 + ["test"] * 20 + ["train"] * 10
    store.write("splits", "brca", pd.DataFrame({"cohort": "brca", "round": 0, "patient_id": pids, "split": split}))
    labels = []
    for t in ("A", "B", "C"):
        subset = ["labeled"] * 30 + ["ood_all"] * 10
        labels.append(
            pd.DataFrame(
                {
                    "cohort": "brca",
                    "trait": t,
                    "patient_id": pids,
                    "subset": subset,
                    "label": 1,
                    "percentile": rng.random(40) * 100,
                }
            )
        )
    store.write("labels", "brca", pd.concat(labels, ignore_index=True))
    slide_ids = [f"{p}-01Z-00-DX1" for p in pids] + ["TCGA-AA-0010-01Z-00-DX2"]
    store.write(
        "slides",
        "brca",
        pd.DataFrame(
            {
                "cohort": "brca",
                "slide_id": slide_ids,
                "patient_id": [s[:12] for s in slide_ids],
                "path": "",
                "status": "ok",
                "error": None,
            }
        ),
    )
    hti = np.linspace(0, 1, 41)
    rows = pd.DataFrame(
        {
            "cohort": "brca",
            "traits": "A+B",
            "slide_id": slide_ids,
            "patient_id": [s[:12] for s in slide_ids],
            "hti": hti,
            "n_tiles": 10,
        }
    )
    store.write("hti", "brca", rows)
    store.write("hti_stats", "brca", rows.assign(hti_robust=hti, ci_low=hti, ci_high=hti, p_spatial=0.5))
    months = 100 - 80 * hti[:40] + rng.random(40)
    store.write(
        "clinical",
        "brca",
        pd.DataFrame(
            {
                "cohort": "brca",
                "patient_id": pids,
                "os_months": months,
                "os_event": 1,
                "er_status": None,
                "subtype": None,
            }
        ),
    )
    store.ensure_views()
    for t in usable:
        path = layout.ensemble_file(cfg, "brca", t)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"members": ["round_0"]}))
    return pids, dict(zip(slide_ids, hti))


@SEPARABLE
def test_survival_analysis_uses_dx1_slides_of_the_survival_set(tiny):
    cfg, pathomch, store, defs = tiny
    pids, hti = write_survival_inputs(cfg, store)
    survival_analysis = asset(defs, "survival_analysis")
    result = survival_analysis(context=dg.build_asset_context(partition_key="brca"), pathomch=pathomch)
    rows = store.query("select * from survival").set_index("grouping")
    # test patients 10-29 and OOD-for-both 30-39, each by its DX1 slide (patient 10's DX2 has another HTI)
    dx1 = {p: hti[f"{p}-01Z-00-DX1"] for p in pids[10:]}
    assert result.metadata["patients_A+B"] == 30
    split = rows.loc["hti>0.5 vs <=0.5"]
    assert (split.n_high, split.n_low) == (sum(h > 0.5 for h in dx1.values()), sum(h <= 0.5 for h in dx1.values()))
    cox = rows.loc["hti continuous (Cox)"]
    assert cox.n_patients == 30 and cox.hazard_ratio > 1 and cox.p_value < 0.05  # high HTI dies sooner
    assert rows.loc["hti (Harrell's C)"].c_index > 0.9
    for figure in ("kaplan_meier", "hti_by_expression"):
        assert layout.survival_figure_file(cfg, "brca", "A+B", figure).exists()
        # shown on the asset page without a figure server: inline, small (reporting.figure_file)
        image = result.metadata[f"{figure}_A+B_image"].value
        assert image.startswith(f"![{figure}_A+B](data:image/png;base64,")
        assert len(image) < 4 / 3 * EMBED_MAX_BYTES + 100
    assert "hti_by_clinical_A+B_note" in result.metadata  # no ER/PAM50 column: says why Figure 6 is missing


def test_survival_analysis_leaves_out_a_pair_without_an_ensemble(tiny):
    cfg, pathomch, store, defs = tiny
    write_survival_inputs(cfg, store, usable=("A", "C"))
    survival_analysis = asset(defs, "survival_analysis")
    context = dg.build_asset_context(partition_key="brca")
    result = survival_analysis(context=context, pathomch=pathomch)
    assert store.read("survival").empty and result.metadata["dagster/row_count"] == 0
    note = result.metadata["traits_without_ensemble"]
    assert "brca: B left out: no usable ensemble" in note and "A+B" in note


def test_the_configuration_is_read_once_per_file_version(tiny):
    cfg, pathomch, _, _ = tiny
    first = pathomch.get_config()
    assert pathomch.get_config() is first  # not read and validated again
    path = cfg.source
    path.write_text(path.read_text().replace("seed: 1", "seed: 2"))
    assert pathomch.get_config().seed == 2  # a changed file is read again
