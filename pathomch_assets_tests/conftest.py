import dataclasses
import os
from pathlib import Path

import pytest

from bench import cohorts as cohorts_bench
from bench.cohorts import UNGATED

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIXTURES = Path(__file__).parent / "fixtures"
OPENSLIDE = FIXTURES / "openslide"

SMALL_SIZES = {"brca": 60, "luad": 50}
SMALL_SPLITS = {"test_fraction": 0.3, "val_fraction": 0.3}


def balanced_seed(cohorts, splits=SMALL_SPLITS, seeds=range(1, 200)) -> int:
    """:func:`bench.cohorts.balanced_seed`, with the small test cohorts' splits by default."""
    return cohorts_bench.balanced_seed(cohorts, splits, seeds)


def built_once(request, tmp_path_factory, name: str, build, marker: str = ".built") -> Path:
    """``build(folder)`` run once for the whole test run, into a folder every xdist worker reads: the first worker
    to ask builds it under a file lock, the others wait for it (pytest-xdist's recipe for session fixtures).
    Treat the folder as read-only; copy it (:func:`copy_built`) to change anything in it."""
    import shutil

    from filelock import FileLock

    if not hasattr(request.config, "workerinput"):  # not an xdist worker: this session is the whole run
        shared = tmp_path_factory.getbasetemp() / "shared" / name
    else:  # this run's folder, above every worker's
        shared = tmp_path_factory.getbasetemp().parent / "shared" / name
    shared.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(shared) + ".lock"):
        if not (shared / marker).exists():  # built in place (tables hold absolute slide paths), stamped when done
            shutil.rmtree(shared, ignore_errors=True)  # a build a killed worker left
            shared.mkdir()
            build(shared)
            (shared / marker).touch()
    return shared


def copy_built(shared: Path, out: Path) -> Path:
    """A copy of a :func:`built_once` folder at ``out`` that stands alone: the configs' paths are relative, file
    times are kept (slide fingerprints hold), and each copied deployment's DuckDB views are rewritten for its
    own tables folder."""
    import shutil

    from pathomch_assets.config import load_config
    from pathomch_assets.tables import TableStore

    shutil.copytree(shared, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".built", ".inputs"))
    for config in out.rglob("pathomch.yaml"):
        cfg = load_config(config)
        if cfg.tables_dir.exists():
            TableStore(cfg.tables_dir, cfg.duckdb_path).ensure_views()
    return out


@pytest.fixture(autouse=True)
def _config_env_restored():
    """``$PATHOMCH_CONFIG`` as it was before the test: the command line sets it for its runs (``cli.py``), so a test
    calling it in process would hand its configuration to the next test of its worker."""
    before = os.environ.get("PATHOMCH_CONFIG")
    yield
    if before is None:
        os.environ.pop("PATHOMCH_CONFIG", None)
    else:
        os.environ["PATHOMCH_CONFIG"] = before


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory, request):
    """A small demo deployment (60 and 50 patients, larger validation sets) with its config file, nothing
    materialized: a copy of its own for each test session (each xdist worker), built once per test run."""
    from pathomch_assets.demo_cohort import DEFAULT_COHORTS, build_demo

    def build(out: Path) -> None:
        cohorts = tuple(dataclasses.replace(c, n_patients=SMALL_SIZES[c.name]) for c in DEFAULT_COHORTS)
        seed = balanced_seed(cohorts)
        build_demo(
            out,
            seed=seed,
            cohorts=cohorts,
            workers=1,
            progress=lambda *a: None,
            # 4 epochs, not the demo's 8: test_pipeline's ensembles still find every planted trait (test AUC 1.0
            # for all four, 2026-12-05); the full demo keeps the demo's training (test_demo_results)
            overrides={"splits": SMALL_SPLITS, **UNGATED, "training": {"max_epochs": 4}},
        )

    shared = built_once(request, tmp_path_factory, "small_demo", build)
    return copy_built(shared, tmp_path_factory.mktemp("demo")) / "pathomch.yaml"


#: the tiny deployment's splits: 3 training rounds
TINY_SPLITS = {**SMALL_SPLITS, "rounds": 3}


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory, request) -> Path:
    """One cohort (brca, 44 patients), its two planted survival traits, 3 short training rounds: the generated
    cohort and ``demo/pathomch.yaml``, nothing materialized yet, built once per test run; :func:`materialize_tiny`
    materializes it in place (``tiny_deployment``).

    The sensor looks every 5 s and retries a failed slide after 5 s, and automation is evaluated every 10 s (defaults
    60 s, 120 s and 30 s) for test_living;
    those settings change no result and no code version."""
    from pathomch_assets.demo_cohort import DEFAULT_COHORTS, build_demo

    def build(root: Path) -> None:
        brca = DEFAULT_COHORTS[0]
        spec = dataclasses.replace(brca, n_patients=44, traits={t: brca.traits[t] for t in brca.survival_pair})
        build_demo(
            root / "demo",
            seed=balanced_seed((spec,), TINY_SPLITS),
            cohorts=(spec,),
            workers=1,
            progress=lambda *a: None,
            # short training: these tests compare executions, storage and staleness, not model quality
            overrides={
                **UNGATED,
                "splits": TINY_SPLITS,
                "tiling": {"workers": 1},
                "training": {"max_epochs": 2},
                "sensor": {"interval_s": 5, "retry_backoff_s": 5, "automation_interval_s": 10},
            },
        )

    return built_once(request, tmp_path_factory, "tiny_deployment", build, marker=".inputs")


def materialize_tiny(root: Path) -> Path:
    """The :func:`tiny_inputs` folder ``root`` materialized whole, in place, by the command line's runner in process
    (``demo/output`` and its instance ``dagster_home``), once per test run: the first caller does it under a lock
    of its own, later ones wait for it.  A function as well as a fixture (``tiny_deployment``): test_scaleout needs
    it only after its own run, so another worker can build it meanwhile."""
    import shutil

    from filelock import FileLock

    from pathomch_assets.config import load_config
    from pathomch_assets.definitions import build_definitions
    from pathomch_assets.runner import materialize_all

    with FileLock(str(root) + ".materialized.lock"):
        if not (root / ".built").exists():
            shutil.rmtree(root / "dagster_home", ignore_errors=True)  # what a killed worker left
            shutil.rmtree(root / "demo" / "output", ignore_errors=True)
            config = root / "demo" / "pathomch.yaml"
            mp = pytest.MonkeyPatch()
            try:
                mp.setenv("PATHOMCH_CONFIG", str(config))
                mp.setenv("DAGSTER_HOME", str(root / "dagster_home"))
                cfg = load_config(config)
                summary = materialize_all(build_definitions(cfg), cfg, log=lambda *a: None)
                assert not summary.failed and not summary.skipped, (summary.failed, summary.skipped)
            finally:
                mp.undo()
            (root / ".built").touch()
    return root


@pytest.fixture(scope="session")
def tiny_deployment(tiny_inputs) -> Path:
    """``tiny_inputs`` materialized whole (:func:`materialize_tiny`): ``demo/pathomch.yaml``, its outputs and its
    instance ``dagster_home``.  Shared, read-only, by test_scaleout (the in-process reference run), test_living
    and test_postgres (each on a copy: :func:`copy_built`)."""
    return materialize_tiny(tiny_inputs)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3 endpoint (moto's server: the S3 protocol over HTTP, reachable from child processes)."""
    from moto.server import ThreadedMotoServer

    mp = pytest.MonkeyPatch()
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        mp.setenv(var, "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    mp.undo()


@pytest.fixture
def s3_root(s3_endpoint, request):
    """An empty bucket on the local S3 endpoint, as the ``UPath`` a config's data_dir URL becomes."""
    import re

    import s3fs
    from upath import UPath

    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir(bucket)
    return UPath(f"s3://{bucket}/pathomch", endpoint_url=s3_endpoint)


def planted_slide_plan(sid: str):
    """A new brca slide (4 x 5 tissue tiles) with the MKI67 morphology planted on every tile."""
    import numpy as np

    from pathomch_assets.demo_cohort import SlidePlan, load_source_tiles

    tissue = np.ones((4, 5), bool).tolist()
    source = sorted(load_source_tiles())[0]
    zeros = np.zeros((4, 5)).tolist()
    return SlidePlan(
        "brca",
        sid,
        f"{sid}.svs",
        source,
        4,
        5,
        "aperio20",
        1,
        tissue,
        zeros,
        {"MKI67": tissue},
        {"MKI67": "dark_nuclei"},
    )


#: the order in which xdist workers are handed test files (``--dist loadfile --no-loadscope-reorder``; by default
#: xdist hands out files with the most tests first, so the long two-test files of `dagster dev` and whole
#: pipelines started last and made the suite's tail).  Each of `make test`'s 4 workers starts with two files: the
#: four longest (minutes each; test_scaleout, the longest, first: its worker builds ``tiny_inputs`` and starts its
#: own run while test_living's materializes ``tiny_deployment``), then four quick ones to pair with them; then the
#: other long ones, longest first, as workers free up, then the rest.
FILE_ORDER = (
    "test_scaleout.py",
    "test_pipeline.py",
    "test_living.py",
    "test_small_cohort.py",
    "test_definitions.py",
    "test_storage.py",
    "test_demo_results.py",
    "test_assets.py",
    "test_harder_family.py",
    "test_faults.py",
    "test_postgres.py",
    "test_ui.py",
    "test_training.py",
    "test_reliability.py",
    "test_reliability3.py",
    "test_stain.py",
    "test_qc.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FILE_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
