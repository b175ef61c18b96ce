"""One configuration per run (issue 31): the definitions and their resource come from the same loaded file; a file
edited under loaded definitions is refused by their runs, and reloading builds both again from it."""

import dagster as dg
import pytest

from pathomch_assets.config import load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.resources import ConfigChanged, PathomchResource


@pytest.fixture
def config(tmp_path):
    (tmp_path / "slides").mkdir()
    for name in ("m.tsv", "mi.csv"):
        (tmp_path / name).touch()
    path = tmp_path / "p.yaml"
    path.write_text(
        "data_dir: out\nduckdb_path: out/p.duckdb\nseed: 3\ncohorts:\n  c:\n    slides_dir: slides\n"
        "    mrna: m.tsv\n    mirna: mi.csv\n    traits: [A, B]\n"
    )
    return path


@dg.asset
def settings_seen(pathomch: PathomchResource) -> dg.MaterializeResult:
    cfg = pathomch.get_config()
    return dg.MaterializeResult(metadata={"seed": cfg.seed, "traits": ",".join(cfg.cohorts["c"].traits)})


def run(resource) -> dg.ExecuteInProcessResult:
    return dg.materialize([settings_seen], resources={"pathomch": resource}, raise_on_error=False)


def seen(result) -> dict:
    mat = result.asset_materializations_for_node("settings_seen")[0]
    return {k: v.value for k, v in mat.metadata.items()}


def test_a_run_uses_the_configuration_its_definitions_were_built_from(config):
    defs = build_definitions(config_path=str(config))
    resource = defs.resources["pathomch"]
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey(["c", "ensemble"])).partitions_def.get_partition_keys() == ["c/A", "c/B"]
    result = run(resource)
    assert result.success and seen(result) == {"seed": 3, "traits": "A,B"}
    # edited under the loaded definitions (as under a running `dagster dev`): a new trait the graph does not have
    config.write_text(config.read_text().replace("seed: 3", "seed: 4").replace("[A, B]", "[A, B, C]"))
    result = run(resource)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.cause.message
    assert "ConfigChanged" in message and str(config) in message and "Reload the code location" in message
    with pytest.raises(ConfigChanged):
        resource.get_config()
    # reloading the code location builds the graph and the resource again, from the same file
    reloaded = build_definitions(config_path=str(config))
    result = run(reloaded.resources["pathomch"])
    assert result.success and seen(result) == {"seed": 4, "traits": "A,B,C"}
    keys = reloaded.resolve_asset_graph().get(dg.AssetKey(["c", "ensemble"])).partitions_def.get_partition_keys()
    assert keys == ["c/A", "c/B", "c/C"]


def test_a_resource_without_definitions_follows_the_file(config):
    resource = PathomchResource(config_path=str(config))
    assert resource.get_config().seed == 3
    config.write_text(config.read_text().replace("seed: 3", "seed: 4"))
    assert resource.get_config().seed == 4 == load_config(config).seed
