"""The Dagster definitions load, validate with Dagster's own CLI, and the sensor adds slides."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pathomch_assets.config import load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.partitions import slides_name

from .conftest import OPENSLIDE

ROOT = Path(__file__).resolve().parent.parent


def test_asset_graph_has_partitions():
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    pdefs = {k.to_user_string(): graph.get(k).partitions_def for k in graph.get_all_asset_keys()}
    assert isinstance(pdefs["brca/slide_tiles"], dg.DynamicPartitionsDefinition)
    assert pdefs["brca/slide_tiles"].name == "brca_slides" and pdefs["luad/slide_predictions"].name == "luad_slides"
    assert pdefs["brca/labels"].get_partition_keys() == ["brca"]
    assert pdefs["luad/labels"].get_partition_keys() == ["luad"]
    assert all(k.startswith("brca/") for k in pdefs["brca/ensemble"].get_partition_keys())
    models = [str(k) for k in pdefs["luad/trait_model"].get_partition_keys()]
    assert models and all(k.split("|")[1].startswith("luad/") for k in models)
    assert {f"{c}/{n}" for c in ("brca", "luad") for n in ("expression", "labels", "splits", "clinical")} <= set(pdefs)
    assert {graph.get(k).group_name for k in graph.get_all_asset_keys()} == {"brca", "luad"}


def test_no_dependency_crosses_cohorts():
    """Each cohort's graph stands alone: every parent of an asset (and every asset a check or job reads) is of
    the asset's own cohort, so nothing one cohort does marks another's results stale."""
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    assert {k.path[0] for k in keys} == {"brca", "luad"} and all(len(k.path) == 2 for k in keys)
    edges = [(k, p) for k in keys for p in graph.get(k).parent_keys]
    assert len(edges) > 20
    assert [(k, p) for k, p in edges if p.path[0] != k.path[0]] == []
    for cohort in ("brca", "luad"):
        job = defs.resolve_job_def(f"{cohort}_process_slides")
        assert {k.path[0] for k in job.asset_layer.executable_asset_keys} == {cohort}
    for check in graph.asset_check_keys:
        assert check.asset_key.path[0] in ("brca", "luad")


def test_dagster_validates_the_workspace(tmp_path, monkeypatch):
    """As a newcomer runs it, before the demo has made ``make``'s ``$DAGSTER_HOME`` (a fresh clone)."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_sensor_adds_new_slides_once(small_demo, tmp_path):
    cfg = load_config(small_demo)
    defs = build_definitions(cfg)
    sensor = defs.resolve_sensor_def("new_slides_sensor")
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance))
        keys = [k for req in result.dynamic_partitions_requests for k in req.partition_keys]
        assert len(keys) > 50 and all(k.split("/")[0] in ("brca", "luad") for k in keys)
        assert {r.partition_key for r in result.run_requests} == set(keys)
        assert [r.partitions_def_name for r in result.dynamic_partitions_requests] == ["brca_slides", "luad_slides"]
        assert {r.job_name for r in result.run_requests} == {"brca_process_slides", "luad_process_slides"}
        assert all(r.job_name == f"{r.partition_key.split('/')[0]}_process_slides" for r in result.run_requests)
        for req in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        again = sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
        assert not again.run_requests and not again.dynamic_partitions_requests  # idempotent
        new = cfg.cohorts["brca"].slides_dir / "TCGA-ZZ-0001-01Z-00-DX1.new.svs"
        shutil.copy(OPENSLIDE / "small.svs", new)
        try:
            third = sensor(dg.build_sensor_context(instance=instance, cursor=again.cursor))
            assert [r.partition_key for r in third.run_requests] == ["brca/TCGA-ZZ-0001-01Z-00-DX1.new"]
            assert third.run_requests[0].tags["pathomch/reason"] == "new slide"
            instance.add_dynamic_partitions(slides_name("brca"), ["brca/TCGA-ZZ-0001-01Z-00-DX1.new"])
            shutil.copy(OPENSLIDE / "unreadable.svs", new)  # same name, new content
            fourth = sensor(dg.build_sensor_context(instance=instance, cursor=third.cursor))
            assert [r.tags["pathomch/reason"] for r in fourth.run_requests] == ["slide changed (new size/mtime)"]
        finally:
            new.unlink()
        fifth = sensor(dg.build_sensor_context(instance=instance, cursor=fourth.cursor))
        assert [(r.partition_key, r.tags["pathomch/reason"]) for r in fifth.run_requests] == [
            ("brca/TCGA-ZZ-0001-01Z-00-DX1.new", "slide file removed")
        ]
        assert not sensor(dg.build_sensor_context(instance=instance, cursor=fifth.cursor)).run_requests


def test_loading_the_definitions_imports_neither_tensorflow_nor_matplotlib():
    """Every step process, code server and `pathomch` command loads the definitions: what draws or trains
    imports its library when it runs (matplotlib alone adds about 0.9 s to each start)."""
    code = (
        "import json, sys, pathomch_assets.definitions; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    assert "dagster" in loaded and not loaded & {"matplotlib", "tensorflow", "keras"}


def test_loading_the_definitions_prints_no_warning():
    """What a user sees from every `pathomch` command, code server and step process: Dagster's warnings about
    the beta APIs the graph is built on are silenced where it is built, not left to each caller."""
    out = subprocess.run(
        [sys.executable, "-c", "import pathomch_assets.definitions"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert "Warning" not in out.stderr, out.stderr


def test_a_bare_asset_name_selects_it_in_every_cohort_and_a_prefixed_one_in_its_cohort():
    from pathomch_assets.runner import RequestError, check_selection, parse_selection

    graph = build_definitions().resolve_asset_graph()

    def keys(text):
        return sorted(k.to_user_string() for k in parse_selection(text).resolve(graph))

    assert keys("trait_model") == ["brca/trait_model", "luad/trait_model"]
    assert keys("labels,brca/clinical") == ["brca/clinical", "brca/labels", "luad/labels"]
    down = keys("brca/trait_model+")
    assert "brca/ensemble" in down and all(k.startswith("brca/") for k in down)
    assert keys("key:luad/ensemble") == ["luad/ensemble"]
    check_selection(graph, "trait_model,brca/ensemble")  # names something: no error
    with pytest.raises(RequestError, match="did you mean 'luad/ensemble'"):
        check_selection(graph, "luad/ensembel")
