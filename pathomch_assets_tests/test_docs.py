"""The README and docs/ say true things about the code: its YAML example loads, its links lead somewhere, its
make targets exist, and every test the reliability table names is a test."""

import ast
import re
from pathlib import Path

from pathomch_assets.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
README = (ROOT / "README.md").read_text()


def test_the_readme_yaml_example_is_a_valid_configuration(tmp_path):
    (block,) = re.findall(r"```yaml\n(.*?)```", README, re.S)
    (tmp_path / "my_cohorts.yaml").write_text(block)
    cfg = load_config(tmp_path / "my_cohorts.yaml", check_files=False)
    assert cfg.cohorts and all(c.traits for c in cfg.cohorts.values())


def test_every_local_link_of_the_readme_and_docs_exists():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+:", target):
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_make_targets_the_readme_names_exist():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README))
    assert {"demo", "test", "ui"} <= named and named <= targets


def test_every_test_the_reliability_table_names_is_a_test():
    table = (ROOT / "docs" / "reliability.md").read_text()
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith(("| bad input", "| ---"))]
    assert len(rows) >= 41
    defined: dict[str, set[str]] = {}
    for row in rows:
        names = re.findall(r"`(test_[a-z0-9_]+)(?:::([a-z0-9_.*]+))?`", row.split(" | ")[-1])
        assert names, f"a reliability row names no test: {row[:80]}"
        for module, name in names:
            if module not in defined:
                tree = ast.parse((TESTS / f"{module}.py").read_text())
                defined[module] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            if not name:
                continue
            pattern = re.escape(name).replace(r"\*", ".*").replace(r"\.\.\.", ".*")
            assert any(re.fullmatch(pattern, d) for d in defined[module]), f"{module}::{name} is not a test"


def test_the_readme_table_list_is_the_schema():
    """Every table and column the README lists is the one `tables.SCHEMAS` writes, in its order."""
    from pathomch_assets.tables import SCHEMAS

    listed = {
        m[1]: [re.sub(r"\s*\(.*\)$", "", c).strip() for c in re.split(r",\s*(?![^(]*\))", m[2])]
        for m in re.finditer(r"^\| `([a-z_]+)` \| (.+) \|$", README, re.M)
        if m[1] in SCHEMAS or "," in m[2]
    }
    assert listed == {t: list(cols) for t, cols in SCHEMAS.items()}


def test_the_configuration_page_is_generated_from_the_current_settings():
    """docs/configuration.md is what `python docs/make_configuration.py` prints now (regenerate it when a setting
    changes)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_configuration.py")], capture_output=True, text=True, check=True
    ).stdout
    assert out == (ROOT / "docs" / "configuration.md").read_text()


def test_the_screenshots_show_what_the_definitions_have():
    """Issue 32: every README screenshot has a manifest entry (written by `make screenshots`), and what it shows
    (asset keys, groups, sensors, partition keys, the page) is what the demo's definitions have today; else
    retake them with `make demo && make screenshots`."""
    import json

    import dagster as dg

    from pathomch_assets.config import DEMO_CONFIG
    from pathomch_assets.definitions import build_definitions

    from .browser import MANIFEST, SCREENSHOTS, pages

    manifest = json.loads(MANIFEST.read_text())["screenshots"]
    shown = set(re.findall(r"docs/screenshots/([^)\s]+\.png)", README))
    assert shown, "README.md shows no screenshot: update this test"
    assert not shown - set(manifest), f"README screenshots without an entry in {MANIFEST.name}: {shown - set(manifest)}"
    assert all((SCREENSHOTS / name).exists() for name in manifest), manifest
    cfg = load_config(DEMO_CONFIG, check_files=False)
    defs = build_definitions(cfg)
    repo = defs.get_repository_def()
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    groups = {s.group_name for s in specs.values()}
    sensors = {s.name for s in repo.sensor_defs}
    for name, page in manifest.items():
        stale = f"docs/screenshots/{name} is older than the UI (retake: make screenshots)"
        assert set(page["asset_keys"]) <= set(specs), f"{stale}: assets {set(page['asset_keys']) - set(specs)} gone"
        assert set(page["groups"]) <= groups, f"{stale}: groups {set(page['groups']) - groups} gone"
        assert set(page["sensors"]) <= sensors, f"{stale}: sensors {set(page['sensors']) - sensors} gone"
        for key in page["asset_keys"]:
            parts = specs[key].partitions_def
            known = set(parts.get_partition_keys()) if isinstance(parts, dg.StaticPartitionsDefinition) else set()
            assert set(page["partition_keys"]) <= known, f"{stale}: {key} has no partitions {page['partition_keys']}"
    today = pages(defs, next(iter(cfg.cohorts)))
    for name, page in manifest.items():
        now = today.get(name.removesuffix(".png"))
        assert page == now, f"docs/screenshots/{name} shows {page}; `make screenshots` would show {now} today"


def test_the_screenshot_pages_follow_per_cohort_asset_keys():
    """The pages are read from the definitions: with keys per cohort (``brca/survival_analysis``) and groups named
    after cohorts, the first cohort's group graph and asset pages are screenshot."""
    import dagster as dg

    from .browser import ASSET_PAGES, LOCATION, pages

    def asset(cohort, name):
        auto = dg.AutomationCondition.eager() if name != ASSET_PAGES[-1] else None

        @dg.asset(key=[cohort, name], group_name=cohort, automation_condition=auto)
        def one():
            return None

        return one

    assets = [asset(cohort, name) for cohort in ("luad", "brca") for name in ASSET_PAGES]
    sensor = dg.AutomationConditionSensorDefinition("automation", target=dg.AssetSelection.all())
    shown = pages(dg.Definitions(assets=assets, sensors=[sensor]), "brca")
    assert shown["asset_graph"]["page"] == f"/locations/{LOCATION}/asset-groups/brca"
    assert shown["asset_graph"]["groups"] == ["brca"]
    assert shown["survival_analysis"] == {
        "page": "/assets/brca/survival_analysis",
        "asset_keys": ["brca/survival_analysis"],
        "groups": ["brca"],
        "sensors": ["automation"],
        "partition_keys": [],
    }
    assert shown[ASSET_PAGES[-1]]["sensors"] == []
