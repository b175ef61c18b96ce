"""A one-slide run reads that slide only: the sensor's slide reference (checked again, refused outside the
allowed folders), a lookup by id without it, and the slide's own partition and prediction files."""

import json
import shutil

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from bench.performance import make_bench_slide
from pathomch_assets import ingest, layout, sensors, slides
from pathomch_assets.assets.ingest import build as slide_tiles_of
from pathomch_assets.config import load_config
from pathomch_assets.files import partition_filename
from pathomch_assets.ingest import tile_positions
from pathomch_assets.partitions import slide_job_name, slides_name
from pathomch_assets.partitions import slides as slide_partitions
from pathomch_assets.predictions import MemberModels, read_member, write_member
from pathomch_assets.resources import PathomchResource
from pathomch_assets.slides import SLIDE_TAG, ref_from_tag, ref_tag
from pathomch_assets.tables import TableStore

NEW = "TCGA-ZZ-ZZZZ-01Z-00-DX1"
OTHERS = [f"TCGA-A1-{i:04d}-01Z-00-DX1" for i in range(4)]
MEMBERS = ["round_0", "round_1"]
CONFIG = """\
data_dir: out
duckdb_path: out/p.duckdb
cohorts:
  brca:
    slides_dir: slides
    mrna: m.tsv
    traits: [MKI67]
"""


class Log:
    def __init__(self):
        self.lines = []

    def info(self, msg):
        self.lines.append(msg)

    warning = error = info


@pytest.fixture(scope="module")
def bench_slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("slide")
    return make_bench_slide(d / "new.svs", 2048, seed=5, tissue_share=0.6, pyramid="svs20x")


@pytest.fixture
def cohort(tmp_path, bench_slide):
    """A processed cohort whose other slides' files are all unreadable garbage, and a new slide: (cfg, store)."""
    (tmp_path / "slides").mkdir()
    (tmp_path / "m.tsv").touch()
    (tmp_path / "pathomch.yaml").write_text(CONFIG)
    cfg = load_config(tmp_path / "pathomch.yaml")
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    store.ensure_views()  # written once by the deployment, before the garbage (creating a view reads the files)
    for s in OTHERS:  # any read of another slide's file fails
        (tmp_path / "slides" / f"{s}.svs").write_bytes(b"not a slide")
        for table in ("slides", "tiles"):
            (store.tables_dir / table / f"{partition_filename(f'brca/{s}')}.parquet").write_bytes(b"not parquet")
        for m in MEMBERS:
            f = layout.member_predictions_file(cfg, "brca", "MKI67", m, s)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"not parquet")
    layout.ensemble_file(cfg, "brca", "MKI67").parent.mkdir(parents=True, exist_ok=True)
    layout.ensemble_file(cfg, "brca", "MKI67").write_text(json.dumps({"members": MEMBERS}))
    shutil.copy(bench_slide, tmp_path / "slides" / f"{NEW}.svs")
    return cfg, store


@pytest.fixture
def no_listing(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the cohort's folder was listed")

    monkeypatch.setattr(ingest, "discover_cohort", refuse)
    monkeypatch.setattr(slides, "discover_cohort", refuse)


def tick_tag(cfg) -> str:
    """The sensor's run request for the new slide carries the slide it found."""

    @dg.job(name=slide_job_name("brca"), partitions_def=slide_partitions("brca"))
    def job():
        pass

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(slides_name("brca"), [f"brca/{s}" for s in OTHERS])
        result = sensors.build(cfg, {"brca": job})(dg.build_sensor_context(instance=instance))
    (req,) = result.run_requests
    assert req.partition_key == f"brca/{NEW}"
    return req.tags[SLIDE_TAG]


def test_a_one_slide_run_with_the_sensor_tag_reads_no_other_slide_s_files(cohort, no_listing):
    cfg, store = cohort
    tag = tick_tag(cfg)
    assert json.loads(tag)["path"] == str(cfg.cohorts["brca"].slides_dir / f"{NEW}.svs")
    out = ingest.tile_partitions(cfg, store, [f"brca/{NEW}"], Log(), slide_tag=tag)
    row = out.rows[f"brca/{NEW}"]
    assert row["status"] == "ok" and row["n_tiles"] > 0
    # what slide_predictions and slide_cartography read of the tables and the members' predictions
    got = store.read("slides", "cohort = ?", ["brca"], partitions=[f"brca/{NEW}"])
    assert got["slide_id"].tolist() == [NEW]
    assert len(tile_positions(store, "brca", [NEW])[NEW]) == row["n_tiles"]
    members = MemberModels(cfg, "brca", [NEW])
    assert members.traits == ["MKI67"] and all(v == {} for v in members.stored.values())  # new: nothing stored
    with pytest.raises(duckdb.Error):  # the garbage is there: a whole-cohort read fails on it
        store.read("tiles", "cohort = ?", ["brca"])


def test_the_slide_tiles_step_takes_the_slide_from_the_run_s_tag(cohort, no_listing, monkeypatch):
    cfg, store = cohort
    tag = tick_tag(cfg)
    monkeypatch.setattr(ingest, "find_slide", lambda *a: pytest.fail("looked up by id: the run's tag was not used"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(slides_name("brca"), [f"brca/{NEW}"])
        result = dg.materialize(
            [slide_tiles_of("brca")],
            partition_key=f"brca/{NEW}",
            instance=instance,
            resources={"pathomch": PathomchResource(config_path=str(cfg.source))},
            tags={SLIDE_TAG: tag},
        )
        assert result.success
        (mat,) = result.asset_materializations_for_node("brca__slide_tiles")
    assert mat.metadata["status"].value == "ok" and mat.metadata["n_tiles"].value > 0
    assert store.read("slides", partitions=[f"brca/{NEW}"])["path"].tolist() == [json.loads(tag)["path"]]


def test_without_the_tag_the_slide_is_looked_up_by_id_not_by_listing_the_folder(cohort, no_listing):
    cfg, store = cohort
    log = Log()
    out = ingest.tile_partitions(cfg, store, [f"brca/{NEW}"], log)
    assert out.rows[f"brca/{NEW}"]["status"] == "ok"
    assert not log.lines


def test_without_the_tag_a_slide_in_a_gdc_folder_is_found_by_listing(cohort):
    cfg, _ = cohort
    d = cfg.cohorts["brca"].slides_dir
    (d / "0a1b-uuid").mkdir()
    (d / f"{NEW}.svs").rename(d / "0a1b-uuid" / f"{NEW}.svs")
    ref = ingest.slide_refs(cfg, [f"brca/{NEW}"])[f"brca/{NEW}"]
    assert ref is not None and ref.usable and ref.path == d / "0a1b-uuid" / f"{NEW}.svs"


def test_a_tag_outside_the_allowed_folders_is_refused_and_the_slide_looked_up_inside(cohort, tmp_path, no_listing):
    cfg, _ = cohort
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(cfg.cohorts["brca"].slides_dir / f"{NEW}.svs", outside / f"{NEW}.svs")
    forged = ref_tag(slides.SlideRef("brca", NEW, outside / f"{NEW}.svs"))
    ref, why = ref_from_tag("brca", cfg.cohorts["brca"], NEW, forged)
    assert ref is None and "outside" in why
    log = Log()
    ref = ingest.slide_refs(cfg, [f"brca/{NEW}"], forged, log)[f"brca/{NEW}"]
    assert ref.path == cfg.cohorts["brca"].slides_dir / f"{NEW}.svs" and ref.usable
    assert "outside" in log.lines[0] and "looked up by id" in log.lines[0]
    # a link inside slides_dir to the file outside is refused too (its real path is checked)
    link = cfg.cohorts["brca"].slides_dir / "TCGA-A2-0001-01Z-00-DX1.svs"
    link.symlink_to(outside / f"{NEW}.svs")
    ref, why = ref_from_tag("brca", cfg.cohorts["brca"], link.stem, ref_tag(slides.SlideRef("brca", link.stem, link)))
    assert ref is None and "outside" in why
    assert not slides.find_slide("brca", cfg.cohorts["brca"], link.stem).usable


def test_a_tag_of_a_slide_changed_since_the_tick_is_not_trusted(cohort, no_listing):
    cfg, _ = cohort
    tag = tick_tag(cfg)
    path = cfg.cohorts["brca"].slides_dir / f"{NEW}.svs"
    with open(path, "ab") as fh:
        fh.write(b"\0")
    ref, why = ref_from_tag("brca", cfg.cohorts["brca"], NEW, tag)
    assert ref is None and "changed" in why
    assert ref_from_tag("brca", cfg.cohorts["brca"], OTHERS[0], tag)[1].endswith(f"not slide {OTHERS[0]}")


def test_member_predictions_are_stored_and_read_per_slide(cohort):
    cfg, _ = cohort
    preds = pd.DataFrame(
        {"col": [0, 1, 0], "row": 0, "slide_id": ["b", "b", "a"], "p": [0.1, 0.2, 0.3], "tiles_digest": "d"}
    )
    write_member(cfg, "brca", "MKI67", "round_0", preds)
    assert read_member(cfg, "brca", "MKI67", "round_0", ["a"])["p"].tolist() == [0.3]
    assert read_member(cfg, "brca", "MKI67", "round_0")["slide_id"].tolist() == ["a", "b", "b"]
    write_member(cfg, "brca", "MKI67", "round_0", preds[preds.slide_id == "b"])  # slide a no longer scored
    assert read_member(cfg, "brca", "MKI67", "round_0", ["a"]).empty
    # a single file of an earlier version is read where no per-slide files are
    layout.predictions_file(cfg, "brca", "MKI67", "round_1").parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(layout.member_predictions_dir(cfg, "brca", "MKI67", "round_1"))
    preds.to_parquet(layout.predictions_file(cfg, "brca", "MKI67", "round_1"), index=False)
    got = read_member(cfg, "brca", "MKI67", "round_1", ["b"])
    assert np.allclose(got["p"], [0.1, 0.2])


def test_with_a_manifest_a_slide_is_looked_up_by_its_own_lines_only(tmp_path):
    """Without the tag, a manifest cohort's slide comes from its manifest lines (MD5 and size kept, checked in the
    run); other lines' files are not looked at, and a slide the manifest does not list is not found."""
    from pathomch_assets.config import CohortConfig

    d = tmp_path / "slides"
    (d / "uuid-1").mkdir(parents=True)
    (d / "uuid-1" / f"{NEW}.svs").write_bytes(b"slide")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(
        "id\tfilename\tmd5\tsize\tstate\n"
        f"uuid-1\t{NEW}.svs\t{'a' * 32}\t5\treleased\n"
        f"uuid-2\t{OTHERS[0]}.svs\t{'b' * 32}\t7\treleased\n"  # not on disk: would be a missing slide
        f"../up\t{OTHERS[1]}.svs\t{'c' * 32}\t7\treleased\n"  # not a plain name: would be an error
    )
    c = CohortConfig(slides_dir=d, mrna=tmp_path / "m.tsv", traits=["MKI67"], manifest=manifest)
    ref = slides.find_slide("brca", c, NEW)
    assert ref.usable and ref.path == d / "uuid-1" / f"{NEW}.svs" and (ref.md5, ref.size) == ("a" * 32, 5)
    assert ref.listed_in == f"{manifest}:2"
    assert slides.find_slide("brca", c, OTHERS[0]).missing
    assert "not a plain name" in slides.find_slide("brca", c, OTHERS[1]).error
    assert slides.find_slide("brca", c, "TCGA-A1-9999-01Z-00-DX1") is None
    # the same refs as listing the whole cohort
    listed = {r.slide_id: r for r in slides.discover_cohort("brca", c)}
    assert all(slides.find_slide("brca", c, s) == listed[s] for s in listed)
