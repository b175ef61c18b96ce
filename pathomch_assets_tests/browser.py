"""Start `dagster dev` over the demo's instance and screenshot pages in headless Chromium.

Used by test_ui.py and by `make screenshots` (``python -m pathomch_assets_tests.browser``),
which writes docs/screenshots/*.png for the README.  Chromium comes from Debian's package
(`apt-get install chromium`); without it the test is skipped.
"""

from __future__ import annotations

import contextlib
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

PAGES = {
    "asset_graph": "/asset-groups?expanded=brca,luad",
    "survival_analysis": "/assets/brca/survival_analysis?partition=brca",
    "slide_cartography": "/assets/brca/slide_cartography",
    "model_evaluation": "/assets/brca/model_evaluation?partition=brca",
}


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dagster_dev(dagster_home: Path, timeout: float = 180):
    """`dagster dev -w workspace.yaml` on a free port; yields the base URL."""
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
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


def capture(dagster_home: Path, out_dir: Path, pages: dict[str, str] = PAGES) -> list[Path]:
    with dagster_dev(dagster_home) as url:
        return [screenshot(url + path, out_dir / f"{name}.png") for name, path in pages.items()]


if __name__ == "__main__":
    from pathomch_assets.config import DEMO_CONFIG, load_config

    cfg = load_config(DEMO_CONFIG, check_files=False)
    home = Path(os.environ.get("DAGSTER_HOME", cfg.data_dir / "dagster_home"))
    if not chromium():
        sys.exit("no chromium: apt-get install chromium")
    for p in capture(home, ROOT / "docs" / "screenshots"):
        print(p)
