"""The validity gate (issue 29): held-out validation AUC with a patient bootstrap interval decides which traits
feed maps, HTI and survival; the test set is never read.

Synthetic cohorts as the tables hold them (``labels``, ``splits`` of five rounds, ``slide_scores`` of the round
models): a *learned* trait whose round scores follow its labels, and a *shuffled* trait whose models learned
shuffled labels (scores follow a permutation of the labels: chance on held-out slides).  The bootstrap is checked
against a brute-force resampling of patients.
"""

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from pathomch_assets.config import MapsConfig
from pathomch_assets.evaluation import slide_auc
from pathomch_assets.validity import apply_gate, bootstrap_auc, gate_warning, validity_row, validity_rows

SITES = ("A1", "A2", "B6", "C8")


def cohort_frames(n=160, rounds=5, seed=0, traits=("learned", "shuffled"), val_sites=None, held_rounds=(0,)):
    """``labels``, ``splits`` and round ``slide_scores`` of one synthetic cohort (one DX1 slide per patient).

    20% of patients are the test set (every round); per round 20% of the rest is validation.  Every fifth
    patient is OOD-near (truth: above/below the median), the others labelled.  ``val_sites``:
    sites kept out of training in rounds ``held_rounds`` (their patients are validation there, as site-preserved
    splits do).
    """
    rng = np.random.default_rng(seed)
    pids = [f"TCGA-{SITES[i % len(SITES)]}-{i:04d}" for i in range(n)]
    order = rng.permutation(n)
    test = set(order[: n // 5].tolist())
    rest = order[n // 5 :]
    splits = []
    for r in range(rounds):
        val = set(np.random.default_rng(100 + r).permutation(rest)[: len(rest) // 5].tolist())
        for i, p in enumerate(pids):
            held = val_sites and r in held_rounds and p[5:7] in val_sites and i not in test
            split = "test" if i in test else "val" if i in val or held else "train"
            splits.append({"cohort": "brca", "round": r, "patient_id": p, "split": split})
    splits = pd.DataFrame(splits)
    labels, scores = [], []
    for k, trait in enumerate(traits):
        y = np.random.default_rng(seed + 10 + k).integers(0, 2, n)
        labels.append(
            pd.DataFrame(
                {
                    "cohort": "brca",
                    "trait": trait,
                    "patient_id": pids,
                    "percentile": 50.0,
                    "label": y,
                    "subset": np.where(np.arange(n) % 5 == 4, "ood_near", "labeled"),
                }
            )
        )
        taught = y if trait != "shuffled" else np.random.default_rng(seed + 20 + k).permutation(y)
        for r in range(rounds):
            noise = np.random.default_rng(seed + 1000 * r + k).normal(0, 15, n)
            scores.append(
                pd.DataFrame(
                    {
                        "cohort": "brca",
                        "trait": trait,
                        "model": f"round_{r}",
                        "slide_id": [f"{p}-01Z-00-DX1" for p in pids],
                        "patient_id": pids,
                        "score": np.clip(40 + 30 * taught + noise, 0, 100),
                    }
                )
            )
    return pd.concat(labels, ignore_index=True), splits, pd.concat(scores, ignore_index=True)


def test_bootstrap_interval_matches_a_brute_force_patient_bootstrap():
    """Same resamples (the same draws of patients), AUC of the concatenated slides by ``slide_auc``."""
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(30), 2)  # two slides per patient, each with the patient's label
    y = np.repeat(rng.integers(0, 2, 30), 2)
    s = rng.normal(0, 1, 60) + y
    auc, lo, hi = bootstrap_auc(y, s, groups, n_boot=400, confidence=0.9, seed=3)
    assert auc == pytest.approx(slide_auc(y, s))
    draws = np.random.default_rng(3).integers(0, 30, size=(400, 30))
    boot = []
    for d in draws:
        idx = np.concatenate([np.flatnonzero(groups == g) for g in d])
        boot.append(slide_auc(y[idx], s[idx]))
    ref = np.nanpercentile(boot, [5, 95])
    assert (lo, hi) == pytest.approx(tuple(ref), abs=1e-12)


def test_a_learned_trait_passes_and_a_shuffled_one_is_left_out_with_its_auc():
    labels, splits, scores = cohort_frames()
    rows = validity_rows(["learned", "shuffled"], ["learned", "shuffled"], labels, splits, scores, MapsConfig(), 1)
    r = rows.set_index("trait")
    assert bool(r.at["learned", "valid"]) and bool(r.at["learned", "feeds"]) and r.at["learned", "ci_low"] >= 0.6
    assert not r.at["shuffled", "valid"] and not r.at["shuffled", "feeds"] and r.at["shuffled", "ci_low"] < 0.6
    assert r.at["shuffled", "ci_low"] <= r.at["shuffled", "auc"] <= r.at["shuffled", "ci_high"]
    # pooled over the five rounds' validation slides, none of them test slides
    labelled = set(labels.loc[labels["subset"] == "labeled", "patient_id"])
    val = splits[(splits["split"] == "val") & splits["patient_id"].isin(labelled)]
    assert r.at["learned", "n_rounds"] == 5 and r.at["learned", "n_slides"] == len(val)
    # OOD-near patients outside the test set, scored by the five round models: reported, not decided on
    test = set(splits.loc[splits["split"] == "test", "patient_id"])
    ood = set(labels.loc[labels["subset"] == "ood_near", "patient_id"]) - test
    assert r.at["learned", "n_ood_near_slides"] == 5 * len(ood) and r.at["learned", "auc_ood_near"] > 0.8
    assert "no validation slide from a site outside" in r.at["learned", "held_out"]  # patient splits
    warning = gate_warning("brca", rows)
    assert (
        "shuffled (AUC " in warning and "learned (" not in warning and "Left out of maps, HTI and survival" in warning
    )
    assert f"{r.at['shuffled', 'auc']:.2f}" in warning


def test_include_invalid_keeps_a_failing_trait_flagged():
    labels, splits, scores = cohort_frames()
    rows = validity_rows(
        ["learned", "shuffled"], ["learned", "shuffled"], labels, splits, scores, MapsConfig(include_invalid=True)
    )
    r = rows.set_index("trait")
    assert (
        bool(r.at["shuffled", "feeds"])
        and not r.at["shuffled", "valid"]
        and "include_invalid" in r.at["shuffled", "reason"]
    )
    gate = apply_gate("brca", ["learned", "shuffled"], rows)
    assert gate.feeds == ["learned", "shuffled"] and gate.invalid == ["shuffled"]
    assert gate.flags(["learned", "shuffled"]) == {"valid": False, "invalid_traits": "shuffled"}
    assert gate.flags(["learned"]) == {"valid": True, "invalid_traits": None}


def test_the_gate_never_reads_the_test_set():
    labels, splits, scores = cohort_frames()
    args = (["learned", "shuffled"], ["learned", "shuffled"])
    before = validity_rows(*args, labels, splits, scores, MapsConfig(), 1, site_alpha=0.01)
    test = set(splits.loc[splits["split"] == "test", "patient_id"])
    rng = np.random.default_rng(9)
    lab2 = labels.copy()
    lab2.loc[lab2["patient_id"].isin(test), "label"] = 1 - lab2.loc[lab2["patient_id"].isin(test), "label"]
    sc2 = scores.copy()
    sc2.loc[sc2["patient_id"].isin(test), "score"] = rng.uniform(0, 100, int(sc2["patient_id"].isin(test).sum()))
    after = validity_rows(*args, lab2, splits, sc2, MapsConfig(), 1, site_alpha=0.01)
    pd.testing.assert_frame_equal(before, after)
    # while changing validation slides does change it (the comparison can see a difference)
    val0 = set(splits.loc[(splits["round"] == 0) & (splits["split"] == "val"), "patient_id"])
    sc3 = scores.copy()
    sc3.loc[sc3["patient_id"].isin(val0), "score"] = 0.0
    assert not validity_rows(*args, labels, splits, sc3, MapsConfig(), 1, site_alpha=0.01).equals(before)


def test_a_trait_learned_through_the_site_fails_on_unseen_sites():
    """In round 0 site C8 does not train: the round's model gives each of its validation slides the same score
    (it reads the site, not the trait), the seen sites' scores follow the labels.  The pooled AUC clears the
    bound, the AUC on unseen sites does not."""
    labels, splits, scores = cohort_frames(n=240, val_sites={"C8"}, traits=("learned",))
    on_c8 = (scores["patient_id"].str[5:7] == "C8") & (scores["model"] == "round_0")
    scores.loc[on_c8, "score"] = 50.0
    r = validity_row("learned", labels, splits, scores, 0.6, False, seed=1)
    assert r["n_unseen_slides"] >= 10 and r["auc_unseen_sites"] == 0.5 and r["ci_low"] >= 0.6
    assert not r["valid"] and "on sites not in training" in r["reason"] and "decisive" in r["held_out"]


def test_a_site_only_trait_under_patient_splits_fails_the_gate_on_its_labels_by_site():
    """Labels that follow the tissue source site, and no validation site unseen in training (patient splits): a
    high held-out AUC cannot tell the trait from the site, so it does not feed; a trait drawn whatever the site
    passes, and without ``site_alpha`` the site is not asked (the AUC alone decides)."""
    from .test_site_effects import frames_with_site_trait

    labels, splits, rounds, _ = frames_with_site_trait()
    site_only = labels[labels["trait"] == "site_only"]
    scores = rounds[rounds["trait"] == "site_only"]
    r = validity_row("site_only", site_only, splits, scores, 0.6, False, seed=1, site_alpha=0.01)
    assert r["auc"] > 0.9 and r["site_p_value"] < 1e-6 and r["n_unseen_slides"] == 0
    assert not r["valid"] and not r["feeds"] and "follow the tissue source site" in r["reason"]
    assert validity_row("site_only", site_only, splits, scores, 0.6, False, seed=1)["valid"]
    planted = labels[labels["trait"] == "planted"]
    p = validity_row("planted", planted, splits, rounds[rounds["trait"] == "planted"], 0.6, False, 1, site_alpha=0.01)
    assert p["valid"] and p["site_p_value"] > 0.01


def test_a_trait_without_ensemble_never_feeds_and_undecided_traits_are_named():
    labels, splits, scores = cohort_frames()
    rows = validity_rows(["learned", "shuffled"], ["learned"], labels, splits, scores, MapsConfig())
    assert rows.set_index("trait").at["shuffled", "reason"] == "no usable ensemble"
    assert gate_warning("brca", rows) is None  # a missing ensemble has its own warning
    gate = apply_gate("brca", ["learned", "new"], rows)
    assert gate.feeds == ["learned", "new"] and gate.undecided == ["new"] and "trait_validity" in gate.note
    assert gate.flags(["learned", "new"])["valid"] is None


# ------------------------------------------------------------------------------------ assets
CONFIG = """\
data_dir: out
duckdb_path: out/pathomch.duckdb
seed: 1
cohorts:
  brca:
    slides_dir: slides
    mrna: mrna.tsv
    traits: [A, B, C]
    survival_pairs: [[A, B]]
    hti_sets: [[A, C]]
tiling: {magnification: 20, tile_px: 16, workers: 1}
"""


@pytest.fixture
def gated(tmp_path, monkeypatch):
    """A deployment whose traits A and B were learned and C was trained on shuffled labels: its tables
    (labels, splits, round slide scores, ensemble slide scores), ensembles and one slide's ensemble calls."""
    from pathomch_assets import layout
    from pathomch_assets.config import load_config
    from pathomch_assets.tables import TableStore

    (tmp_path / "slides").mkdir()
    (tmp_path / "mrna.tsv").touch()
    path = tmp_path / "pathomch.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv("PATHOMCH_CONFIG", str(path))
    cfg = load_config(path)
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    labels, splits, scores = cohort_frames(traits=("A", "B", "shuffled"))
    labels["trait"] = labels["trait"].replace({"shuffled": "C"})
    scores["trait"] = scores["trait"].replace({"shuffled": "C"})
    store.write("labels", "brca", labels)
    store.write("splits", "brca", splits)
    for (trait, model), g in scores.groupby(["trait", "model"]):
        store.write("slide_scores", f"brca/{trait}/{model}", g)
    ens = scores[scores["model"] == "round_0"].assign(model="ensemble")
    store.write("slide_scores", "brca/ensemble", ens)
    sid = ens["slide_id"].iloc[0]
    store.write(
        "slides",
        f"brca/{sid}",  # one partition per slide, as slide_tiles writes it
        pd.DataFrame(
            [
                {
                    "cohort": "brca",
                    "slide_id": sid,
                    "patient_id": sid[:12],
                    "path": "s.svs",
                    "status": "ok",
                    "error": None,
                    "base_magnification": 20.0,
                }
            ]
        ),
    )
    rng = np.random.default_rng(0)
    calls = pd.DataFrame(
        [(c, r, t, bool(rng.random() < 0.5)) for c in range(4) for r in range(3) for t in "ABC"],
        columns=["col", "row", "trait", "call"],
    )
    calls["votes"], calls["p"] = calls["call"] * 3, calls["call"] * 0.8 + 0.1
    out = layout.slide_calls_file(cfg, "brca", sid)
    out.parent.mkdir(parents=True, exist_ok=True)
    calls.to_parquet(out)
    for t in "ABC":
        f = layout.ensemble_file(cfg, "brca", t)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text('{"members": ["round_0"], "min_votes": 2, "threshold": 0.5}')
    store.ensure_views()
    return cfg, path, store, sid


def run_gate_and_map(path, sid):
    """``trait_validity`` of brca, then ``slide_cartography`` of one slide; their metadata."""
    from pathomch_assets.config import load_config
    from pathomch_assets.definitions import build_definitions
    from pathomch_assets.partitions import slides_name
    from pathomch_assets.resources import PathomchResource

    defs = build_definitions(load_config(path))
    pathomch = PathomchResource(config_path=str(path))
    gate = next(a for a in defs.assets if dg.AssetKey(["brca", "trait_validity"]) in a.keys)
    gate_meta = gate(context=dg.build_asset_context(partition_key="brca"), pathomch=pathomch).metadata
    carto = next(a for a in defs.assets if dg.AssetKey(["brca", "slide_cartography"]) in a.keys)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(slides_name("brca"), [f"brca/{sid}"])
        result = dg.materialize(
            [carto], partition_key=f"brca/{sid}", resources={"pathomch": pathomch}, instance=instance
        )
    assert result.success
    return gate_meta, result.asset_materializations_for_node(carto.node_def.name)[0].metadata


def test_a_shuffled_trait_is_left_out_of_maps_and_hti_with_its_warning(gated):
    import json

    from pathomch_assets import layout
    from pathomch_assets.cartography import Cartography
    from pathomch_assets.maps import analysis_sets

    cfg, path, store, sid = gated
    gate_meta, carto_meta = run_gate_and_map(path, sid)
    v = store.read("trait_validity").set_index("trait")
    assert v["feeds"].tolist() == [True, True, False] and v.at["C", "auc"] < 0.6
    assert "C (AUC " in gate_meta["warning"] and "Left out" in gate_meta["warning"]
    assert layout.validity_figure_file(cfg, "brca").exists()
    hti = store.read("hti")
    assert hti["traits"].tolist() == ["A+B"] and hti["valid"].tolist() == [True]
    note = carto_meta["left_out"].value
    assert "C left out by the validity gate" in note and "A+C" in note
    features = json.loads(layout.cartography_file(cfg, "brca", sid, "geojson").read_text())["features"]
    assert set(features[0]["properties"]["measurements"]) == {"A", "B"}  # the map shows no C
    with np.load(layout.cartography_file(cfg, "brca", sid)) as z:
        assert z["feeds"].tolist() == [True, True, False]
    assert Cartography.load(layout.cartography_file(cfg, "brca", sid)).traits == ["A", "B", "C"]
    assert analysis_sets(cfg, "brca", store) == [["A", "B"]]  # survival reads the same sets


def test_include_invalid_maps_the_trait_and_flags_every_hti_row(gated):
    cfg, path, store, sid = gated
    path.write_text(CONFIG + "maps: {include_invalid: true}\n")
    gate_meta, _ = run_gate_and_map(path, sid)
    assert "Kept in maps" in gate_meta["warning"]
    hti = store.read("hti").set_index("traits")
    assert hti.at["A+B", "valid"] and pd.isna(hti.at["A+B", "invalid_traits"])
    assert not hti.at["A+C", "valid"] and hti.at["A+C", "invalid_traits"] == "C"
