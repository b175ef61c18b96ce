"""Figures on the asset page: inline where an event is one of a bounded set (a cohort, a model); where events
are per slide or repeated over a range, a link where the files are served (``PATHOMCH_FIGURES_URL``, which
``make demo`` sets to the address ``make ui`` serves ``data_dir`` at), else the path.  Sizes are measured on
the serialized events Dagster stores."""

import base64
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from pathomch_assets import reporting
from pathomch_assets.config import DEMO_CONFIG, load_config
from pathomch_assets.plots import pyplot

PREFIX = "data:image/png;base64,"
ROOT = Path(__file__).resolve().parents[1]


def survival_like_figure():
    """A Kaplan-Meier-sized figure (two step curves with confidence bands and a table), as survival draws it."""
    rng = np.random.default_rng(0)
    fig, axes = pyplot().subplots(2, 1, figsize=(6, 5.5), gridspec_kw={"height_ratios": [4, 1]})
    for group in range(2):
        t = np.sort(rng.exponential(40, 60))
        s = np.linspace(1, 0.1, 60)
        axes[0].step(t, s, where="post", label=f"group {group}")
        axes[0].fill_between(t, s - 0.1, s + 0.1, step="post", alpha=0.2)
    axes[0].legend()
    axes[1].axis("off")
    axes[1].table(cellText=[["60", "41", "22", "9"], ["60", "35", "14", "3"]], loc="center")
    return fig


@pytest.fixture(scope="module")
def instance():
    """One instance for the file (each test materializes an asset of its own name): about 2 s each saved."""
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions("slides", ["brca/S1"])
        yield inst


def build(name, tmp_path, partitions_def, backfill_policy=None):
    @dg.asset(name=name, partitions_def=partitions_def, backfill_policy=backfill_policy)
    def drawn(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        key = "_".join(k.replace("/", "_") for k in context.partition_keys) if partitions_def else "all"
        return dg.MaterializeResult(
            metadata=reporting.figure_file(survival_like_figure(), tmp_path / f"{key}.png", "km", tmp_path)
        )

    return drawn


def events(instance, name):
    records = instance.fetch_materializations(dg.AssetKey(name), limit=100).records
    return {r.asset_materialization.partition: r for r in records}


def inline_png(value) -> bytes:
    text = value.value
    assert text.startswith(f"![km]({PREFIX}") and text.endswith(")")
    return base64.b64decode(text[len(f"![km]({PREFIX}") : -1])


COHORTS = dg.StaticPartitionsDefinition(["brca", "luad"])
SLIDES = dg.DynamicPartitionsDefinition(name="slides")


def test_a_cohort_figure_is_inline_in_its_one_event(instance, tmp_path, monkeypatch):
    monkeypatch.delenv("PATHOMCH_FIGURES_URL", raising=False)
    assert dg.materialize([build("cohort", tmp_path, COHORTS)], instance=instance, partition_key="brca").success
    (record,) = events(instance, "cohort").values()
    meta = record.asset_materialization.metadata
    png = inline_png(meta["km_image"])
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width > 200 and len(png) <= reporting.EMBED_MAX_BYTES
    assert meta["km"].value == str(tmp_path / "brca.png") and (tmp_path / "brca.png").exists()
    # the whole stored event: the image and little else
    assert len(dg.serialize_value(record.event_log_entry)) < 4 / 3 * reporting.EMBED_MAX_BYTES + 4_000


def test_unpartitioned_and_model_figures_are_inline(instance, tmp_path, monkeypatch):
    monkeypatch.delenv("PATHOMCH_FIGURES_URL", raising=False)
    models = dg.MultiPartitionsDefinition(
        {"target": dg.StaticPartitionsDefinition(["brca/A"]), "round": dg.StaticPartitionsDefinition(["round_0"])}
    )
    assert dg.materialize([build("whole", tmp_path, None)], instance=instance).success
    key = dg.MultiPartitionKey({"target": "brca/A", "round": "round_0"})
    assert dg.materialize([build("model", tmp_path, models)], instance=instance, partition_key=key).success
    for name in ("whole", "model"):
        (record,) = events(instance, name).values()
        inline_png(record.asset_materialization.metadata["km_image"])


def test_per_slide_events_keep_the_path_only(instance, tmp_path, monkeypatch):
    monkeypatch.delenv("PATHOMCH_FIGURES_URL", raising=False)
    assert dg.materialize([build("slide", tmp_path, SLIDES)], instance=instance, partition_key="brca/S1").success
    (record,) = events(instance, "slide").values()
    meta = record.asset_materialization.metadata
    assert "km_image" not in meta and meta["km"].value == str(tmp_path / "brca_S1.png")
    assert len(dg.serialize_value(record.event_log_entry)) < 4_000


def test_a_range_run_does_not_repeat_an_image_in_every_partition(instance, tmp_path, monkeypatch):
    monkeypatch.delenv("PATHOMCH_FIGURES_URL", raising=False)
    asset = build("ranged", tmp_path, COHORTS, dg.BackfillPolicy.single_run())
    tags = {"dagster/asset_partition_range_start": "brca", "dagster/asset_partition_range_end": "luad"}
    assert dg.materialize([asset], instance=instance, tags=tags).success
    got = events(instance, "ranged")
    assert set(got) == {"brca", "luad"}
    for record in got.values():
        assert "km_image" not in record.asset_materialization.metadata
        assert len(dg.serialize_value(record.event_log_entry)) < 4_000


def test_served_figures_are_linked_where_they_are_not_inline(instance, tmp_path, monkeypatch):
    monkeypatch.setenv("PATHOMCH_FIGURES_URL", "http://figures.example.org/run/")
    assert dg.materialize([build("served", tmp_path, SLIDES)], instance=instance, partition_key="brca/S1").success
    (record,) = events(instance, "served").values()
    assert record.asset_materialization.metadata["km_image"].value == (
        "![km](http://figures.example.org/run/brca_S1.png)"
    )
    assert len(dg.serialize_value(record.event_log_entry)) < 4_000
    # a cohort's figure is linked too, so the UI draws it on the page (Dagster draws markdown under 1,000
    # characters in place), and stays embedded beside the link: it shows without the server
    assert dg.materialize([build("served_cohort", tmp_path, COHORTS)], instance=instance, partition_key="brca").success
    (record,) = events(instance, "served_cohort").values()
    link = record.asset_materialization.metadata["km_image"].value
    assert link == "![km](http://figures.example.org/run/brca.png)" and len(link) < 1_000
    inline_png(record.asset_materialization.metadata["km_embedded"])


def test_a_figure_too_large_for_every_resolution_is_not_inlined():
    fig = survival_like_figure()
    try:
        assert reporting.md_image(fig, "km", max_bytes=500) is None
        small = reporting.md_image(fig, "km")
        assert small is not None and small.value.startswith(f"![km]({PREFIX}")
    finally:
        pyplot().close(fig)


def test_a_tighter_budget_gets_a_coarser_image_not_a_cut_one():
    fig = survival_like_figure()
    try:
        sharp = base64.b64decode(reporting.md_image(fig, "km").value[len(f"![km]({PREFIX}") : -1])
        coarse_md = reporting.md_image(fig, "km", max_bytes=len(sharp) - 1)
    finally:
        pyplot().close(fig)
    coarse = base64.b64decode(coarse_md.value[len(f"![km]({PREFIX}") : -1])
    assert len(coarse) < len(sharp)
    a, b = Image.open(io.BytesIO(sharp)), Image.open(io.BytesIO(coarse))
    assert b.width < a.width and abs(b.width / b.height - a.width / a.height) < 0.05  # the same figure, smaller


FAKE_DAGSTER = """#!{python}
import os, sys, time, urllib.request
url = os.environ["PATHOMCH_FIGURES_URL"] + "/figures/heterogeneity_maps/run.png"
for _ in range(100):
    try:
        body = urllib.request.urlopen(url, timeout=5).read()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("nothing served at " + url)
open(os.environ["GOT"], "wb").write(body)
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_ui_serves_the_figures_make_demo_links_to(tmp_path):
    plan = subprocess.run(["make", "-n", "demo", "ui"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    linked = re.search(r"PATHOMCH_FIGURES_URL=(\S+) \S*pathomch demo", plan)[1]
    served = re.search(r"-m http.server --bind (\S+) --directory (\S+) (\d+)", plan)
    assert linked == f"http://{served[1]}:{served[3]}"
    assert (ROOT / served[2]).resolve() == load_config(DEMO_CONFIG, check_files=False).data_dir.resolve()
    assert f"PATHOMCH_FIGURES_URL={linked} " in plan.split("http.server")[1]  # runs started from the UI link there

    # the recipe itself, with `dagster dev` replaced by a client that fetches a figure while it runs
    data_dir, fake_bin = tmp_path / "output", tmp_path / "bin"
    (data_dir / "figures" / "heterogeneity_maps").mkdir(parents=True)
    png = data_dir / "figures" / "heterogeneity_maps" / "run.png"
    fig = survival_like_figure()
    fig.savefig(png, format="png", dpi=40)
    pyplot().close(fig)
    fake_bin.mkdir()
    (fake_bin / "python").symlink_to(sys.executable)
    (fake_bin / "pathomch").touch()  # `venv` is up to date
    (fake_bin / "dagster").write_text(FAKE_DAGSTER.format(python=sys.executable))
    (fake_bin / "dagster").chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        ["make", "ui", f"BIN={fake_bin}", f"FIGURES_DIR={data_dir}", f"FIGURES_PORT={port}"]
        + [f"DAGSTER_HOME={tmp_path / 'home'}"],
        cwd=ROOT,
        env={**os.environ, "GOT": str(tmp_path / "got.png")},
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (tmp_path / "got.png").read_bytes() == png.read_bytes()
    for _ in range(100):  # the server stops with the UI (it is sent SIGTERM as the recipe exits)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the figure server on port {port} outlived `make ui`")
