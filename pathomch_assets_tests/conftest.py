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


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory, request):
    """A small demo deployment (60 and 50 patients, larger validation sets) with its config file: a copy of
    its own for each test session (each xdist worker), built once per test run."""
    import shutil

    from filelock import FileLock

    from pathomch_assets.demo_cohort import DEFAULT_COHORTS, build_demo

    def build(out: Path) -> Path:
        cohorts = tuple(dataclasses.replace(c, n_patients=SMALL_SIZES[c.name]) for c in DEFAULT_COHORTS)
        seed = balanced_seed(cohorts)
        return build_demo(
            out,
            seed=seed,
            cohorts=cohorts,
            workers=1,
            progress=lambda *a: None,
            overrides={"splits": SMALL_SPLITS, **UNGATED},
        )

    out = tmp_path_factory.mktemp("demo")
    if not hasattr(request.config, "workerinput"):  # not an xdist worker
        return build(out)
    shared = tmp_path_factory.getbasetemp().parent / "small_demo"  # this run's folder, above every worker's
    with FileLock(str(shared) + ".lock"):  # the first worker builds it; the others wait, then copy
        if not (shared / "pathomch.yaml").exists():
            partial = shared.with_name("small_demo.partial")
            shutil.rmtree(partial, ignore_errors=True)  # a build a killed worker left
            build(partial)
            partial.rename(shared)
    shutil.copytree(shared, out, dirs_exist_ok=True)  # relative paths in pathomch.yaml: the copy stands alone
    return out / "pathomch.yaml"


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
#: pipelines started last and made the suite's tail).  Each worker starts with two files: the five longest
#: (minutes each) first, then four quick ones to pair with them, then the rest as workers free up.
FILE_ORDER = (
    "test_living.py",
    "test_scaleout.py",
    "test_pipeline.py",
    "test_small_cohort.py",
    "test_postgres.py",
    "test_definitions.py",
    "test_storage.py",
    "test_demo_results.py",
    "test_assets.py",
    "test_faults.py",
    "test_training.py",
    "test_reliability.py",
    "test_reliability3.py",
    "test_harder_family.py",
    "test_stain.py",
    "test_qc.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FILE_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
