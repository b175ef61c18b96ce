import dataclasses
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIXTURES = Path(__file__).parent / "fixtures"
OPENSLIDE = FIXTURES / "openslide"


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """A small demo deployment (60 and 50 patients) with its config file.

    Small cohorts need larger validation sets for both label classes to be present in every
    round (the blocking label-balance check); seed 5 gives that with these sizes.
    """
    from pathomch_assets.demo_cohort import DEFAULT_COHORTS, build_demo

    out = tmp_path_factory.mktemp("demo")
    sizes = {"brca": 60, "luad": 50}
    cohorts = tuple(dataclasses.replace(c, n_patients=sizes[c.name]) for c in DEFAULT_COHORTS)
    cfg = build_demo(out, seed=5, cohorts=cohorts, workers=1, progress=lambda *a: None,
                     overrides={"splits": {"test_fraction": 0.3, "val_fraction": 0.3}})
    return cfg
