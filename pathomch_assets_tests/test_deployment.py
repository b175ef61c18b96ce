"""The deployment files in deploy/ hold against the schemas of the Dagster libraries that read them
(dagster, dagster-postgres, dagster-k8s), and name files, modules and settings that exist."""

import importlib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes.config_class import class_from_code_pointer
from dagster_k8s.job import get_user_defined_k8s_config

from pathomch_assets.config import load_config
from pathomch_assets.deployment import K8S_TAG

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
IMAGE_ROOT = "/opt/pathomch/"  # where deploy/Dockerfile puts the repository


def in_repo(image_path: str) -> Path:
    assert image_path.startswith(IMAGE_ROOT), image_path
    return DEPLOY.parent / image_path[len(IMAGE_ROOT) :]


@pytest.fixture
def pg_env(monkeypatch):
    for var, value in {
        "DAGSTER_PG_HOST": "db",
        "DAGSTER_PG_USERNAME": "dagster",
        "DAGSTER_PG_PASSWORD": "x",
        "DAGSTER_PG_DB": "dagster",
    }.items():
        monkeypatch.setenv(var, value)


def test_instance_yaml_passes_dagster_and_library_schemas(pg_env):
    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    from dagster_postgres import DagsterPostgresStorage

    assert process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"]).success
    for section in ("run_coordinator", "run_launcher"):
        spec = config[section]
        klass = class_from_code_pointer(spec["module"], spec["class"])  # as the instance loads it
        result = process_config(klass.config_type(), spec.get("config") or {})
        assert result.success, (section, result.errors)
    assert (
        config["concurrency"]["pools"]["default_limit"] >= 1
        and config["concurrency"]["runs"]["max_concurrent_runs"] > 1
    )


def test_failed_runs_are_retried_and_lost_workers_detected(tmp_path, pg_env):
    """run_retries and run_monitoring pass the instance schema and mean to a Dagster instance what they say:
    the daemons that retry failed runs and watch run workers run, with these limits."""
    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    from dagster_k8s import K8sRunLauncher

    # resuming a run whose worker pod was lost needs a launcher that can (the test instance's cannot)
    resume = config["run_monitoring"]["max_resume_run_attempts"]
    assert resume >= 1 and K8sRunLauncher.supports_resume_run.fget(None)
    assert K8sRunLauncher.supports_check_run_worker_health.fget(None)
    settings = {
        "run_retries": config["run_retries"],
        "run_monitoring": {**config["run_monitoring"], "max_resume_run_attempts": 0},
    }
    with dg.instance_for_test(overrides=settings) as instance:
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure  # an I/O error inside a step is retried too
        assert instance.run_monitoring_enabled and instance.run_monitoring_start_timeout_seconds >= 300
        daemons = set(instance.get_required_daemon_types())
        assert {"MONITORING", "EVENT_LOG_CONSUMER"} <= daemons, daemons  # the retry daemon consumes run failures
    typo = (DEPLOY / "dagster.yaml").read_text().replace("max_retries:", "max_retires:")
    (tmp_path / "dagster.yaml").write_text(typo)
    with pytest.raises(Exception, match="max_retires"):
        dagster_instance_config(str(tmp_path), "dagster.yaml")


def test_instance_schema_check_is_real(tmp_path, pg_env):
    text = (DEPLOY / "dagster.yaml").read_text().replace("job_namespace", "job_namepsace")
    (tmp_path / "dagster.yaml").write_text(text)
    config, _ = dagster_instance_config(str(tmp_path), "dagster.yaml")
    from dagster_k8s import K8sRunLauncher

    assert not process_config(K8sRunLauncher.config_type(), config["run_launcher"]["config"]).success


def test_k8s_executor_config_is_valid_and_used(monkeypatch, tmp_path):
    monkeypatch.setenv("PATHOMCH_EXECUTOR", "k8s")
    monkeypatch.setenv("PATHOMCH_K8S_EXECUTOR_CONFIG", str(DEPLOY / "k8s_executor.yaml"))
    from pathomch_assets.definitions import build_definitions

    defs = build_definitions()
    assert defs.executor.name == "pathomch_k8s"
    bad = tmp_path / "k8s_executor.yaml"
    bad.write_text((DEPLOY / "k8s_executor.yaml").read_text().replace("max_concurrent:", "max_concurent:"))
    monkeypatch.setenv("PATHOMCH_K8S_EXECUTOR_CONFIG", str(bad))
    with pytest.raises(ValueError, match=r"k8s_executor.yaml: invalid k8s executor configuration[\s\S]*max_concurent"):
        build_definitions()
    env = dict(v.split("=", 1) for v in yaml.safe_load((DEPLOY / "k8s_executor.yaml").read_text())["env_vars"])
    assert in_repo(env["PATHOMCH_CONFIG"]).is_file()


def test_training_pods_ask_for_a_gpu_and_tiling_pods_for_cpus(monkeypatch):
    from pathomch_assets.definitions import build_definitions

    defs = build_definitions()
    model_asset = defs.resolve_assets_def(dg.AssetKey(["brca", "trait_model"]))
    model = get_user_defined_k8s_config(model_asset.op.tags)  # validates the tag
    assert model.container_config["resources"]["limits"]["nvidia.com/gpu"] == 1
    tiling = get_user_defined_k8s_config(defs.resolve_assets_def(dg.AssetKey(["luad", "slide_tiles"])).op.tags)
    cpus = int(tiling.container_config["resources"]["requests"]["cpu"])
    paper = load_config(DEPLOY / "pathomch.tcga.yaml", check_files=False)
    assert cpus == paper.tiling.workers
    assert K8S_TAG not in defs.resolve_assets_def(dg.AssetKey(["brca", "labels"])).op.tags


def test_paper_config_and_helm_values_agree_with_the_repository():
    cfg = load_config(DEPLOY / "pathomch.tcga.yaml", check_files=False)
    assert str(cfg.tiles_dir).startswith("s3://")
    assert len(cfg.targets()) * cfg.splits.rounds == 75  # the paper's 75 models
    n = {name: len(c.manifest.read_text().strip().splitlines()) - 1 for name, c in cfg.cohorts.items()}
    assert n == {"brca": 761, "luad": 469}
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagsterUserDeployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    module = importlib.import_module(args[args.index("--module-name") + 1])
    assert isinstance(module.defs, dg.Definitions)
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["PATHOMCH_EXECUTOR"] == "k8s"
    assert in_repo(env["PATHOMCH_CONFIG"]).is_file() and in_repo(env["PATHOMCH_K8S_EXECUTOR_CONFIG"]).is_file()
    mounted = {m["name"] for m in deployment["volumeMounts"]}
    assert mounted == {v["name"] for v in deployment["volumes"]}
    assert Path(cfg.cohorts["brca"].slides_dir).is_relative_to("/mnt/slides")
