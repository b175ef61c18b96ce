"""Issue 16: a 64-patient, 3-trait cohort with the demo's own split settings runs end to end.

One trait's validation split lacks a class in two rounds: those rounds are excluded from that trait's
ensemble (named in SQL and in the UI metadata), everything else goes on.  Every diagnostic slide of a
patient is trained on and scored; survival keeps the DX1 slide.  A trait left with fewer usable rounds
than ensemble.size fails alone.
"""

import dataclasses
import json
import tempfile
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pathomch_assets.config import load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.partitions import model_key
from pathomch_assets.runner import materialize_all
from pathomch_assets.tables import TableStore

from .conftest import UNGATED

pytestmark = pytest.mark.slow

DEMO_SPLITS = (0.3, 0.15)  # pathomch_assets/configs/demo.yaml: test_fraction, val_fraction


def excluded_rounds(spec, seed) -> dict[str, list[int]]:
    """Rounds per trait whose train or validation split lacks a class, from the generated expression
    tables through the real readers, labels and splits (no slides)."""
    from pathomch_assets.demo_cohort import expression_tables, load_source_tiles, plan_cohort, write_mirna, write_mrna
    from pathomch_assets.ensemble import missing_class
    from pathomch_assets.expression import read_traits
    from pathomch_assets.labels import label_table
    from pathomch_assets.splits import assign_splits

    patients, with_slides, _, shares, _, _ = plan_cohort(spec, seed, sorted(load_source_tiles()))
    mrna, mirna = expression_tables(spec, seed, patients, with_slides, shares)
    with tempfile.TemporaryDirectory() as tmp:
        write_mrna(mrna, Path(tmp) / "m.tsv")
        write_mirna(mirna, Path(tmp) / "mi.csv")
        expr = read_traits(list(spec.traits), Path(tmp) / "m.tsv", Path(tmp) / "mi.csv", set(with_slides))
    labels = label_table(expr.dropna(subset=["value"]), spec.name, 20, 80, 10)
    splits = assign_splits(with_slides, seed, *DEMO_SPLITS, 5)
    out = {}
    for trait, lab in labels[labels.subset == "labeled"].groupby("trait"):
        rows = lab.merge(splits, on="patient_id").assign(slide_id=lambda d: d.patient_id)
        out[trait] = [r for r, g in rows.groupby("round") if missing_class(g)]
        if missing_class(rows[rows["round"] == 0], splits=("test",)):
            out[trait] = list(range(5))  # a test set without a class: not this scenario
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from pathomch_assets.demo_cohort import DEFAULT_COHORTS, build_demo

    spec = dataclasses.replace(DEFAULT_COHORTS[0], n_patients=64)
    # the case: one trait loses two rounds (validation with one class), every trait keeps >= 3
    seed = next(
        s
        for s in range(1, 100)
        if (ex := excluded_rounds(spec, s)) and sorted(len(v) for v in ex.values()) == [0, 0, 2]
    )
    trait = next(t for t, v in excluded_rounds(spec, seed).items() if v)
    out = tmp_path_factory.mktemp("small")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster_home")))
    # the demo's split settings (the case) with short training: these tests check which rounds, slides and
    # traits go where, not how well the models learn (test_demo_results does, on the full demo)
    overrides = {**UNGATED, "training": {"max_epochs": 2}}
    config = build_demo(out, seed=seed, cohorts=(spec,), workers=1, progress=lambda *a: None, overrides=overrides)
    cfg = load_config(config)
    summary = materialize_all(build_definitions(cfg), cfg, log=lambda *a: None)
    yield cfg, summary, TableStore(cfg.tables_dir, cfg.duckdb_path), trait, excluded_rounds(spec, seed)[trait]
    mp.undo()


def latest_metadata(asset: str, partition: str) -> dict:
    """The metadata of brca's ``asset`` last materialized for ``partition``."""
    instance = dg.DagsterInstance.get()
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(["brca", asset]), asset_partitions=[partition]), limit=1
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_small_cohort_runs_end_to_end_without_the_excluded_rounds(small):
    cfg, summary, store, trait, rounds = small
    assert (cfg.splits.test_fraction, cfg.splits.val_fraction) == DEMO_SPLITS
    assert not summary.failed and not summary.skipped, (summary.failed, summary.skipped)
    excluded = [f"round_{r}" for r in rounds]
    status = store.query("select trait, model, status, reason from model_rounds order by trait, model")
    assert len(status) == 15
    ex = status[status.status == "excluded"]
    assert ex.trait.tolist() == [trait, trait] and ex.model.tolist() == excluded
    assert ex.reason.str.contains("the val split has only").all()
    # no model, no metrics for excluded rounds; an ensemble for every trait from the usable ones
    metrics = store.query("select * from model_metrics")
    assert not metrics[(metrics.trait == trait) & metrics.model.isin(excluded)].size
    assert set(metrics[metrics.model == "ensemble"].trait) == set(cfg.cohorts["brca"].traits)
    members = json.loads((cfg.models_dir / "brca" / trait / "ensemble.json").read_text())
    assert not set(members["members"]) & set(excluded) and set(members["excluded"]) == set(excluded)
    # Table 1: mean of the usable rounds with its range, in SQL and in the UI
    t1 = store.query(
        f"select * from model_metrics where model = 'mean_of_rounds' and eval_set = 'test' and trait = '{trait}'"
    ).iloc[0]
    assert t1.n_models == 3 and t1.auc_min <= t1.auc <= t1.auc_max
    meta = latest_metadata("ensemble", f"brca/{trait}")
    assert all(m in meta["excluded_rounds"] for m in excluded) and meta["usable_rounds"] == 3
    evaluation = latest_metadata("model_evaluation", "brca")
    header = evaluation["table_1"].splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:5] == ["trait", "test (mean of runs)", "min", "max", "runs"]
    assert all(m in evaluation["excluded_rounds"] for m in excluded)
    key = str(model_key(f"brca/{trait}", excluded[0]))
    assert "excluded from the ensemble" in latest_metadata("trait_model", key)["excluded"]


def test_every_diagnostic_slide_trains_and_scores_and_dx1_alone_in_survival(small):
    cfg, _, store, _, _ = small
    slides = store.query("select slide_id, patient_id from slides where status = 'ok'")
    two = slides.groupby("patient_id").slide_id.nunique()
    multi = set(two[two > 1].index)
    assert multi  # the generator gives some patients a DX2 slide
    scores = store.query("select * from slide_scores where model = 'round_1'")
    assert set(slides.slide_id) <= set(scores.slide_id)  # every slide scored, DX2 included
    # training used every slide of the round's training patients
    counts = store.query("select * from split_counts where subset = 'all'")
    assert (counts.groupby("round").n_slides.sum() == len(slides)).all()
    assert (counts.n_slides >= counts.n_patients).all() and (counts.n_slides > counts.n_patients).any()
    rounds = store.query("select * from model_rounds where status = 'trained'")
    assert (rounds.train_slides >= rounds.train_patients).all() and (rounds.train_slides > rounds.train_patients).any()
    # slide-level AUCs count slides
    m = store.query("select * from model_metrics where model like 'round_%' or model = 'ensemble'")
    assert (m.n_slides >= m.n_patients).all() and (m.n_slides > m.n_patients).any()
    # survival: one DX1 slide per patient
    from pathomch_assets.cohort_survival import read_survival_frame

    frame, _ = read_survival_frame(store, "brca", ["MKI67", "miR-17-5p"])
    assert len(frame) and frame.patient_id.is_unique and frame.slide_id.str.contains("-DX1").all()
    hti = store.query("select slide_id, patient_id from hti")
    assert (hti[hti.patient_id.isin(multi)].groupby("patient_id").slide_id.nunique() > 1).any()  # DX2 mapped too


def test_a_trait_with_too_few_usable_rounds_fails_alone(small, capsys, monkeypatch):
    """`pathomch materialize` with ensemble.size 4: the trait with 3 usable rounds fails alone, with its message
    printed; every other trait is scored, evaluated, mapped and analysed."""
    from pathomch_assets.cli import main

    cfg, _, store, trait, rounds = small
    others = [t for t in cfg.cohorts["brca"].traits if t != trait]
    (pair,) = cfg.cohorts["brca"].survival_pairs
    assert trait in pair  # the failing trait is in the configured survival pair; the other pair has none
    raw = yaml.safe_load(Path(cfg.source).read_text())
    raw["ensemble"] = {"size": 4, "min_votes": 3}
    raw["cohorts"]["brca"]["survival_pairs"] = [list(pair), others]
    path = Path(cfg.source).with_name("size4.yaml")
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PATHOMCH_CONFIG", str(path))
    assert main(["materialize", "--config", str(path), "--select", "ensemble+"]) == 1
    printed = capsys.readouterr()
    text = printed.out + printed.err
    # the command line names the failed partition, prints its message, and skips nothing
    assert text.count("FAILED:") == 1 and f"FAILED: brca/ensemble [brca/{trait}]" in text
    assert f"brca/{trait}: only 3 usable rounds" in text and "ensemble.size is 4" in text
    assert all(f"round_{r}" in text for r in rounds) and "other traits are not affected" in text
    assert "skipped (upstream failed)" not in text and "skipping" not in text
    # no ensemble for the failing trait any more, the others' remade with 4 members
    assert not (cfg.models_dir / "brca" / trait / "ensemble.json").exists()
    for t in others:
        assert len(json.loads((cfg.models_dir / "brca" / t / "ensemble.json").read_text())["members"]) == 4
    ens = store.query("select distinct trait from model_metrics where model = 'ensemble'")
    assert sorted(ens.trait) == sorted(others)
    # every usable slide scored by the other traits' ensembles, none by the failing one's
    n_ok = store.query("select count(*) n from slides where status = 'ok'").n[0]
    scores = store.query(
        "select trait, count(distinct slide_id) n from slide_scores where model = 'ensemble' group by 1"
    )
    assert sorted(scores.trait) == sorted(others) and (scores.n == n_ok).all()
    assert trait in latest_metadata("model_evaluation", "brca")["traits_without_ensemble"]
    assert (store.query("select distinct trait from correlations").trait.sort_values() == sorted(others)).all()
    # maps and survival for the pair without the failing trait only
    assert set(store.query("select distinct traits from hti").traits) == {"+".join(others)}
    survival = store.query("select * from survival")
    assert set(survival.traits) == {"+".join(others)} and survival.p_value.notna().any()
    first = store.query("select slide_id from slides where status = 'ok' order by 1 limit 1").slide_id[0]
    assert trait in latest_metadata("slide_predictions", f"brca/{first}")["traits_without_ensemble"]
