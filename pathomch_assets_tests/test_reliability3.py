"""Reliability, third round (issue 30): a slide is its content, hostile headers, degenerate data, a CLI and
SQL that say what they did.  Each case on real formats (slides written as OpenSlide reads them, real tables)."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from pathomch_assets import layout
from pathomch_assets.config import load_config
from pathomch_assets.demo_cohort import write_pyramid
from pathomch_assets.ingest import MAX_TILING_TRIES, tile_partitions
from pathomch_assets.slides import content_fingerprint
from pathomch_assets.tables import TableStore

from .test_assets import SEPARABLE, tiny  # noqa: F401 (a fixture)

SID = "TCGA-AA-0001-01Z-00-DX1"
KEY = f"brca/{SID}"


class Log:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, msg):
        self.lines.append(msg)

    warning = error = info


def tissue(seed: int, rows: int, cols: int, px: int = 64) -> np.ndarray:
    """A slide base of ``rows x cols`` tiles of ``px``, every tile tissue (dark noise), seeded."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, (rows * px, cols * px, 3), dtype=np.uint8)


@pytest.fixture
def deployment(tmp_path):
    """A one-cohort configuration tiling 64 px tiles at 20x (artifact QC off), its slides folder and its table
    store."""
    slides = tmp_path / "slides"
    slides.mkdir()
    (tmp_path / "mrna.tsv").write_text("gene_id\n")
    (tmp_path / "mirna.csv").write_text("Genes,Correction\n")
    config = tmp_path / "pathomch.yaml"
    config.write_text(
        "data_dir: out\nduckdb_path: out/p.duckdb\n"
        "tiling: {magnification: 20, tile_px: 64, workers: 1}\ntraining: {input_px: 16}\n"
        # colour noise is no H&E (QC reads it as ink): these tests are about a slide's identity, not QC
        "qc: {enabled: false}\n"
        "cohorts:\n  brca:\n    slides_dir: slides\n    mrna: mrna.tsv\n    mirna: mirna.csv\n"
        "    traits: [MKI67, miR-17-5p]\n"
    )
    cfg = load_config(config)
    return cfg, slides, TableStore(cfg.tables_dir, cfg.duckdb_path)


def slide_row(store) -> dict:
    return store.read("slides").set_index("slide_id").loc[SID].to_dict()


def test_a_slide_replaced_while_it_is_tiled_is_tiled_again_with_the_new_content(deployment, tmp_path):
    cfg, slides, store = deployment
    path = slides / f"{SID}.svs"
    write_pyramid(path, tissue(1, 4, 4), "aperio20")  # 16 tiles
    other = tmp_path / "other.svs"
    write_pyramid(other, tissue(2, 4, 6), "aperio20")  # 24 tiles
    replaced = []

    def progress(done, total, res):  # the slide was read; its file is replaced before the run takes its tiles
        if not replaced:
            os.replace(other, path)
            replaced.append(res.slide_id)

    log = Log()
    out = tile_partitions(cfg, store, [KEY], log, progress)
    assert out.retiled == 1 and any("changed while it was tiled" in line for line in log.lines)
    row = slide_row(store)
    assert row["status"] == "ok" and row["n_tiles"] == 24  # the new content's tiles, not the old content's 16
    assert row["file_fingerprint"] == content_fingerprint(path)
    assert len(store.read("tiles", "slide_id = ?", [SID])) == 24
    assert tile_partitions(cfg, store, [KEY], Log()).reused == 1  # recorded with the content it tiled


def test_a_slide_that_keeps_changing_is_an_error_without_tiles(deployment, tmp_path):
    cfg, slides, store = deployment
    path = slides / f"{SID}.svs"
    versions = [tmp_path / f"v{i}.svs" for i in range(MAX_TILING_TRIES + 1)]
    for i, v in enumerate(versions):
        write_pyramid(v, tissue(10 + i, 4, 4), "aperio20")
    shutil.copy(versions[0], path)
    writes = iter(versions[1:])

    def progress(done, total, res):  # a copy still running: new bytes after every read
        shutil.copy(next(writes), path)

    out = tile_partitions(cfg, store, [KEY], Log(), progress)
    assert out.retiled == MAX_TILING_TRIES - 1
    row = slide_row(store)
    assert row["status"] == "error" and "changed while it was tiled" in row["error"] and str(path) in row["error"]
    assert store.read("tiles", "slide_id = ?", [SID]).empty
    assert not layout.tile_file(cfg, "brca", SID).exists()
    again = tile_partitions(cfg, store, [KEY], Log())  # the copy is over: the next run tiles it
    assert again.reused == 0 and slide_row(store)["status"] == "ok"


def test_reuse_follows_the_content_not_the_mtime(deployment, tmp_path):
    cfg, slides, store = deployment
    path = slides / f"{SID}.svs"
    write_pyramid(path, tissue(1, 4, 4), "aperio20")
    tile_partitions(cfg, store, [KEY], Log())
    first = slide_row(store)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touch (rsync without -t, a restore)
    assert tile_partitions(cfg, store, [KEY], Log()).reused == 1
    # other content put in its place with the recorded size and mtime: stat alone would reuse the old tiles
    write_pyramid(tmp_path / "b.svs", tissue(5, 4, 4), "aperio20")
    data = bytearray((tmp_path / "b.svs").read_bytes())
    data = data[: first["file_size"]] + bytes(max(0, first["file_size"] - len(data)))
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, int(first["file_mtime_ns"])))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (first["file_size"], first["file_mtime_ns"])
    out = tile_partitions(cfg, store, [KEY], Log())
    assert out.reused == 0 and slide_row(store)["file_fingerprint"] != first["file_fingerprint"]


def test_tile_file_digest_is_its_content(deployment, tmp_path):
    """Two slides with the same number of tiles but other pixels: different tile digests; the same slide
    tiled again: the same digest (the tile file is written deterministically)."""
    cfg, slides, store = deployment
    write_pyramid(slides / f"{SID}.svs", tissue(1, 4, 4), "aperio20")
    sid2 = "TCGA-AA-0002-01Z-00-DX1"
    write_pyramid(slides / f"{sid2}.svs", tissue(2, 4, 4), "aperio20")
    tile_partitions(cfg, store, [KEY, f"brca/{sid2}"], Log())
    rows = store.read("slides").set_index("slide_id")
    assert rows.n_tiles[SID] == rows.n_tiles[sid2] == 16
    assert rows.tiles_digest[SID] != rows.tiles_digest[sid2]
    store.delete("slides", KEY)
    tile_partitions(cfg, store, [KEY], Log())
    assert slide_row(store)["tiles_digest"] == rows.tiles_digest[SID]


def test_stored_predictions_of_other_content_with_the_same_tile_count_are_never_reused(deployment, tmp_path):
    """Slide B copied over slide A (16 tiles each) and A re-tiled: A's ensemble probabilities are B's, computed
    by the member model on A's new tile file, not A's stored ones (issue 30, failure 2)."""
    import json

    import keras

    from pathomch_assets.predictions import MemberModels, prediction_frame
    from pathomch_assets.training import predict_files

    cfg, slides, store = deployment
    sid_b = "TCGA-AA-0002-01Z-00-DX1"
    a, b = slides / f"{SID}.svs", slides / f"{sid_b}.svs"
    write_pyramid(a, tissue(1, 4, 4), "aperio20")
    write_pyramid(b, np.clip(tissue(2, 4, 4).astype(int) + 50, 0, 255).astype(np.uint8), "aperio20")  # brighter
    tile_partitions(cfg, store, [KEY, f"brca/{sid_b}"], Log())
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, "sigmoid")]
    )
    model.layers[-1].set_weights([np.full((3, 1), 0.02), np.array([-2.0])])  # brightness -> probability
    trait, member = "MKI67", "round_0"
    folder = layout.model_dir(cfg, "brca", trait, member)
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    layout.ensemble_file(cfg, "brca", trait).write_text(json.dumps({"members": [member]}))
    rows = store.read("slides").sort_values("slide_id").reset_index(drop=True)
    files = [str(layout.tile_file(cfg, "brca", s)) for s in rows.slide_id]
    tiles = store.read("tiles").sort_values(["slide_id", "idx"])
    pos = {s: g[["col", "row"]].reset_index(drop=True) for s, g in tiles.groupby("slide_id")}
    preds = prediction_frame(pos, rows, predict_files(model, files, 16))
    path = layout.predictions_file(cfg, "brca", trait, member)
    path.parent.mkdir(parents=True)
    preds.to_parquet(path, index=False)
    stored = {s: g.p.to_numpy() for s, g in preds.groupby("slide_id")}
    assert not np.allclose(stored[SID], stored[sid_b])

    digest = rows.set_index("slide_id").tiles_digest
    p, ran = MemberModels(cfg, "brca").probabilities(trait, SID, 16, digest[SID])
    assert not ran and np.array_equal(p[0], stored[SID])  # unchanged content: stored predictions reused
    shutil.copy(b, a)  # B over A: the same 16 tiles, other content
    tile_partitions(cfg, store, [KEY], Log())
    new = slide_row(store)["tiles_digest"]
    assert new == digest[sid_b] != digest[SID]
    p, ran = MemberModels(cfg, "brca").probabilities(trait, SID, 16, new)
    assert ran and np.allclose(p[0], stored[sid_b], atol=1e-6)
    # predictions stored before digests were kept are not trusted either
    preds.drop(columns="tiles_digest").to_parquet(path, index=False)
    assert MemberModels(cfg, "brca").probabilities(trait, sid_b, 16, digest[sid_b])[1]


# ---------------------------------------------------------------- a slide's own metadata, a tile's own header


def test_objective_power_of_a_slide_outside_the_bounds_is_refused_naming_the_file(tmp_path):
    """`AppMag = .05` on an ordinary Aperio slide (no MPP): refused at once, not tiled as 1 px reads."""
    from pathomch_assets.tiling import TilingParams, tile_slide

    path = tmp_path / f"{SID}.svs"
    write_pyramid(path, tissue(3, 4, 4), "aperio40_power")
    data = path.read_bytes()
    assert data.count(b"AppMag = 40") == 1
    path.write_bytes(data.replace(b"AppMag = 40", b"AppMag =.05"))  # same length: the TIFF stays valid
    res = tile_slide("brca", SID, path, tmp_path / "t.tfrecord", TilingParams(tile_px=64))
    assert res.status == "error" and not res.records
    assert res.error.startswith(str(path)) and "objective power of 0.05 (outside 1-100x)" in res.error


def test_a_slide_whose_tile_grid_is_absurd_is_refused_before_reading(tmp_path):
    from pathomch_assets.slides import MAX_CELLS
    from pathomch_assets.tiling import TilingParams, tile_slide

    path = tmp_path / f"{SID}.svs"
    write_pyramid(path, tissue(4, 16, 32), "aperio20")  # 2048 x 1024 px
    res = tile_slide("brca", SID, path, tmp_path / "t.tfrecord", TilingParams(tile_px=1))  # 2,097,152 cells
    assert 2048 * 1024 > MAX_CELLS
    assert res.status == "error" and str(path) in res.error and "2,097,152 tile cells" in res.error


def test_a_jpeg_tile_declaring_another_size_is_refused_before_decoding(tmp_path):
    """One stored 256 x 256 tile whose JPEG header declares 2048 x 2048, read on the exact path (20x tiles of a
    20x slide): "Dimensional mismatch", as OpenSlide says, naming the file; nothing decoded at that size."""
    import tifffile

    from pathomch_assets.tiling import TilingParams, jpeg_frame_size, tile_slide

    path = tmp_path / f"{SID}.svs"
    write_pyramid(path, tissue(5, 4, 4, px=256), "aperio20")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    data = bytearray(path.read_bytes())
    tile = bytes(data[offset : offset + count])
    assert jpeg_frame_size(tile) == (256, 256)
    sof = tile.index(b"\xff\xc0")
    data[offset + sof + 5 : offset + sof + 9] = (2048).to_bytes(2, "big") * 2  # height, width
    path.write_bytes(bytes(data))
    assert jpeg_frame_size(path.read_bytes()[offset : offset + count]) == (2048, 2048)
    params = TilingParams(magnification=20, tile_px=256, max_background_fraction=1.0)
    res = tile_slide("brca", SID, path, tmp_path / "t.tfrecord", params)
    assert res.status == "error" and res.error.startswith(str(path))
    assert "Dimensional mismatch reading JPEG tile 0 of page 0" in res.error and "2048 x 2048" in res.error


# ---------------------------------------------------------------- settings against the machine


def test_a_training_batch_beyond_any_machine_is_refused_saying_why(tmp_path):
    from pathomch_assets.config import ConfigError

    (tmp_path / "mrna.tsv").write_text("gene_id\n")
    (tmp_path / "mirna.csv").write_text("Genes,Correction\n")
    p = tmp_path / "p.yaml"
    p.write_text(
        "data_dir: out\nduckdb_path: out/p.duckdb\ntraining: {batch_size: 100000000}\ncohorts:\n  brca:\n"
        "    slides_dir: .\n    mrna: mrna.tsv\n    mirna: mirna.csv\n    traits: [MKI67]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: invalid configuration")
    assert "training.batch_size: Input should be less than or equal to 4096" in msg and "in memory" in msg


def test_tiling_parallelism_is_capped_at_the_cpus_with_a_log_line(deployment):
    import dataclasses

    from pathomch_assets.ingest import run_parallelism

    cfg, _, _ = deployment
    cfg = cfg.model_copy(update={"tiling": cfg.tiling.model_copy(update={"workers": 64, "threads_per_slide": 256})})
    log = Log()
    assert run_parallelism(cfg, log, cpus=2) == (2, 2)
    assert log.lines == [
        "tiling.workers 64 capped at 2 (the CPUs this run may use)",
        "tiling.threads_per_slide 256 capped at 2 (the CPUs this run may use)",
    ]
    log = Log()
    assert run_parallelism(cfg, log, cpus=512) == (64, 256) and log.lines == []
    from pathomch_assets.tiling import TilingParams

    params = TilingParams.from_config(cfg)  # the threads are not part of what the tiles depend on
    assert params.digest() == dataclasses.replace(params, threads=2).digest()


# ---------------------------------------------------------------- survival on degenerate data


def survival_table(store, clinical_update: dict | None = None):
    """Replace the cohort's clinical rows with ``clinical_update`` applied, as a new clinical file would."""
    c = store.read("clinical", "cohort = ?", ["brca"])
    store.write("clinical", "brca", c.assign(**(clinical_update or {})))
    store.ensure_views()


@SEPARABLE
@pytest.mark.parametrize(
    "update,reason",
    [
        ({"os_months": 0.0, "os_event": 1}, "no admissible pair: "),  # log-rank: variance 0; C and Cox: no pair
        ({"os_event": 0}, "every patient is censored (0 deaths among"),
    ],
    ids=["every patient dead at month 0", "every patient censored"],
)
def test_degenerate_survival_data_is_stated_and_earlier_results_do_not_stand(tiny, update, reason):  # noqa: F811
    import dagster as dg

    from .test_assets import asset, write_survival_inputs

    cfg, pathomch, store, defs = tiny
    write_survival_inputs(cfg, store)
    survival_analysis = asset(defs, "survival_analysis")
    survival_analysis(context=dg.build_asset_context(partition_key="brca"), pathomch=pathomch)
    before = store.query("select * from survival")
    assert (before.status == "ok").all() and before.c_index.notna().any()  # the earlier clinical file's results
    survival_table(store, update)  # a new clinical file: every patient dead at month 0, or none dead
    survival_analysis(context=dg.build_asset_context(partition_key="brca"), pathomch=pathomch)  # no exception
    after = store.query("select * from survival")
    assert len(after) == len(before) and set(after.grouping) == set(before.grouping)
    assert (after.status == "untestable").all() and after.reason.str.contains(reason, regex=False).all()
    assert after[["logrank_p", "hazard_ratio", "c_index"]].isna().all().all()  # nothing of the earlier file


@SEPARABLE
def test_survival_rows_of_a_cohort_are_cleared_before_they_are_computed_again(tiny, monkeypatch):  # noqa: F811
    """A survival run that fails leaves no rows of earlier inputs standing as current."""
    import dagster as dg

    from pathomch_assets import survival

    from .test_assets import asset, write_survival_inputs

    cfg, pathomch, store, defs = tiny
    write_survival_inputs(cfg, store)
    survival_analysis = asset(defs, "survival_analysis")
    survival_analysis(context=dg.build_asset_context(partition_key="brca"), pathomch=pathomch)
    assert not store.read("survival").empty

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(survival, "cox_hti", broken)
    with pytest.raises(OSError):
        survival_analysis(context=dg.build_asset_context(partition_key="brca"), pathomch=pathomch)
    assert store.read("survival").empty


# ---------------------------------------------------------------- pathomch sql


@pytest.fixture
def tables(deployment):
    """The deployment with a ``slides`` table and its views file: (config, store)."""
    cfg, _, store = deployment
    rows = pd.DataFrame({"cohort": "brca", "slide_id": [SID], "patient_id": SID[:12], "path": "", "status": "ok"})
    store.write("slides", "brca", rows.assign(error=None))
    store.ensure_views()
    return cfg, store


def sql(cfg, query: str, *flags: str) -> int:
    from pathomch_assets.cli import main

    return main(["sql", query, "--config", str(cfg.source), *flags])


def test_pathomch_sql_reads_and_refuses_writes_and_files_outside_unless_asked(tables, tmp_path, capsys):
    cfg, _ = tables
    assert sql(cfg, "select status, count(*) n from slides group by 1") == 0
    assert "| ok       |   1 |" in capsys.readouterr().out
    assert sql(cfg, "pivot slides on status using count(*)") == 0  # PIVOT: a read (a MULTI statement)
    capsys.readouterr()
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    out_file = tmp_path / "copied.csv"
    refused = {
        f"copy (select * from slides) to '{out_file}'": "COPY statement refused",
        f"attach '{cfg.duckdb_path}' as v; drop view v.slides": "ATTACH statement refused",
        f"select * from read_csv('{secret}')": "Permission Error",
        f"select * from glob('{tmp_path}/*')": "Permission Error",
        "set enable_external_access = true": "SET statement refused",
        "install httpfs": "LOAD statement refused",
    }
    for query, why in refused.items():
        assert sql(cfg, query) == 1, query
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("pathomch sql: ") and why in err, (query, err)
    assert not out_file.exists()
    assert sql(cfg, f"copy (select * from slides) to '{out_file}'", "--write") == 0 and out_file.exists()


def test_a_bad_query_is_one_line_without_a_traceback(tables, capsys):
    cfg, _ = tables
    assert sql(cfg, "select nope from slides") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and 'column "nope"' in err.lower()
    assert sql(cfg, "selec 1") == 1
    assert capsys.readouterr().err.startswith("pathomch sql: Parser Error")


def test_views_dropped_through_attach_repair_themselves(tables):
    import duckdb

    cfg, store = tables
    assert not store.ensure_views()  # up to date
    con = duckdb.connect(":memory:")
    con.execute(f"attach '{cfg.duckdb_path}' as v")
    con.execute("drop view v.slides")
    con.close()
    with duckdb.connect(str(cfg.duckdb_path), read_only=True) as ro:
        with pytest.raises(duckdb.CatalogException):
            ro.execute("select * from slides")
    assert store.ensure_views()  # the file changed since it was written: written again
    with duckdb.connect(str(cfg.duckdb_path), read_only=True) as ro:
        assert ro.execute("select count(*) from slides").fetchone() == (1,)
    assert not store.ensure_views()


# ---------------------------------------------------------------- the CLI says what it did


@pytest.mark.parametrize(
    "flags,expect",
    [
        (["--select", "slide_tile"], "--select 'slide_tile' matches no asset; did you mean 'slide_tiles'?"),
        (["--select", "labels,slide_tile"], "--select 'slide_tile' matches no asset; did you mean 'slide_tiles'?"),
        (["--select", "key:slide_tile+"], "--select 'key:slide_tile+' matches no asset; did you mean 'slide_tiles'?"),
        (["--select", "brca/slide_tile"], "--select 'brca/slide_tile' matches no asset; did you mean "
         "'brca/slide_tiles'"),
        (["--select", "labels", "--partition", "brca/NOPE"], "--partition 'brca/NOPE' is no partition"),
        (["--select", "labels", "--partition", "bcra"], "--partition 'bcra' is no partition of the selected assets; "
         "did you mean 'brca'?"),
        (["--select", "trait_model", "--partition", "brca/MKI67|round_0"],
         "--partition 'brca/MKI67|round_0' is no partition"),
    ],
)  # fmt: skip
def test_a_selection_or_partition_that_names_nothing_fails_with_close_matches(
    deployment, tmp_path, monkeypatch, capsys, flags, expect
):
    from pathomch_assets.cli import main

    cfg, _, _ = deployment
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["materialize", "--config", str(cfg.source), *flags]) == 2
    captured = capsys.readouterr()
    assert f"config: {cfg.source}" in captured.out  # the configuration in use, first
    assert expect in captured.err and "runs in" not in captured.out


def test_the_shipped_demo_configuration_is_never_used_silently(monkeypatch, capsys):
    from pathomch_assets.cli import announce_config
    from pathomch_assets.config import DEMO_CONFIG, ENV_VAR

    cfg = load_config(DEMO_CONFIG, check_files=False)
    monkeypatch.delenv(ENV_VAR, raising=False)
    announce_config(cfg, None)
    out = capsys.readouterr()
    assert out.out == f"config: {DEMO_CONFIG}\n"
    assert out.err.startswith("pathomch: WARNING: no --config and no $PATHOMCH_CONFIG: using the shipped demo")
    assert str(cfg.data_dir) in out.err
    announce_config(cfg, str(DEMO_CONFIG))  # asked for by name: said, not warned
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- a full disk while saving a model

SAVE_ON_A_FULL_DISK = """
import resource, signal, sys
from dataclasses import dataclass

import keras
import pandas as pd

from pathomch_assets.training import save_model


@dataclass
class Result:
    history: pd.DataFrame
    best_val_auc: float = 0.5


model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(1, "sigmoid")])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk with ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_model(model, Result(pd.DataFrame({"auc": [0.5]})), sys.argv[1], {})
except OSError as err:
    print(f"{type(err).__name__}: errno {err.errno}: {err}")
"""


def test_a_model_that_cannot_be_written_names_the_file(tmp_path):
    """The disk refuses the model's bytes (a file-size limit: the same failed write as a full disk): the error
    names the file being written and the folder, not only "[Errno 28] No space left on device"."""
    import subprocess
    import sys

    folder = tmp_path / "models" / "brca" / "MKI67" / "round_0"
    out = subprocess.run(
        [sys.executable, "-c", SAVE_ON_A_FULL_DISK, str(folder)], capture_output=True, text=True, timeout=300
    )
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    assert line.startswith("OSError: errno 27: "), line
    assert f"writing {folder / 'model.keras'}" in line and "free space in" in line
    assert not (folder / "model.keras").exists()


# ---------------------------------------------------------------- ambiguous inputs


def test_a_clinical_file_with_patient_id_twice_names_the_file_and_column(tmp_path):
    from pathomch_assets.expression import ExpressionFormatError, read_clinical

    c = tmp_path / "data_clinical_patient.txt"
    c.write_text(
        "#Patient Identifier\tOverall Survival Status\tOverall Survival (Months)\tOther\n"
        "PATIENT_ID\tOS_STATUS\tOS_MONTHS\tPATIENT_ID\n"
        "TCGA-A1-A0SB\t1:DECEASED\t3\tA0SB\nTCGA-A2-A04P\t0:LIVING\t30\tA04P\n"
    )
    with pytest.raises(ExpressionFormatError) as err:
        read_clinical(c)
    assert str(err.value) == (
        f"{c}: line 2: column PATIENT_ID appears 2 times (fields [1, 4]): which one to read is ambiguous; keep one"
    )


def test_one_mirna_configured_under_two_names_is_a_config_error(deployment):
    from pathomch_assets.config import ConfigError

    cfg, _, _ = deployment
    text = cfg.source.read_text()
    cfg.source.write_text(text.replace("traits: [MKI67, miR-17-5p]", "traits: [MKI67, miR-17-5p, hsa-miR-17-5p]"))
    with pytest.raises(ConfigError) as err:
        load_config(cfg.source)
    assert "cohorts.brca.traits" in str(err.value)
    assert "traits 'miR-17-5p' and 'hsa-miR-17-5p' are the same miRNA (hsa-miR-17-5p): keep one" in str(err.value)


def test_a_slide_of_a_cohort_no_longer_configured_says_so(deployment):
    cfg, slides, store = deployment
    write_pyramid(slides / f"{SID}.svs", tissue(1, 4, 4), "aperio20")  # the file is there
    tile_partitions(cfg, store, [f"gone/{SID}"], Log())
    row = store.read("slides", "cohort = ?", ["gone"]).iloc[0]
    assert row.status == "missing"
    assert row.error == f"{SID}: cohort 'gone' is not in {cfg.source}: add it back to tile this slide"


# ---------------------------------------------------------------- readers while partitions are replaced

REPLACE_PARTITIONS = """
import random, sys, time
import numpy as np, pandas as pd
from pathomch_assets.tables import TableStore

store = TableStore(sys.argv[1], sys.argv[2])
end, rng = time.time() + float(sys.argv[3]), random.Random(0)
while time.time() < end:  # a slide's `slides` row replaced again and again, with other sizes (as tiling does)
    i, n = rng.randrange(200), rng.randint(1, 300)
    rows = pd.DataFrame({"cohort": "brca", "slide_id": [f"s{i}-{k}" for k in range(n)], "patient_id": "p",
                         "path": "x" * rng.randint(1, 80), "status": "ok", "error": None, "seconds": np.random.rand(n)})
    store.write("slides", f"brca/s{i}", rows)
"""


def test_reads_while_partitions_are_replaced_never_see_a_torn_file(deployment):
    """`TProtocolException: Invalid data` (issue 30, failure 7): DuckDB binds a `union_by_name` read by every
    file's footer, then opens each file again to scan it; a partition renamed over in between is scanned at the
    old footer's offsets.  Reads retry from a hard-link snapshot of the table: every read succeeds, whole."""
    import subprocess
    import sys
    import time

    cfg, _, store = deployment
    for i in range(200):
        row = {"cohort": "brca", "slide_id": [f"s{i}-0"], "patient_id": "p", "path": "", "status": "ok", "error": None}
        store.write("slides", f"brca/s{i}", pd.DataFrame(row))
    writer = subprocess.Popen(
        [sys.executable, "-c", REPLACE_PARTITIONS, str(cfg.tables_dir), str(cfg.duckdb_path), "6"]
    )
    try:
        reads, end = 0, time.time() + 4
        while time.time() < end:
            rows = store.read("slides", "cohort = ?", ["brca"])
            assert rows.slide_id.str.startswith("s").all() and len(rows) >= 200
            reads += 1
    finally:
        writer.wait(timeout=60)
    assert reads > 5 and writer.returncode == 0
    assert not any((cfg.tables_dir / ".snapshots").iterdir())  # snapshots removed


def test_status_lists_slides_scored_on_other_tiles_than_their_current_ones(tables, tmp_path, monkeypatch, capsys):
    """A slide re-tiled (another file, other tiling settings) after its ensemble scores were made: `pathomch
    status` says its scores, maps and HTI are stale; scored again on its current tiles, it is no longer listed."""
    from pathomch_assets.cli import main

    cfg, store = tables
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    slides = store.read("slides").assign(tiles_digest="new-tiles")
    store.write("slides", "brca", slides)
    score = {"cohort": "brca", "trait": "MKI67", "model": "ensemble", "slide_id": SID, "score": 50.0, "n_tiles": 4}
    store.write("slide_scores", KEY, pd.DataFrame([{**score, "patient_id": SID[:12], "tiles_digest": "old-tiles"}]))
    assert main(["status", "--config", str(cfg.source)]) == 0
    out = capsys.readouterr().out
    assert f"| {SID} | stale" in out and "re-run slide_predictions and slide_cartography" in out
    store.write("slide_scores", KEY, pd.DataFrame([{**score, "patient_id": SID[:12], "tiles_digest": "new-tiles"}]))
    main(["status", "--config", str(cfg.source)])
    assert "stale" not in capsys.readouterr().out


def test_untestable_follows_each_test_s_own_condition():
    """Deaths only at the last follow-up, one patient censored then: a log-rank test has variance (it is made,
    as lifelines makes it), Harrell's C has no admissible pair; deaths all at month 0: neither."""
    from lifelines.statistics import logrank_test

    from pathomch_assets.survival import untestable

    last = pd.DataFrame({"os_months": [1.0, 2.0, 5.0, 5.0, 5.0, 3.0], "os_event": [0, 0, 1, 0, 1, 0]})
    assert untestable(last, min_events=1, pairs=False) is None
    a, b = last.iloc[[0, 2, 3]], last.iloc[[1, 4, 5]]
    assert 0 < logrank_test(a.os_months, b.os_months, a.os_event, b.os_event).p_value <= 1
    assert untestable(last).startswith("no admissible pair: no patient was followed longer than a death")
    zero = pd.DataFrame({"os_months": [0.0] * 4, "os_event": [1] * 4})
    assert untestable(zero, pairs=False) == (
        "no admissible pair: at each death time everyone at risk died (4 deaths, all at month 0)"
    )
