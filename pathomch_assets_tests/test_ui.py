"""The Dagster UI over the demo, in a real browser: `dagster dev` is started, the asset graph is
read back through its GraphQL API, and pages are rendered by headless Chromium.

Needs the demo's results (CI runs `make demo` first) and Chromium (CI installs Debian's)."""

import json
import urllib.request

import numpy as np
import pytest
from PIL import Image

from pathomch_assets.config import DEMO_CONFIG, load_config

from .browser import chromium, dagster_dev, demo_pages, screenshot

cfg = load_config(DEMO_CONFIG, check_files=False)
HOME = cfg.data_dir / "dagster_home"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (HOME / "dagster.yaml").exists(), reason="run `make demo` first"),
    pytest.mark.skipif(chromium() is None, reason="no chromium (apt-get install chromium)"),
]

QUERY = "{ assetNodes { assetKey { path } isPartitioned groupName kinds owners { ... on TeamAssetOwner { team } } } }"


def test_ui_serves_the_asset_graph_and_renders_pages(tmp_path):
    with dagster_dev(HOME) as url:
        req = urllib.request.Request(
            f"{url}/graphql", data=json.dumps({"query": QUERY}).encode(), headers={"Content-Type": "application/json"}
        )
        nodes = json.loads(urllib.request.urlopen(req, timeout=60).read())["data"]["assetNodes"]
        by_name = {n["assetKey"]["path"][-1]: n for n in nodes}
        assert {
            "slide_tiles",
            "expression",
            "labels",
            "splits",
            "trait_model",
            "ensemble",
            "slide_predictions",
            "model_evaluation",
            "slide_cartography",
            "survival_analysis",
        } <= set(by_name)
        assert all(n["isPartitioned"] for n in nodes)
        assert {n["assetKey"]["path"][0] for n in nodes} == set(cfg.cohorts)  # every asset once per cohort
        assert by_name["trait_model"]["groupName"] in cfg.cohorts and "tensorflow" in by_name["trait_model"]["kinds"]
        assert all(n["owners"] for n in nodes)
        shots = [screenshot(url + p["page"], tmp_path / f"{name}.png") for name, p in demo_pages().items()]
    for shot in shots:
        img = np.asarray(Image.open(shot).convert("L"), float)
        assert img.shape == (1000, 1600) and img.std() > 10  # a rendered page, not a blank one
