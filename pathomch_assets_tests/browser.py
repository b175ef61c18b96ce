"""Start `dagster dev` over the demo's instance and screenshot pages in headless Chromium.

Used by test_ui.py and by `make screenshots` (``python -m pathomch_assets_tests.browser``),
which writes docs/screenshots/*.png for the README and ``docs/screenshots/manifest.json``: each
picture's page and the asset keys, groups, sensors and partition keys it shows, which test_docs.py
compares with the definitions.  The pages are read from the definitions (``pages``).  Chromium comes
from Debian's package (`apt-get install chromium`); without it the test is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "screenshots"
MANIFEST = SCREENSHOTS / "manifest.json"

#: the code location of workspace.yaml as the UI's paths name it (``<repository>@<location>``)
LOCATION = "__repository__@pathomch_assets:defs"

#: the asset pages screenshot after the lineage, by the asset's name (its key's last part), for the first cohort
ASSET_PAGES = ("survival_analysis", "model_evaluation", "slide_cartography")


def asset_spec(specs, name: str, cohort: str):
    """The asset named ``name``: keyed ``<cohort>/.../<name>`` where keys are per cohort, else ``name``."""
    found = [s for s in specs if s.key.path[-1] == name]
    if not found:
        raise KeyError(f"no asset named {name!r} in the definitions: update browser.ASSET_PAGES")
    return next((s for s in found if cohort in s.key.path), found[0])


def sensors_of(repo, key, automated: bool) -> list[str]:
    """The sensors an asset page lists: automation sensors over the asset when it has an automation condition,
    and sensors of jobs that materialize it."""
    names = []
    for sensor in repo.sensor_defs:
        if sensor.asset_selection is not None:
            if automated and key in sensor.asset_selection.resolve(repo.asset_graph):
                names.append(sensor.name)
        elif any(key in repo.get_job(t.job_name).asset_layer.selected_asset_keys for t in sensor.targets):
            names.append(sensor.name)
    return sorted(names)


def pages(defs, cohort: str) -> dict[str, dict]:
    """Each screenshot's page (a path of the UI) and what it shows: asset keys, groups, sensors, partition keys.

    The lineage of ``cohort``'s group, then the ``ASSET_PAGES`` of ``cohort`` (their ``cohort`` partition where the
    asset is partitioned by cohort)."""
    import dagster as dg

    repo = defs.get_repository_def()
    specs = list(defs.resolve_all_asset_specs())
    out = {
        "asset_graph": {  # the first cohort's group: its whole graph, each asset with its state
            "page": f"/locations/{LOCATION}/asset-groups/{cohort}",
            "asset_keys": [],
            "groups": [cohort],
            "sensors": [],
            "partition_keys": [],
        }
    }
    for name in ASSET_PAGES:
        spec = asset_spec(specs, name, cohort)
        key = spec.key.to_user_string()
        parts = spec.partitions_def
        by_cohort = isinstance(parts, dg.StaticPartitionsDefinition) and cohort in parts.get_partition_keys()
        out[name] = {
            "page": f"/assets/{key}" + (f"?partition={cohort}" if by_cohort else ""),
            "asset_keys": [key],
            "groups": [spec.group_name],
            "sensors": sensors_of(repo, spec.key, spec.automation_condition is not None),
            "partition_keys": [cohort] if by_cohort else [],
        }
    return out


def demo_pages() -> dict[str, dict]:
    """``pages`` of the demo's definitions, for its first cohort."""
    from pathomch_assets.config import DEMO_CONFIG, load_config
    from pathomch_assets.definitions import build_definitions

    cfg = load_config(DEMO_CONFIG, check_files=False)
    return pages(build_definitions(cfg), next(iter(cfg.cohorts)))


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dev_env(dagster_home: Path, daemon_interval_s: int = 5) -> dict[str, str]:
    """The environment of :func:`dagster_dev`: its instance, and its backfill daemon looking every
    ``daemon_interval_s`` seconds instead of Dagster's 30 (``daemon_interval/sitecustomize.py``)."""
    hook = str(Path(__file__).parent / "daemon_interval")
    return {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "PYTHONPATH": os.pathsep.join(filter(None, [hook, os.environ.get("PYTHONPATH")])),
        "PATHOMCH_TEST_DAEMON_INTERVAL_S": str(daemon_interval_s),
    }


@contextlib.contextmanager
def dagster_dev(dagster_home: Path, timeout: float = 180):
    """`dagster dev -w workspace.yaml` on a free port (environment: :func:`dev_env`); yields the base URL."""
    port = free_port()
    env = dev_env(dagster_home)
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-p", str(port), "-h", "127.0.0.1"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise RuntimeError(f"dagster dev did not start:\n{log.read()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)


@contextlib.contextmanager
def figures_served():
    """Serve the demo's ``data_dir`` at ``PATHOMCH_FIGURES_URL`` (as ``make ui`` does), so that the figures the
    demo linked there show on the asset pages; nothing when it is unset."""
    from urllib.parse import urlsplit

    from pathomch_assets.config import DEMO_CONFIG, load_config

    base = os.environ.get("PATHOMCH_FIGURES_URL")
    if not base:
        yield
        return
    where = urlsplit(base)
    root = load_config(DEMO_CONFIG, check_files=False).data_dir
    cmd = [sys.executable, "-m", "http.server", "--bind", where.hostname or "127.0.0.1", "--directory", str(root)]
    proc = subprocess.Popen([*cmd, str(where.port or 80)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def screenshot(url: str, out: Path, size=(1600, 1000), budget_ms: int = 20000) -> Path:
    """A PNG of ``url`` rendered by headless Chromium (no network beyond localhost)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                f"--virtual-time-budget={budget_ms}",
                "--hide-scrollbars",
                f"--screenshot={out}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return out


def capture(dagster_home: Path, out_dir: Path, shown: dict[str, dict]) -> list[Path]:
    """Screenshots of ``shown``'s pages (``pages``) in ``out_dir``, and its ``manifest.json`` saying what each shows."""
    from importlib.metadata import version

    with figures_served(), dagster_dev(dagster_home) as url:
        shots = [screenshot(url + page["page"], out_dir / f"{name}.png") for name, page in shown.items()]
    manifest = {
        "about": "written by `make screenshots` (pathomch_assets_tests/browser.py); checked by test_docs.py",
        "dagster": version("dagster"),
        "screenshots": {f"{name}.png": page for name, page in shown.items()},
    }
    (out_dir / MANIFEST.name).write_text(json.dumps(manifest, indent=1) + "\n")
    return shots


if __name__ == "__main__":
    from pathomch_assets.config import DEMO_CONFIG, load_config

    cfg = load_config(DEMO_CONFIG, check_files=False)
    home = Path(os.environ.get("DAGSTER_HOME", cfg.data_dir / "dagster_home"))
    if not chromium():
        sys.exit("no chromium: apt-get install chromium")
    for p in capture(home, SCREENSHOTS, demo_pages()):
        print(p)
