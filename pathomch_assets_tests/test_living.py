"""The living pipeline as a data team uses it: `dagster dev` (webserver + daemon) over a small cohort,
driven only through the webserver's GraphQL API (what the UI calls), while another process holds a
read-only DuckDB connection to the results for the whole test.

A retrained model marks everything it feeds stale; backfilling the stale partitions makes them fresh
again and equal to the clean run; a slide dropped into the cohort folder is picked up by the sensor and
ends with its HTI row; eager automation refreshes the cohort's evaluation and survival; no run fails.
"""

import json
import subprocess
import sys
import time
import urllib.request

import dagster as dg
import pandas as pd
import pytest

from pathomch_assets.config import load_config
from pathomch_assets.tables import TableStore

from .browser import dagster_dev
from .conftest import copy_built, planted_slide_plan

pytestmark = pytest.mark.slow

READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)  # as a notebook keeps one open all day
while True:
    try:
        print(con.execute("select count(*) from hti").fetchone()[0], flush=True)
    except Exception as e:
        print("ERROR", type(e).__name__, e, flush=True)
    time.sleep(0.5)
"""

RESULT_TABLES = (
    "slides",
    "tiles",
    "labels",
    "splits",
    "slide_scores",
    "model_metrics",
    "correlations",
    "hti",
    "survival",
)


@pytest.fixture(scope="module")
def deployment(tiny_deployment, tmp_path_factory):
    """One small cohort, materialized whole by the command line's runner (the clean run): a copy of
    ``conftest.tiny_deployment``, its instance included, for this module to change."""
    root = copy_built(tiny_deployment, tmp_path_factory.mktemp("living"))
    config = root / "demo" / "pathomch.yaml"
    mp = pytest.MonkeyPatch()
    mp.setenv("PATHOMCH_CONFIG", str(config))
    mp.setenv("PATHOMCH_EXECUTOR", "in_process")  # steps in the run's process: the same runs, less start-up
    mp.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    yield load_config(config), root
    mp.undo()


def gql(url: str, query: str, **variables) -> dict:
    req = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    out = json.loads(urllib.request.urlopen(req, timeout=300).read())
    assert not out.get("errors"), out["errors"]
    return out["data"]


def wait_for(predicate, timeout: float, what: str, every: float = 2.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


STALE = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { partitionKeys staleStatusByPartition } } }"""

STALE_CAUSES = """query($key: AssetKeyInput!, $p: [String!]) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { staleCausesByPartition(partitions: $p) { reason category dependency { path }
  dependencyPartitionKey } } } }"""

BACKFILL = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"""

BACKFILL_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { status } } }"""

FAILED_RUNS = """query($after: Float) { runsOrError(filter: {statuses: [FAILURE, CANCELED], createdAfter: $after}) {
  ... on Runs { results { runId jobName } } } }"""

SLIDE_RUNS = """query($after: Float) {
  runsOrError(filter: {pipelineName: "brca_process_slides", createdAfter: $after}) {
  ... on Runs { results { runId status } } } }"""

ACTIVE_RUNS = """{ runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING]}) {
  ... on Runs { results { runId } } } }"""

LAST_MATERIALIZATION = """query($key: AssetKeyInput!, $p: [String!]) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { assetMaterializations(partitions: $p, limit: 1) { timestamp runId } } } }"""

REPOSITORY = """{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"""

START_SENSOR = """mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) {
  __typename ... on Sensor { sensorState { status } } ... on Error { message } } }"""

SENSOR_STATE = """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {
  ... on Sensor { sensorState { status } } } }"""


def stale_partitions(url: str, asset: str) -> dict[str, str]:
    """``asset`` (``cohort/name``): its partitions' stale status."""
    node = gql(url, STALE, key={"path": asset.split("/")})["assetNodeOrError"]
    return dict(zip(node["partitionKeys"], node["staleStatusByPartition"]))


def backfill(url: str, partitions_by_asset: dict[str, list[str]], timeout: float = 900) -> None:
    """Launch one backfill of these asset partitions, as the UI's launch dialog does, and wait for it."""
    params = {
        "partitionsByAssets": [
            {"assetKey": {"path": asset.split("/")}, "partitions": {"ranges": [{"start": k, "end": k} for k in keys]}}
            for asset, keys in partitions_by_asset.items()
        ]
    }
    out = gql(url, BACKFILL, p=params)["launchPartitionBackfill"]
    assert out["__typename"] == "LaunchBackfillSuccess", out
    done = wait_for(
        lambda: (
            (s := gql(url, BACKFILL_STATUS, id=out["backfillId"])["partitionBackfillOrError"]["status"])
            not in ("REQUESTED", "CANCELING", "FAILING")
            and s
        ),
        timeout,
        "the backfill",
    )
    assert done == "COMPLETED_SUCCESS", done


def last_materialization(url: str, asset: str, partition: str) -> float:
    rows = gql(url, LAST_MATERIALIZATION, key={"path": asset.split("/")}, p=[partition])["assetNodeOrError"]
    rows = rows["assetMaterializations"]
    return float(rows[0]["timestamp"]) / 1000 if rows else 0.0


def tables(store: TableStore) -> dict[str, pd.DataFrame]:
    return {
        t: store.query(
            f"select * exclude (seconds) from {t} order by all" if t == "slides" else f"select * from {t} order by all"
        )
        for t in RESULT_TABLES
    }


def drop_slide(cfg, sid: str):
    """A new patient's slide in the cohort folder, with the MKI67 morphology on every tissue tile."""
    from pathomch_assets.demo_cohort import compose_slide, load_source_tiles, write_pyramid

    plan = planted_slide_plan(sid)
    path = cfg.cohorts["brca"].slides_dir / plan.file
    write_pyramid(path, compose_slide(plan, load_source_tiles()), plan.style)
    return path


def test_stale_backfill_sensor_and_automation_under_a_reader(deployment, tmp_path):

    cfg, root = deployment
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    clean = tables(store)
    reader_log = open(tmp_path / "reader.log", "w+")
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(cfg.duckdb_path)], stdout=reader_log, stderr=subprocess.STDOUT
    )
    try:
        with dagster_dev(root / "dagster_home", timeout=300) as url:
            repo = gql(url, REPOSITORY)["repositoriesOrError"]["nodes"][0]
            sensor = {"repositoryName": repo["name"], "repositoryLocationName": repo["location"]["name"]}
            # 1. retrain one model, as "Materialize" on one trait_model partition does
            model = str(dg.MultiPartitionKey({"target": "brca/MKI67", "round": "round_0"}))
            backfill(url, {"brca/trait_model": [model]})
            stale = {
                a: stale_partitions(url, a)
                for a in (
                    "brca/trait_model",
                    "brca/ensemble",
                    "brca/slide_predictions",
                    "brca/slide_cartography",
                    "brca/model_evaluation",
                    "brca/survival_analysis",
                )
            }
            assert stale["brca/trait_model"][model] == "FRESH"
            assert stale["brca/ensemble"]["brca/MKI67"] == "STALE"
            assert stale["brca/ensemble"]["brca/miR-17-5p"] == "FRESH"  # other traits' ensembles do not use that model
            for asset in (
                "brca/slide_predictions",
                "brca/slide_cartography",
                "brca/model_evaluation",
                "brca/survival_analysis",
            ):
                assert set(stale[asset].values()) == {"STALE"}, (asset, stale[asset])
            # 2. "Materialize stale": one backfill of every stale partition; afterwards all fresh, as the clean run
            todo = {a: [k for k, s in st.items() if s == "STALE"] for a, st in stale.items()}
            backfill(url, {a: keys for a, keys in todo.items() if keys})
            for asset in stale:
                now = {k: v for k, v in stale_partitions(url, asset).items() if v != "FRESH"}
                causes = gql(url, STALE_CAUSES, key={"path": asset.split("/")}, p=list(now)[:3]) if now else None
                assert not now, (asset, now, causes)
            for name, frame in tables(store).items():  # deterministic training: the same model again
                pd.testing.assert_frame_equal(frame, clean[name], obj=name)
            # 3. a new slide arrives; the sensor (turned on here, as in the UI) processes it
            sid = "TCGA-ZZ-9999-01Z-00-DX1.NEW"
            drop_slide(cfg, sid)
            dropped = time.time()
            evaluated_before = last_materialization(url, "brca/model_evaluation", "brca")
            out = gql(url, START_SENSOR, s={**sensor, "sensorName": "new_slides_sensor"})["startSensor"]
            assert out["__typename"] == "Sensor", out
            wait_for(
                lambda: len(store.query("select * from hti where slide_id = ?", [sid])) == 1,
                600,
                "the new slide's HTI row",
            )
            # 4. eager automation (on by default) refreshes evaluation and survival for the new slide
            auto = gql(url, SENSOR_STATE, s={**sensor, "sensorName": "pathomch_automation"})["sensorOrError"]
            assert auto["sensorState"]["status"] == "RUNNING"
            wait_for(
                lambda: (
                    last_materialization(url, "brca/model_evaluation", "brca") > max(dropped, evaluated_before)
                    and last_materialization(url, "brca/survival_analysis", "brca") > dropped
                ),
                600,
                "automation to refresh model_evaluation and survival_analysis",
            )
            # let the runs automation started finish: stopping `dagster dev` under one fails it (as in the UI)
            wait_for(lambda: not gql(url, ACTIVE_RUNS)["runsOrError"]["results"], 600, "the runs to finish")
            assert gql(url, FAILED_RUNS)["runsOrError"]["results"] == []  # no run failed, reader or not
    finally:
        reader.kill()
    reader_log.seek(0)
    lines = reader_log.read().split()
    assert "ERROR" not in lines, "the reader failed while the pipeline ran"
    counts = [int(x) for x in lines if x.isdigit()]
    assert counts[0] == len(clean["hti"]) and counts[-1] == len(clean["hti"]) + 1  # it saw the new slide's row


def test_a_slide_whose_run_failed_is_retried_without_anyone_rerunning_it(deployment, tmp_path):
    """A real transient fault: the disk holding the maps is full when a new slide's run reaches them.
    The run fails (and shows why); once space is freed, the sensor requests the slide again by itself
    and the slide ends with its HTI row."""
    cfg, root = deployment
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    maps = cfg.maps_dir
    maps.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(maps)], capture_output=True).returncode:
        pytest.skip("cannot mount a small file system here (needs root)")
    try:
        ballast = maps / "ballast"
        with open(ballast, "wb") as fh:  # fill the small disk
            with pytest.raises(OSError):
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
        with dagster_dev(root / "dagster_home", timeout=300) as url:
            repo = gql(url, REPOSITORY)["repositoriesOrError"]["nodes"][0]
            sensor = {
                "repositoryName": repo["name"],
                "repositoryLocationName": repo["location"]["name"],
                "sensorName": "new_slides_sensor",
            }
            assert gql(url, START_SENSOR, s=sensor)["startSensor"]["__typename"] == "Sensor"
            sid = "TCGA-ZZ-9998-01Z-00-DX1.FULL"
            started = time.time()  # this test's runs only (the instance holds the module's earlier runs)
            drop_slide(cfg, sid)
            failed = wait_for(
                lambda: gql(url, FAILED_RUNS, after=started)["runsOrError"]["results"], 600, "the run to fail"
            )
            # the slide's run fails; the automation run for the cohort's evaluation it triggers does not
            assert {r["jobName"] for r in failed} == {"brca_process_slides"}, failed
            assert store.query("select * from hti where slide_id = ?", [sid]).empty
            status = subprocess.run(
                [sys.executable, "-m", "pathomch_assets.cli", "status"], capture_output=True, text=True, timeout=300
            )
            assert status.returncode == 0 and sid in status.stdout and "no HTI yet" in status.stdout, status
            ballast.unlink()  # an operator frees space; nobody re-runs anything
            wait_for(
                lambda: len(store.query("select * from hti where slide_id = ?", [sid])) == 1,
                600,
                "the retried slide's HTI row",
            )
            # the sensor's retries: those before the space was freed may fail too; the last one succeeded
            runs = wait_for(
                lambda: (
                    (r := gql(url, SLIDE_RUNS, after=started)["runsOrError"]["results"])[0]["status"]
                    in ("SUCCESS", "FAILURE")
                    and r
                ),
                300,
                "the retried slide's run to end",
            )  # newest first
            failed_now = gql(url, FAILED_RUNS, after=started)["runsOrError"]["results"]
            assert {r["jobName"] for r in failed_now} == {"brca_process_slides"}, failed_now
            assert runs[0]["status"] == "SUCCESS" and len(runs) == len(failed_now) + 1, runs
    finally:
        subprocess.run(["umount", "-l", str(maps)], check=False)
