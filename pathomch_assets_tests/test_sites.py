"""Tissue source sites and site-preserved splits (issue 28; Howard et al. 2021, Nat Commun 12:4423)."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from bench.site_splits import deviation, random_site_splits, synthetic_site_cohort
from pathomch_assets.checks import site_separation
from pathomch_assets.config import SplitConfig, load_config
from pathomch_assets.definitions import build_definitions
from pathomch_assets.resources import PathomchResource
from pathomch_assets.sites import patient_sites, read_site_file, site_lookup
from pathomch_assets.splits import assign_splits, cohort_splits, moved_patients, site_preserved_splits
from pathomch_assets.tables import TableStore


def shared_sites(splits: pd.DataFrame) -> pd.Series:
    """(round, site) pairs whose patients are in more than one split."""
    n = splits.groupby(["round", "site"])["split"].nunique()
    return n[n > 1]


@pytest.fixture(scope="module")
def small():
    return synthetic_site_cohort(n_sites=12, n_patients=240, n_traits=2, seed=3)


def test_no_site_in_two_splits_in_any_round_and_the_test_set_is_fixed(small):
    sites, labels = small
    res = site_preserved_splits(sites, labels, seed=1, rounds=5, cohort="c")
    s = res.splits
    assert res.status == "optimal" and res.n_sites == 12
    assert shared_sites(s).empty
    assert set(s["split"]) == {"train", "val", "test"} and (s.groupby("round")["split"].nunique() == 3).all()
    tests = {r: frozenset(g.loc[g.split == "test", "patient_id"]) for r, g in s.groupby("round")}
    assert len(set(tests.values())) == 1
    vals = [frozenset(g.loc[g.split == "val", "site"]) for _, g in s.groupby("round")]
    assert len(set(vals)) == 5  # rounds differ (here: disjoint validation sites, 5 x 10% of the 90% left)
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1 :])
    assert (s["patient_id"].map(sites) == s["site"]).all()


def test_same_seed_same_split_and_seeds_only_break_ties():
    sites, labels = synthetic_site_cohort(n_sites=12, n_patients=240, n_traits=2, seed=3)
    a = site_preserved_splits(sites, labels, seed=7, rounds=3).splits
    b = site_preserved_splits(
        sites.sample(frac=1, random_state=0), labels.sample(frac=1, random_state=1), seed=7, rounds=3
    )
    pd.testing.assert_frame_equal(a, b.splits)  # the input's row order does not matter either
    # ten identical sites (3 patients each, no labels): every assignment of the same sizes ties, the seed picks one
    ties = pd.Series({f"TCGA-{s}-{i:04d}": s for i, s in enumerate([f"A{k}" for k in range(10)] * 3)})
    picks = {
        frozenset(site_preserved_splits(ties, seed=k, rounds=2).splits.query("split == 'test'")["site"])
        for k in range(6)
    }
    assert len(picks) > 1
    for k in range(3):
        assert shared_sites(site_preserved_splits(ties, seed=k, rounds=2).splits).empty


def test_existing_patients_stay_when_patients_and_a_site_arrive(small):
    sites, labels = small
    before = site_preserved_splits(sites, labels, seed=2, rounds=5, cohort="c")
    grown = sites.copy()
    for i, site in enumerate(["A0", "A1", "A3"] + ["Z9"] * 12):  # new patients at old sites, and a new site
        grown[f"TCGA-{site}-{9000 + i}"] = site
    after = site_preserved_splits(grown, labels, seed=2, rounds=5, previous=before.splits, cohort="c")
    assert moved_patients(before.splits, after.splits).empty
    assert shared_sites(after.splits).empty and after.fixed_sites == 12
    new_at_old = after.splits[after.splits["patient_id"].str.startswith("TCGA-A0-9")]
    old_a0 = before.splits[before.splits["site"] == "A0"][["round", "split"]].drop_duplicates()
    assert new_at_old[["round", "split"]].drop_duplicates().reset_index(drop=True).equals(old_a0.reset_index(drop=True))
    assert set(after.splits.loc[after.splits.site == "Z9", "split"]) <= {"train", "val", "test"}
    # a split that is not site-preserved cannot be frozen site by site: a clear error, nothing moved
    hashed = assign_splits(sites.index, seed=2)
    with pytest.raises(ValueError, match=r"cohort c: the existing splits put patients of one site in two splits"):
        site_preserved_splits(sites, labels, seed=2, previous=hashed, cohort="c")


@pytest.mark.parametrize("n_sites", [1, 2])
def test_too_few_sites_is_a_clear_error(n_sites):
    sites = pd.Series({f"TCGA-{'AB'[i % n_sites]}{i % n_sites}-{i:04d}": f"S{i % n_sites}" for i in range(30)})
    with pytest.raises(ValueError, match=rf"cohort brca: .*at least 3 tissue source sites.*from {n_sites} site"):
        site_preserved_splits(sites, cohort="brca")


def test_class_balance_beats_the_best_of_50_random_site_assignments():
    """40 sites of log-normal sizes, two traits whose expression shifts by site (labels site-dependent)."""
    sites, labels = synthetic_site_cohort(n_sites=40, n_patients=600, n_traits=2, seed=5)
    rates = labels[labels.subset == "labeled"].assign(site=lambda d: d.patient_id.map(sites))
    assert rates.groupby("site")["label"].mean().std() > 0.2  # the classes really depend on the site
    res = site_preserved_splits(sites, labels, seed=0)
    best_random = min(deviation(random_site_splits(sites, seed=k), labels) for k in range(50))
    assert shared_sites(res.splits).empty
    assert deviation(res.splits, labels) <= best_random


def test_a_step_stopped_by_the_node_limit_says_so_and_still_keeps_sites_whole():
    sites, labels = synthetic_site_cohort(n_sites=40, n_patients=600, n_traits=4, seed=5)
    res = site_preserved_splits(sites, labels, seed=0, rounds=2, node_limit=1)
    assert res.status == "node_limit" and res.gap > 0 and "node_limit" in set(res.steps["status"])
    assert shared_sites(res.splits).empty
    assert site_preserved_splits(sites, labels, seed=0, rounds=2, node_limit=1).splits.equals(res.splits)


def test_site_file_for_non_tcga_patients(tmp_path):
    f = tmp_path / "sites.tsv"
    f.write_text(
        "# made by hand\npatient_id\tsite\textra\ncase_001\tLeeds\tx\n\ncase_002\tOslo\ty\nTCGA-A2-A04N\tZ1\tz\n"
    )
    assert read_site_file(f).to_dict() == {"case_001": "Leeds", "case_002": "Oslo", "TCGA-A2-A04N": "Z1"}
    got = patient_sites(["case_001", "case_002", "case_003", "TCGA-A2-A04N", "TCGA-E2-A1B1"], f)
    assert got.to_dict() == {
        "case_001": "Leeds",
        "case_002": "Oslo",
        "case_003": None,
        "TCGA-A2-A04N": "Z1",
        "TCGA-E2-A1B1": "E2",
    }
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,site\ncase_001,Leeds\n")
    with pytest.raises(ValueError, match=r"bad.csv: line 1: missing column\(s\) \['patient_id'\]"):
        read_site_file(bad)
    bad.write_text("patient_id,site\ncase_001,Leeds\ncase_002,\n")
    with pytest.raises(ValueError, match=r"bad.csv: line 3: empty site"):
        read_site_file(bad)
    bad.write_text("patient_id,site\ncase_001,Leeds\ncase_001,Oslo\n")
    with pytest.raises(
        ValueError, match=r"bad.csv: line 3: patient case_001 has site 'Oslo' here but 'Leeds' on line 2"
    ):
        read_site_file(bad)


def test_slides_site_per_cohort_from_its_site_file_else_the_barcode(tmp_path):
    f = tmp_path / "sites.csv"
    f.write_text("patient_id,site\ncase_001-sli,Leeds\n")
    site_of = site_lookup({"mine": f, "brca": None})
    assert site_of("mine", "case_001-sli") == "Leeds" and site_of("mine", "case_002-sli") is None
    assert site_of("brca", "TCGA-A2-A04N") == "A2" and site_of("brca", "case_001-sli") is None
    f.write_text("patient_id;site\n")
    with pytest.raises(ValueError, match=r"sites.csv: line 1: missing column"):
        site_lookup({"mine": f})  # checked when tiling starts, not at the first slide


def slides_of(patients) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": list(patients), "slide_id": [f"{p}-01Z-00-DX1" for p in patients]})


def test_cohort_splits_needs_sites_for_site_preserved_and_keeps_the_patient_method(tmp_path):
    ids = [f"case_{i:03d}" for i in range(30)]
    cfg = SplitConfig(method="site_preserved", rounds=2)
    with pytest.raises(ValueError, match=r"cohort mine: .*30 of 30 patients have none.*add cohorts.mine.site_file"):
        cohort_splits("mine", slides_of(ids), None, None, cfg, 1)
    f = tmp_path / "sites.csv"
    f.write_text("patient_id,site\n" + "".join(f"{p},site{i % 5}\n" for i, p in enumerate(ids)))
    res = cohort_splits("mine", slides_of(ids), None, None, cfg, 1, f)
    assert shared_sites(res.splits).empty and res.splits["site"].str.startswith("site").all()
    assert set(res.counts["method"]) == {"site_preserved"} and set(res.counts["solver_status"]) == {"optimal"}
    # the paper's split: the same rows as assign_splits, a site column beside them (null where unknown)
    assert SplitConfig().method == "patient"  # the paper's split stays the default
    tcga = [f"TCGA-{'ABCD'[i % 4]}1-{i:04d}" for i in range(200)]
    paper = cohort_splits("brca", slides_of(tcga), None, None, SplitConfig(), 2020)
    expected = assign_splits(tcga, 2020).assign(site=lambda d: d.patient_id.str[5:7])
    pd.testing.assert_frame_equal(paper.splits.drop(columns="cohort"), expected)
    assert paper.solver is None and paper.counts["solver_status"].isna().all()
    assert cohort_splits("mine", slides_of(ids), None, None, SplitConfig(), 1).splits["site"].isna().all()


def test_site_check_passes_only_when_no_site_is_shared(small):
    sites, labels = small
    cfg = SplitConfig(method="site_preserved", rounds=2)
    res = cohort_splits("c", slides_of(sites.index), labels.assign(cohort="c"), None, cfg, 1)
    ok = site_separation(res.splits, res.counts)
    assert ok.passed and ok.metadata["sites_in_two_splits"].value == 0
    # brute force: every (round, split, trait, label), a split without such patients counting as share 0
    target = {"train": 0.8, "val": 0.1, "test": 0.1}
    lab = labels[labels.subset == "labeled"].merge(res.splits, on="patient_id")
    devs = [
        100 * abs(((g.split == sp).sum() / len(g)) - target[sp])
        for _, g in lab.groupby(["round", "trait", "label"])
        for sp in target
    ]
    assert ok.metadata["balance_deviation_pp"].value == pytest.approx(np.mean(devs))
    tampered = res.splits.copy()
    first = tampered.index[(tampered["round"] == 0) & (tampered["split"] == "train")][0]
    tampered.loc[first, "split"] = "val"
    bad = site_separation(tampered, res.counts)
    assert not bad.passed and "sites in two splits" in bad.description
    paper = cohort_splits("c", slides_of(sites.index), labels, None, SplitConfig(), 1)
    shared = site_separation(paper.splits, paper.counts)
    assert shared.passed and shared.metadata["sites_in_two_splits"].value > 0 and "patient" in shared.description


CONFIG = """\
data_dir: out
duckdb_path: out/pathomch.duckdb
seed: 1
splits: {method: site_preserved, rounds: 3}
cohorts:
  brca:
    slides_dir: slides
    mrna: mrna.tsv
    traits: [T0, T1]
"""


def test_splits_asset_writes_sites_counts_and_keeps_old_sites(tmp_path, small):
    sites, labels = small
    (tmp_path / "slides").mkdir()
    (tmp_path / "mrna.tsv").touch()
    (tmp_path / "pathomch.yaml").write_text(CONFIG)
    cfg = load_config(tmp_path / "pathomch.yaml")
    store = TableStore(cfg.tables_dir, cfg.duckdb_path)
    pathomch = PathomchResource(config_path=str(tmp_path / "pathomch.yaml"))
    defs = build_definitions(cfg)
    splits = next(a for a in defs.assets if dg.AssetKey(["brca", "splits"]) in a.keys)

    def write_slides(patients):
        rows = slides_of(patients).assign(cohort="brca", path="x", status="ok", error=None)
        store.write("slides", "brca", rows)

    old = [p for p in sites.index if not p.startswith("TCGA-A1")]  # site A1 arrives later
    write_slides(old)
    store.write("labels", "brca", labels.assign(cohort="brca"))
    meta = splits(context=dg.build_asset_context(partition_key="brca"), pathomch=pathomch).metadata
    assert meta["method"] == "site_preserved" and meta["solver_status"] == "optimal" and meta["sites"] == 11
    first = store.read("splits", "cohort = ?", ["brca"])
    counts = store.read("split_counts", "cohort = ?", ["brca"])
    assert set(counts["subset"]) == {"all", "labeled"} and set(counts["method"]) == {"site_preserved"}
    assert counts["share"].between(0, 1).all() and set(counts["target_share"].round(2)) == {0.1, 0.8}
    write_slides(sites.index)
    splits(context=dg.build_asset_context(partition_key="brca"), pathomch=pathomch)
    second = store.read("splits", "cohort = ?", ["brca"])
    assert moved_patients(first, second).empty and "A1" in set(second["site"])
    assert site_separation(second, store.read("split_counts", "cohort = ?", ["brca"])).passed
    np.testing.assert_array_equal(sorted(second["patient_id"].unique()), sorted(sites.index))


def test_slide_tiles_writes_each_slides_site(tmp_path):
    """A TCGA slide gets its barcode's site, another its site file's (real OpenSlide slides, tiled)."""
    import shutil

    from pathomch_assets.partitions import slides_name

    from .conftest import OPENSLIDE

    (tmp_path / "slides").mkdir()
    (tmp_path / "mrna.tsv").touch()
    for name in ("TCGA-a2-A04N-01Z-00-DX1", "case_001-01"):
        shutil.copy(OPENSLIDE / "small.svs", tmp_path / "slides" / f"{name}.svs")
    (tmp_path / "sites.csv").write_text("patient_id,site\ncase_001-01,Leeds\n")
    config = CONFIG.replace("    traits: [T0, T1]\n", "    traits: [T0, T1]\n    site_file: sites.csv\n")
    config += "tiling: {magnification: 20, tile_px: 16, max_background_fraction: 1.0, workers: 1}\n"
    (tmp_path / "pathomch.yaml").write_text(config)
    cfg = load_config(tmp_path / "pathomch.yaml")
    keys = ["brca/TCGA-a2-A04N-01Z-00-DX1", "brca/case_001-01"]
    tiles = next(a for a in build_definitions(cfg).assets if dg.AssetKey(["brca", "slide_tiles"]) in a.keys)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(slides_name("brca"), keys)
        result = dg.materialize(
            [tiles],
            instance=instance,
            partition_key=keys[0],
            resources={"pathomch": PathomchResource(config_path=str(tmp_path / "pathomch.yaml"))},
        )
        assert result.success
        dg.materialize(
            [tiles],
            instance=instance,
            partition_key=keys[1],
            resources={"pathomch": PathomchResource(config_path=str(tmp_path / "pathomch.yaml"))},
        )
    slides = TableStore(cfg.tables_dir, cfg.duckdb_path).read("slides").set_index("slide_id")
    assert slides.loc["TCGA-a2-A04N-01Z-00-DX1", ["patient_id", "site", "status"]].tolist() == [
        "TCGA-A2-A04N",
        "A2",
        "ok",
    ]
    assert slides.loc["case_001-01", ["site", "status"]].tolist() == ["Leeds", "ok"]


def test_config_keys_are_checked(tmp_path):
    from pathomch_assets.config import ConfigError

    (tmp_path / "slides").mkdir()
    (tmp_path / "mrna.tsv").touch()
    path = tmp_path / "pathomch.yaml"
    path.write_text(CONFIG.replace("method: site_preserved", "method: by_site"))
    with pytest.raises(ConfigError, match=r"splits.method: Input should be 'patient' or 'site_preserved'"):
        load_config(path)
    path.write_text(CONFIG.replace("    traits: [T0, T1]\n", "    traits: [T0, T1]\n    site_file: nope.csv\n"))
    with pytest.raises(ConfigError, match=r"cohorts.brca.site_file: .*nope.csv does not exist"):
        load_config(path)
    path.write_text(CONFIG.replace("rounds: 3", "rounds: 3, solver_node_limit: 10"))
    with pytest.raises(ConfigError, match=r"splits.solver_node_limit"):
        load_config(path)
    path.write_text(CONFIG)
    cfg = load_config(path)
    assert cfg.splits.method == "site_preserved" and cfg.cohorts["brca"].site_file is None
