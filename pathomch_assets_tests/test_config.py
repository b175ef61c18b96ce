"""The configuration contract (SPEC 5): paper defaults, clear errors naming file and key."""

import os
import textwrap

import pytest

from pathomch_assets.config import DEMO_CONFIG, ENV_VAR, ConfigError, is_mirna, load_config


def write(tmp_path, text, name="pathomch.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


MINIMAL = """
data_dir: out
duckdb_path: out/p.duckdb
cohorts:
  brca:
    slides_dir: slides
    mrna: mrna.tsv
    mirna: mirna.csv
    traits: [MKI67, miR-17-5p]
"""


@pytest.fixture
def minimal(tmp_path):
    (tmp_path / "slides").mkdir()
    (tmp_path / "mrna.tsv").write_text("gene_id\n")
    (tmp_path / "mirna.csv").write_text("Genes,Correction\n")
    return write(tmp_path, MINIMAL)


def test_paper_values_are_the_defaults(minimal):
    cfg = load_config(minimal)
    assert (cfg.tiling.magnification, cfg.tiling.tile_px, cfg.tiling.background_threshold) == (20, 512, 220)
    assert cfg.tiling.max_background_fraction == 0.5
    assert (cfg.labels.low_percentile, cfg.labels.high_percentile) == (20, 80)
    assert (cfg.splits.test_fraction, cfg.splits.val_fraction, cfg.splits.rounds) == (0.1, 0.1, 5)
    t = cfg.training
    assert (t.architecture, t.learning_rate, t.evals_per_epoch) == ("inception_v3", 1e-3, 16)
    assert (t.reduce_lr_patience, t.early_stop_patience) == (10, 30)
    assert (cfg.ensemble.size, cfg.ensemble.min_votes, cfg.ensemble.threshold) == (3, 2, 0.5)
    assert cfg.targets() == ["brca/MKI67", "brca/miR-17-5p"]


def test_relative_paths_resolve_against_the_file(minimal, tmp_path):
    cfg = load_config(minimal)
    assert cfg.cohorts["brca"].slides_dir == (tmp_path / "slides").resolve()
    assert cfg.data_dir == (tmp_path / "out").resolve()


def test_env_var_chooses_the_file(minimal, monkeypatch):
    monkeypatch.setenv("PATHOMCH_CONFIG", str(minimal))
    assert load_config().source == minimal.resolve()


def test_unknown_key_names_file_and_key(minimal, tmp_path):
    p = write(tmp_path, MINIMAL + "tiling:\n  magnificaton: 20\n", "bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(p) in str(err.value) and "tiling.magnificaton: unknown key" in str(err.value)


def test_bad_value_names_key(minimal, tmp_path):
    p = write(tmp_path, MINIMAL + "labels:\n  high_percentile: 40\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"labels.high_percentile"):
        load_config(p)


def test_missing_input_file_is_named(tmp_path):
    (tmp_path / "slides").mkdir()
    p = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "cohorts.brca.mrna" in str(err.value) and "mrna.tsv does not exist" in str(err.value)


def test_mirna_trait_needs_a_mirna_table(tmp_path):
    p = write(tmp_path, MINIMAL.replace("    mirna: mirna.csv\n", ""))
    with pytest.raises(ConfigError, match="miRNA"):
        load_config(p, check_files=False)


def test_survival_pair_must_name_configured_traits(tmp_path):
    p = write(tmp_path, MINIMAL + "    survival_pairs: [[MKI67, FOXA1]]\n")
    with pytest.raises(ConfigError, match="FOXA1"):
        load_config(p, check_files=False)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_demo_config_is_valid():
    cfg = load_config(DEMO_CONFIG, check_files=False)
    assert set(cfg.cohorts) == {"brca", "luad"}
    assert cfg.cohorts["brca"].survival_pairs == [["MKI67", "miR-17-5p"]]


@pytest.mark.parametrize(
    "name,expected",
    [("miR-17-5p", True), ("hsa-miR-21-5p", True), ("let-7a-5p", True), ("MKI67", False), ("MIR17HG", False)],
)
def test_mirna_names(name, expected):
    assert is_mirna(name) is expected


def test_data_dir_may_be_an_object_store_url(minimal, tmp_path):
    text = minimal.read_text().replace(
        "data_dir: out", "data_dir: s3://lab-bucket/pathomch\nstorage_options: {endpoint_url: 'http://minio:9000'}"
    )
    cfg = load_config(write(tmp_path, text, "remote.yaml"))
    assert cfg.data_dir == "s3://lab-bucket/pathomch"
    tiles = cfg.tiles_dir
    assert str(tiles) == "s3://lab-bucket/pathomch/tiles" and tiles.storage_options == {
        "endpoint_url": "http://minio:9000"
    }
    assert cfg.duckdb_path == (tmp_path / "out" / "p.duckdb").resolve()
    local = load_config(
        write(tmp_path, minimal.read_text().replace("data_dir: out", f"data_dir: file://{tmp_path}/o"), "file.yaml")
    )
    assert local.tiles_dir == tmp_path / "o" / "tiles"


def test_duckdb_file_must_be_local(minimal, tmp_path):
    text = minimal.read_text().replace("duckdb_path: out/p.duckdb", "duckdb_path: s3://b/p.duckdb")
    with pytest.raises(ConfigError, match=r"bad.yaml[\s\S]*duckdb_path: .*must be a local file"):
        load_config(write(tmp_path, text, "bad.yaml"))


def test_monitor_and_batch_settings(minimal, tmp_path):
    """training.monitor defaults to slide_auc; the paper config trains with 144 tiles, 18 per replica."""
    from pathlib import Path

    cfg = load_config(minimal)
    assert (cfg.training.monitor, cfg.training.batch_size, cfg.training.per_replica_batch) == ("slide_auc", 32, None)
    bad = write(tmp_path, MINIMAL + "training:\n  monitor: val_loss\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml[\s\S]*training.monitor"):
        load_config(bad)
    paper = load_config(Path(__file__).resolve().parents[1] / "deploy" / "pathomch.tcga.yaml", check_files=False)
    assert (paper.training.batch_size, paper.training.per_replica_batch) == (144, 18)
    assert all(c.clinical.parent.name in ("brca_tcga", "luad_tcga") for c in paper.cohorts.values())  # Firehose Legacy


@pytest.fixture
def no_demo_tiles(tmp_path, monkeypatch):
    """`pathomch demo` as from an installed package: its source tiles point nowhere; a DAGSTER_HOME and
    PATHOMCH_CONFIG of the test's own (both restored afterwards, whatever the command sets)."""
    from pathomch_assets.demo_cohort import TILES_ENV

    monkeypatch.setenv(TILES_ENV, str(tmp_path / "no_tiles"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return tmp_path / "no_tiles"


def test_demo_without_its_source_tiles_says_where_they_are(tmp_path, no_demo_tiles, capsys):
    """An installed package has no data/tcga_tiles beside it: `pathomch demo --dir` names the folder it
    looked in and the variable to set, and builds nothing."""
    from pathomch_assets.cli import main
    from pathomch_assets.demo_cohort import TILES_ENV

    assert main(["demo", "--dir", str(tmp_path / "demo"), "--no-materialize"]) == 2
    err = capsys.readouterr().err
    assert str(no_demo_tiles) in err and TILES_ENV in err and "data/tcga_tiles" in err
    assert not (tmp_path / "demo" / "pathomch.yaml").exists()
    assert ENV_VAR not in os.environ  # a failed command points nothing that runs later at its folder


def test_demo_tiles_are_found_through_the_environment(tmp_path, monkeypatch):
    import shutil

    from pathomch_assets.demo_cohort import REPO_TILES, TILES_ENV, load_source_tiles

    src = next(d for d in sorted(REPO_TILES.iterdir()) if d.is_dir())
    shutil.copytree(src, tmp_path / "tiles" / src.name)
    monkeypatch.setenv(TILES_ENV, str(tmp_path / "tiles"))
    tiles = load_source_tiles()
    assert list(tiles) == [src.name] and len(tiles[src.name]) == len(list(src.glob("*.jpeg")))


def test_a_demo_folder_without_its_config_is_rebuilt_and_a_bad_rebuild_changes_nothing(tmp_path, no_demo_tiles, capsys):
    """`pathomch demo --dir` on a folder with a stamp but no pathomch.yaml (e.g. data/demo) builds it again
    instead of claiming it is built; a rebuild that cannot start (no source tiles) removes nothing."""
    import json

    from pathomch_assets.cli import main
    from pathomch_assets.demo_cohort import TILES_ENV

    demo = tmp_path / "demo"
    (demo / "brca" / "slides").mkdir(parents=True)
    (demo / "demo.json").write_text(json.dumps({"seed": load_config(DEMO_CONFIG, check_files=False).seed}))
    assert main(["demo", "--dir", str(demo), "--no-materialize"]) == 2
    out = capsys.readouterr()
    assert "building the demo cohorts" in out.out and "already built" not in out.out and TILES_ENV in out.err
    assert (demo / "brca" / "slides").is_dir() and json.loads((demo / "demo.json").read_text())["seed"] is not None
    assert ENV_VAR not in os.environ


def test_shipped_small_cohort_profile_is_valid():
    """configs/small_cohort.yaml (docs/learning-small-cohorts.md) loads, validates and differs from the paper only
    where the profile says so; paths resolve into data/tcga_like, where ``pathomch demo --family tcga_like`` builds."""
    from pathomch_assets.config import PACKAGE_DIR

    cfg = load_config(PACKAGE_DIR / "configs" / "small_cohort.yaml", check_files=False)
    assert list(cfg.cohorts) == ["tcga"]
    assert cfg.cohorts["tcga"].slides_dir == PACKAGE_DIR.parent / "data" / "tcga_like" / "tcga" / "slides"
    assert (cfg.tiling.magnification, cfg.tiling.tile_px) == (10, 128)
    assert (cfg.training.architecture, cfg.training.input_px, cfg.training.max_tiles_per_slide) == (
        "small_cnn",
        32,
        256,
    )
    assert cfg.training.augment.stain == "none"  # HED jitter: no gain measured on the TCGA-like family
    assert cfg.labels == load_config(DEMO_CONFIG, check_files=False).labels  # the paper's 20/80 labels
