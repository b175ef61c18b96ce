"""Faults and guards: concurrent writers, resuming, privacy, leakage (see docs/reliability.md)."""

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import dagster as dg
import pandas as pd

from pathomch_assets.checks import selection_leakage
from pathomch_assets.config import load_config
from pathomch_assets.expression import read_traits
from pathomch_assets.runner import materialize_all
from pathomch_assets.splits import assign_splits
from pathomch_assets.tables import TableStore
from pathomch_assets.tiling import TilingParams, tile_slide

from .conftest import OPENSLIDE


def _write_partitions(args):
    tables, db, worker = args
    store = TableStore(tables, db)
    for i in range(25):
        rows = pd.DataFrame(
            {
                "cohort": f"w{worker}",
                "round": i,
                "patient_id": [f"P{worker}-{i}-{j}" for j in range(40)],
                "split": "train",
            }
        )
        store.write("splits", f"w{worker}/{i}", rows)
        if i % 5 == 0:
            store.ensure_views()
    return worker


def test_parallel_writers_lose_nothing(tmp_path):
    args = [(tmp_path / "tables", tmp_path / "p.duckdb", w) for w in range(4)]
    with ProcessPoolExecutor(4, mp_context=get_context("spawn")) as pool:
        assert sorted(pool.map(_write_partitions, args)) == [0, 1, 2, 3]
    store = TableStore(tmp_path / "tables", tmp_path / "p.duckdb")
    df = store.query("select * from splits")
    assert len(df) == 4 * 25 * 40 and not df.duplicated().any()
    assert not [p for p in (tmp_path / "tables").rglob("*") if p.name.endswith(".tmp")]


def test_label_and_macro_images_are_never_read(tmp_path, monkeypatch):
    import openslide

    def forbidden(self):
        raise AssertionError("associated images (label, macro) must not be read")

    monkeypatch.setattr(openslide.OpenSlide, "associated_images", property(forbidden))
    res = tile_slide(
        "c", "small", OPENSLIDE / "small.svs", tmp_path / "s.tfrecord", TilingParams(20, 8, max_background_fraction=1.0)
    )
    assert res.status == "ok"


def test_tile_records_carry_no_path(tmp_path):
    import tensorflow as tf

    tile_slide(
        "c", "small", OPENSLIDE / "small.svs", tmp_path / "s.tfrecord", TilingParams(20, 8, max_background_fraction=1.0)
    )
    raw = next(iter(tf.data.TFRecordDataset(str(tmp_path / "s.tfrecord")))).numpy()
    ex = tf.train.Example.FromString(raw)
    assert set(ex.features.feature) == {"image", "col", "row"}
    assert str(OPENSLIDE).encode() not in (tmp_path / "s.tfrecord").read_bytes()


def test_slide_without_magnification_is_recorded_with_the_reason(tmp_path):
    res = tile_slide("c", "boxes", OPENSLIDE / "boxes.tiff", tmp_path / "b.tfrecord", TilingParams(20, 64))
    assert res.status == "error" and "boxes.tiff" in res.error and "default_magnification" in res.error
    ok = tile_slide(
        "c", "boxes", OPENSLIDE / "boxes.tiff", tmp_path / "b.tfrecord", TilingParams(20, 64), default_magnification=20
    )
    assert ok.status == "ok" and ok.info["magnification_source"] == "config_default"


def test_patient_without_expression_is_left_out_not_an_error(tmp_path):
    p = tmp_path / "m.tsv"
    p.write_text("gene_id\tTCGA-A1-A0SB-01A-11R-A144-07\nMKI67|4288\t3.5\n")
    df = read_traits(["MKI67"], p, None, patients={"TCGA-A1-A0SB", "TCGA-ZZ-0000"})
    assert df.patient_id.tolist() == ["TCGA-A1-A0SB"]


def test_test_patient_in_validation_fails_the_selection_guard():
    s = assign_splits([f"TCGA-AA-{i:04d}" for i in range(300)], seed=2).assign(cohort="c")
    assert selection_leakage(s).passed
    test_pid = s[s.split == "test"].patient_id.iloc[0]
    leaked = pd.concat([s, pd.DataFrame([{"cohort": "c", "round": 3, "patient_id": test_pid, "split": "val"}])])
    assert not selection_leakage(leaked).passed


def test_missing_only_resumes_without_redoing_finished_partitions(small_demo, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    cfg = load_config(small_demo)
    calls = []
    part = dg.StaticPartitionsDefinition(["a", "b", "c"])

    @dg.asset(partitions_def=part)
    def step(context):
        calls.append(context.partition_key)

    defs = dg.Definitions(assets=[step])
    first = materialize_all(defs, cfg, partitions=["a"], log=lambda *a: None)  # "killed" after partition a
    assert first.runs == 1 and calls == ["a"]
    again = materialize_all(defs, cfg, missing_only=True, log=lambda *a: None)
    assert calls == ["a", "b", "c"] and again.already == 1


def test_failed_check_descriptions_are_reported():
    """`pathomch materialize` prints every failing check with its description (what to change)."""
    from pathomch_assets.runner import failed_checks

    @dg.asset
    def thing():
        return 1

    @dg.asset_check(asset=thing)
    def has_both_classes():
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description="brca/ESR1 round_2: the val split has one class; raise val_fraction",
        )

    @dg.asset_check(asset=thing)
    def fine():
        return dg.AssetCheckResult(passed=True)

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([thing, has_both_classes, fine], instance=instance)
    assert failed_checks(instance, result.run_id) == [
        "thing check has_both_classes (WARN): brca/ESR1 round_2: the val split has one class; raise val_fraction"
    ]


def test_a_failed_partition_fails_alone_where_its_asset_says_so(tmp_path, monkeypatch):
    """A failed partition of a ``FAILS_ALONE`` asset (a trait's ensemble) stops only the partitions mapped to it;
    an asset reading all its partitions runs on.  Any other failed partition stops what reads it, as before."""
    from pathomch_assets.partitions import ALL, FAILS_ALONE

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "slides").mkdir()
    for name in ("m.tsv", "mi.csv"):
        (tmp_path / name).touch()
    config = tmp_path / "p.yaml"
    config.write_text(
        "data_dir: out\nduckdb_path: out/p.duckdb\ncohorts:\n  c:\n    slides_dir: slides\n    mrna: m.tsv\n"
        "    mirna: mi.csv\n    traits: [A]\n"
    )
    cfg = load_config(config)
    traits = dg.StaticPartitionsDefinition(["a", "b", "c"])
    ran = []

    @dg.asset(partitions_def=traits, tags=FAILS_ALONE)
    def per_trait(context):
        if context.partition_key == "b":
            raise dg.Failure("c/b: only 2 usable rounds")

    @dg.asset(partitions_def=traits, deps=[per_trait])
    def same_trait(context):
        ran.append(f"same_trait {context.partition_key}")

    @dg.asset(deps=[dg.AssetDep(per_trait, partition_mapping=ALL)])
    def reads_all():
        ran.append("reads_all")

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["x", "y"]))
    def plain(context):
        if context.partition_key == "x":
            raise dg.Failure("x is broken")

    @dg.asset(deps=[dg.AssetDep(plain, partition_mapping=ALL)])
    def after_plain():
        ran.append("after_plain")

    lines = []
    defs = dg.Definitions(assets=[per_trait, same_trait, reads_all, plain, after_plain])
    summary = materialize_all(defs, cfg, log=lines.append)
    assert sorted(ran) == ["reads_all", "same_trait a", "same_trait c"]
    assert [f.split(" (run")[0] for f in summary.failed] == ["per_trait [b]", "plain [x]"]
    assert "c/b: only 2 usable rounds" in summary.failed[0] and "x is broken" in summary.failed[1]
    assert sorted(summary.skipped) == ["after_plain [unpartitioned]", "same_trait [b]"]
    assert any("c/b: only 2 usable rounds" in line for line in lines)  # printed by `pathomch materialize`
    assert "skipping same_trait [b]: upstream per_trait [b] failed" in lines
