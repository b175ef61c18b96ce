"""Code versions come from the settings that change results: a faster machine stales nothing, a new tile size
stales the tiles and everything that reads them (issue 31)."""

import dataclasses
import hashlib
import json

import dagster as dg
import pytest

from pathomch_assets.config import load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.tiling import NOT_RESULTS, TilingParams, result_settings
from pathomch_assets.versions import TILE_READERS


def code_versions(cfg) -> dict[str, str | None]:
    graph = build_definitions(cfg).resolve_asset_graph()
    return {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}


def with_tiling(cfg, **changes):
    return cfg.model_copy(update={"tiling": cfg.tiling.model_copy(update=changes)})


@pytest.fixture(scope="module")
def demo():
    cfg = load_config(None, check_files=False)
    return cfg, code_versions(cfg)


@pytest.mark.parametrize(
    "changes",
    [{"workers": 8}, {"threads_per_slide": 16}, {"workers": 64, "threads_per_slide": 3}, {"reader": "openslide"}],
)
def test_settings_of_speed_change_no_code_version(demo, changes):
    cfg, before = demo
    assert all(cfg.tiling.model_dump()[k] != v for k, v in changes.items())  # really a change
    assert code_versions(with_tiling(cfg, **changes)) == before


def test_tile_size_changes_the_tiles_and_everything_downstream(demo):
    cfg, before = demo
    after = code_versions(with_tiling(cfg, tile_px=256))
    graph = build_definitions(cfg).resolve_asset_graph()
    readers = [k for k in graph.get_all_asset_keys() if k.path[-1] in TILE_READERS]
    downstream = {k.to_user_string() for k in dg.AssetSelection.assets(*readers).downstream().resolve(graph)}
    for cohort in ("brca", "luad"):
        names = ("slide_tiles", "trait_model", "ensemble", "slide_predictions", "slide_cartography")
        assert {f"{cohort}/{n}" for n in (*names, "model_evaluation", "survival_analysis")} <= downstream
    changed = {k for k in before if before[k] != after[k]}
    assert changed == downstream, changed ^ downstream
    assert not {"brca/clinical", "luad/clinical"} & changed  # reads no tiles


def test_a_cohorts_analysis_settings_change_only_its_own_code_versions(demo):
    """Trait sets are set per cohort: a new HTI set of luad marks luad's maps and survival stale, not brca's."""
    cfg, before = demo
    luad = cfg.cohorts["luad"]
    extra = [luad.traits[:2]]
    cohorts = {**cfg.cohorts, "luad": luad.model_copy(update={"hti_sets": [*luad.hti_sets, *extra]})}
    after = code_versions(cfg.model_copy(update={"cohorts": cohorts}))
    assert {k for k in before if before[k] != after[k]} == {"luad/slide_cartography", "luad/survival_analysis"}


def test_one_rule_for_tile_reuse_and_code_versions():
    base = TilingParams()
    # the digest is the one it was before the rule had a name: tiles on disk stay reusable
    later = ("qc", "stain_normalize", "stain_target", "stain_sample_tiles")  # added since, off by default
    legacy = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("threads", "reader", *later)}
    assert base.digest() == hashlib.sha1(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:12]
    assert TilingParams(threads=8).digest() == base.digest()
    assert TilingParams(reader="openslide").digest() == base.digest()
    assert TilingParams(tile_px=256).digest() != base.digest()
    exact = TilingParams(scaled_decode=False)
    assert "scaled_decode" not in result_settings(dataclasses.asdict(exact)) and exact.digest() != base.digest()
    # every configured tiling setting either counts or is named as one that does not
    cfg = load_config(None, check_files=False)
    fields = set(cfg.tiling.model_dump())
    assert set(result_settings(cfg.tiling.model_dump())) == fields - NOT_RESULTS
    assert {"workers", "threads_per_slide"} <= NOT_RESULTS and "tile_px" not in NOT_RESULTS
