"""End to end on a small demo cohort through Dagster: slides -> tiles -> labels and splits ->
models -> ensembles -> cartography and HTI -> survival."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathomch_assets.config import load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.runner import materialize_all
from pathomch_assets.slides import SLIDE_TAG
from pathomch_assets.tables import TableStore

from .conftest import OPENSLIDE, planted_slide_plan

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
    summary = materialize_all(defs, cfg, log=lambda *a: None)
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


def test_rematerializing_is_idempotent_and_resumes_a_killed_tiling_run(foundation):
    from pathomch_assets.layout import tile_path as tile_file

    cfg, _, store = foundation
    defs = build_definitions(cfg)
    tables = {t: store.query(f"select * from {t} order by all") for t in ("slides", "tiles", "labels", "splits")}
    files = {p: p.stat().st_mtime_ns for p in cfg.tiles_dir.rglob("*.tfrecord")}
    sel = "slide_tiles,labels,splits"
    assert not materialize_all(defs, cfg, selection=sel, log=lambda *a: None).failed
    for t, before in tables.items():  # twice: identical rows, no duplicates, no slide tiled again
        # (error rows are tried again on every run, in case the cause was transient: only their timing differs)
        drop = ["seconds"] if t == "slides" else []
        pd.testing.assert_frame_equal(
            before.drop(columns=drop), store.query(f"select * from {t} order by all").drop(columns=drop)
        )
    assert {p: p.stat().st_mtime_ns for p in files} == files
    # a run killed mid-way: three slides never finished (no row, no file), a temporary file left behind
    ok = tables["slides"][tables["slides"].status == "ok"].head(3)
    for r in ok.itertuples():
        store.delete("slides", f"{r.cohort}/{r.slide_id}")
        tile_file(cfg.tiles_dir, r.cohort, r.slide_id).unlink()
    (cfg.tiles_dir / "brca" / ".half-written.tfrecord.tmp").write_bytes(b"partial")
    assert not materialize_all(defs, cfg, selection="slide_tiles", log=lambda *a: None).failed
    redone = {p for p, t in files.items() if not p.exists() or p.stat().st_mtime_ns != t}
    assert redone == {tile_file(cfg.tiles_dir, r.cohort, r.slide_id) for r in ok.itertuples()}
    drop = ["seconds"]
    pd.testing.assert_frame_equal(
        tables["slides"].drop(columns=drop).drop(columns=["file_mtime_ns"]),
        store.query("select * from slides order by all").drop(columns=drop + ["file_mtime_ns"]),
    )
    pd.testing.assert_frame_equal(tables["tiles"], store.query("select * from tiles order by all"))


def truth(cfg, name):
    return pd.read_csv(cfg.cohorts["brca"].slides_dir.parent.parent / name)


def planted(cfg, cohort):
    from pathomch_assets.demo_cohort import DEFAULT_COHORTS

    spec = next(c for c in DEFAULT_COHORTS if c.name == cohort)
    return [t for t, e in spec.traits.items() if e != "none"], [t for t, e in spec.traits.items() if e == "none"]


def test_ensembles_find_planted_traits(foundation):
    """Planted traits are found even in this small cohort; the negative control's AUC on ~7 test
    slides says little, so its 0.5 +- 0.2 is asserted on the full demo (test_demo_results.py)."""
    cfg, _, store = foundation
    m = store.query("select * from model_metrics")
    assert set(m.eval_set) == {"val", "test", "ood_near", "ood_all"}
    assert set(m.model) == {f"round_{i}" for i in range(5)} | {"ensemble", "mean_of_rounds"}
    ens = m[(m.model == "ensemble") & (m.eval_set == "test")].set_index(["cohort", "trait"]).auc
    for cohort in ("brca", "luad"):
        signal, control = planted(cfg, cohort)
        for t in signal:
            assert ens[(cohort, t)] >= 0.85, (cohort, t, ens[(cohort, t)])
        assert control and all(ens[(cohort, t)] <= 0.85 for t in control)  # no spurious perfect control
    scores = store.query("select * from slide_scores where model = 'ensemble'")
    assert scores.score.between(0, 100).all()
    corr = store.query("select * from correlations")
    assert {"test", "ood_near", "ood_all"} == set(corr.eval_set) and corr.fdr.dropna().between(0, 1).all()


def test_cartography_tensor_hti_and_geojson(foundation):
    import json

    from pathomch_assets.cartography import Cartography
    from pathomch_assets.heterogeneity import hti_from_tensor
    from pathomch_assets.layout import cartography_file

    cfg, _, store = foundation
    hti = store.query("select * from hti")
    assert hti.hti.between(0, 1).all() and set(hti.traits) == {"MKI67+miR-17-5p", "miR-17-5p+KRAS"}
    row = hti[hti.cohort == "brca"].iloc[0]
    carto = Cartography.load(cartography_file(cfg, "brca", row.slide_id))
    assert carto.traits == cfg.cohorts["brca"].traits and carto.tensor.shape[0] == 3
    assert (
        carto.mask.sum()
        == row.n_tiles
        == store.query(f"select count(*) n from tiles where slide_id = '{row.slide_id}'").n[0]
    )
    assert hti_from_tensor(carto.tensor[:2], carto.mask) == pytest.approx(row.hti)
    assert cartography_file(cfg, "brca", row.slide_id, "png").stat().st_size > 0
    gj = json.loads(cartography_file(cfg, "brca", row.slide_id, "geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == row.n_tiles
    # HTI from predicted maps follows the planted HTI
    from scipy.stats import spearmanr

    m = hti.merge(truth(cfg, "ground_truth_slides.csv"), on=["cohort", "slide_id", "traits"])
    rho, p = spearmanr(m.hti, m.planted_hti)  # >= 0.8 on the full demo (test_demo_results.py)
    assert rho > 0.3 and p < 1e-3


def test_trait_validity_and_site_effects_on_the_demo_cohort(foundation):
    """The gate and the site report on the real pipeline's tables (the small demo keeps failing traits, flagged:
    ``conftest.UNGATED``); the test set is not in the gate's slide counts."""
    cfg, _, store = foundation
    v = store.query("select * from trait_validity")
    assert {(c, t) for c, t in zip(v.cohort, v.trait)} == {(c, t) for c, k in cfg.cohorts.items() for t in k.traits}
    assert v.auc.between(0, 1).all() and (v.ci_low <= v.auc).all() and (v.auc <= v.ci_high).all()
    assert v.feeds.all() and "no validation slide from a site outside" in v.held_out.iloc[0]  # patient splits
    val = store.query(
        "select count(*) n from labels l join splits s using (cohort, patient_id) join slides d using (cohort, "
        "patient_id) where l.subset = 'labeled' and s.split = 'val' and l.trait = 'MKI67' and l.cohort = 'brca' "
        "and d.status = 'ok'"
    ).n[0]
    assert 0 < v.set_index(["cohort", "trait"]).n_slides[("brca", "MKI67")] <= val  # validation slides only
    valid = dict(zip(zip(v.cohort, v.trait), v.valid))
    hti = store.query("select cohort, traits, valid, invalid_traits from hti")
    for r in hti.drop_duplicates(["cohort", "traits"]).itertuples():
        bad = [t for t in r.traits.split("+") if not valid[(r.cohort, t)]]
        assert r.valid == (not bad) and (r.invalid_traits or "") == "+".join(bad)
    site = store.query("select * from site_effects")
    assert len(site) == len(v) and site.p_value.between(0, 1).all() and site.n_sites.eq(5).all()
    assert not site.site_dependent.any()  # the demo draws expression whatever the site
    assert (site.n_unseen_slides == 0).all()
    # every usable slide has its stain statistics, from which the site report predicts the site
    stain = store.query("select s.* from stain s join slides d using (cohort, slide_id) where d.status = 'ok'")
    assert len(stain) == store.query("select count(*) n from slides where status = 'ok'").n[0]
    assert (stain.status == "ok").all() and site.site_from_stain_bacc.between(0, 1).all()
    assert not site.note.fillna("").str.contains("stain").any()


def test_survival_table_and_no_training_patient(foundation):
    cfg, _, store = foundation
    sv = store.query("select * from survival")
    assert {"hti>0.5 vs <=0.5", "hti>0.7 vs <=0.3", "hti continuous (Cox)"} <= set(sv.grouping)
    lr = sv[sv.method == "logrank"]
    assert lr.logrank_p.dropna().between(0, 1).all()
    split = lr[lr.grouping == "hti>0.5 vs <=0.5"]
    assert len(split) == 2 and (split.n_low + split.n_high > 20).all()
    from pathomch_assets.survival import leaked_patients, survival_set

    labels, splits = store.query("select * from labels"), store.query("select * from splits")
    for cohort, pair in (("brca", ["MKI67", "miR-17-5p"]), ("luad", ["miR-17-5p", "KRAS"])):
        lab, sp = labels[labels.cohort == cohort], splits[splits.cohort == cohort]
        patients = survival_set(lab, sp[sp["round"] == 0], pair)
        assert patients and not leaked_patients(patients, lab, sp, pair)


def test_rematerializing_one_model_touches_only_its_rows(foundation):
    import dagster as dg

    from pathomch_assets.partitions import model_key

    cfg, _, store = foundation
    before = store.query("select * from model_metrics order by all")
    files = {p: p.stat().st_mtime_ns for p in cfg.models_dir.rglob("model.keras")}
    defs = build_definitions(cfg)
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.get()
    result = dg.materialize(
        [a for a in defs.assets],
        selection=[dg.AssetKey(["brca", "trait_model"])],
        instance=instance,
        partition_key=model_key("brca/MKI67", "round_2"),
        resources=defs.resources,
    )
    assert result.success and job is not None
    after = store.query("select * from model_metrics order by all")
    changed = {p for p, t in files.items() if p.stat().st_mtime_ns != t}
    assert changed == {cfg.models_dir / "brca" / "MKI67" / "round_2" / "model.keras"}
    key = ["cohort", "trait", "model", "eval_set"]
    assert len(after) == len(before) and not after.duplicated(key).any()

    def other(d):
        return d[~((d.trait == "MKI67") & (d.cohort == "brca") & (d.model == "round_2"))].reset_index(drop=True)

    pd.testing.assert_frame_equal(other(before), other(after))


ASSET_STALENESS = "{ assetNodes { assetKey { path } partitionKeys staleStatusByPartition } }"

ROOT_CAUSES = """query($key: AssetKeyInput!, $p: [String!]) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { staleCausesByPartition(partitions: $p) { key { path } partitionKey category reason } } } }"""


def test_a_retrained_model_of_one_cohort_stales_nothing_of_another(foundation, monkeypatch):
    """In `dagster dev`, driven over its GraphQL API as the UI is: brca's model round_0|brca/MKI67 is retrained
    (a backfill of that one partition, under the daemon); every partition of every luad asset stays fresh, and
    what the model feeds in brca is stale, because of that model."""
    import dagster as dg

    from .browser import dagster_dev
    from .test_living import backfill, gql

    cfg, _, _ = foundation
    monkeypatch.setenv("PATHOMCH_CONFIG", str(cfg.source))  # the code location dagster dev loads
    monkeypatch.setenv("PATHOMCH_EXECUTOR", "in_process")
    model = str(dg.MultiPartitionKey({"target": "brca/MKI67", "round": "round_0"}))
    with dagster_dev(Path(os.environ["DAGSTER_HOME"]), timeout=300) as url:
        backfill(url, {"brca/trait_model": [model]})
        status = {
            "/".join(n["assetKey"]["path"]): dict(zip(n["partitionKeys"], n["staleStatusByPartition"]))
            for n in gql(url, ASSET_STALENESS)["assetNodes"]
        }

        def causes(asset: str, partition: str) -> set[tuple[str, str, str]]:
            """The root causes the UI shows ("DATA: trait_model round_0|brca/MKI67 has a new data version")."""
            node = gql(url, ROOT_CAUSES, key={"path": asset.split("/")}, p=[partition])["assetNodeOrError"]
            return {
                ("/".join(c["key"]["path"]), c["partitionKey"], c["category"])
                for c in node["staleCausesByPartition"][0]
            }

        ensemble_causes = causes("brca/ensemble", "brca/MKI67")  # (an earlier test may have retrained round_2)
        assert ("brca/trait_model", model, "DATA") in ensemble_causes
        assert {(k, p.split("|")[1]) for k, p, _ in ensemble_causes} == {("brca/trait_model", "brca/MKI67")}
        some_slide = next(iter(status["brca/slide_predictions"]))
        assert ("brca/trait_model", model, "DATA") in causes("brca/slide_predictions", some_slide)
    luad = {a: st for a, st in status.items() if a.startswith("luad/")}
    assert len(luad) == 13 and sum(map(len, luad.values())) > 100
    assert {a: {k: v for k, v in st.items() if v != "FRESH"} for a, st in luad.items()} == dict.fromkeys(luad, {})
    assert status["brca/trait_model"][model] == "FRESH"
    assert status["brca/ensemble"]["brca/MKI67"] == "STALE" and status["brca/ensemble"]["brca/ESR1"] == "FRESH"
    fed = ("slide_predictions", "slide_cartography", "model_evaluation", "trait_validity", "site_effects")
    for name in (*fed, "survival_analysis"):
        assert set(status[f"brca/{name}"].values()) == {"STALE"}, (name, status[f"brca/{name}"])
    for name in ("slide_tiles", "expression", "labels", "splits", "clinical"):  # upstream of the model: untouched
        assert set(status[f"brca/{name}"].values()) == {"FRESH"}, name


def test_new_slide_is_scored_mapped_without_retraining(foundation):
    import dagster as dg

    from pathomch_assets.demo_cohort import compose_slide, load_source_tiles, write_pyramid

    cfg, _, store = foundation
    defs = build_definitions(cfg)
    sensor = defs.resolve_sensor_def("new_slides_sensor")
    instance = dg.DagsterInstance.get()
    first = sensor(dg.build_sensor_context(instance=instance))  # everything already known: nothing to do
    assert not first.run_requests
    splits_before = store.query("select * from splits order by all")
    models_before = {p: p.stat().st_mtime_ns for p in cfg.models_dir.rglob("*") if p.is_file()}
    # a new patient's slide, with the MKI67 morphology planted on every tissue tile
    sid = "TCGA-ZZ-9999-01Z-00-DX1.NEW"
    plan = planted_slide_plan(sid)
    path = cfg.cohorts["brca"].slides_dir / plan.file
    write_pyramid(path, compose_slide(plan, load_source_tiles()), plan.style)
    try:
        tick = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
        assert [r.partition_key for r in tick.run_requests] == [f"brca/{sid}"]
        (add,) = tick.dynamic_partitions_requests
        assert (add.partitions_def_name, tick.run_requests[0].job_name) == ("brca_slides", "brca_process_slides")
        instance.add_dynamic_partitions(add.partitions_def_name, add.partition_keys)
        job = defs.resolve_job_def("brca_process_slides")
        # with the tick's tags, as the daemon launches it: the slide the tick found is handed over (no folder listing)
        assert json.loads(tick.run_requests[0].tags[SLIDE_TAG])["path"] == str(path)
        run = job.execute_in_process(partition_key=f"brca/{sid}", instance=instance, tags=tick.run_requests[0].tags)
        assert run.success
        assert store.query(f"select count(*) n from tiles where slide_id = '{sid}'").n[0] == 20
        scores = store.query(f"select * from slide_scores where slide_id = '{sid}' and model = 'ensemble'")
        assert set(scores.trait) == set(cfg.cohorts["brca"].traits)
        # the calls are the existing ensemble's: an independent 2-of-3 vote of the member models from disk
        import keras

        from pathomch_assets.layout import tile_path as tile_file
        from pathomch_assets.tilestore import read_tiles

        members = json.loads((cfg.models_dir / "brca" / "MKI67" / "ensemble.json").read_text())["members"]
        images, _ = read_tiles(tile_file(cfg.tiles_dir, "brca", sid))
        x = keras.ops.image.resize(images.astype("float32"), (cfg.training.input_px,) * 2, interpolation="area")
        votes = sum(
            (
                keras.models.load_model(cfg.models_dir / "brca" / "MKI67" / m / "model.keras").predict(
                    np.round(np.asarray(x)), verbose=0
                )[:, 0]
                >= 0.5
            ).astype(int)
            for m in members
        )
        calls = pd.read_parquet(cfg.data_dir / "predictions" / "brca" / "slides" / f"{sid}.parquet")
        assert (calls[calls.trait == "MKI67"].call.to_numpy() == (votes >= 2)).mean() >= 0.95
        # ...and the planted morphology raises the score above the low-expression slides'
        low = store.query(
            "select avg(s.score) m from slide_scores s join labels l using (cohort, patient_id) "
            "where s.cohort = 'brca' and s.model = 'ensemble' and s.trait = 'MKI67' and l.trait = 'MKI67' "
            "and l.subset = 'labeled' and l.label = 0"
        ).m[0]
        assert scores.set_index("trait").score["MKI67"] > low
        assert len(store.query(f"select * from hti where slide_id = '{sid}'")) == 1
        pd.testing.assert_frame_equal(splits_before, store.query("select * from splits order by all"))
        assert {p: p.stat().st_mtime_ns for p in cfg.models_dir.rglob("*") if p.is_file()} == models_before
        assert not sensor(dg.build_sensor_context(instance=instance, cursor=tick.cursor)).run_requests
    finally:
        path.unlink()
