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
