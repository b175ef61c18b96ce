"""The TCGA-like family (issue 28 item 6): sites with their own source slides and stain, a site-only trait, pen
strokes, blur, DX2 slides and 40x pyramids without a 20x level, built from the shipped real tiles, deterministically.

Shares are tested on plans (no I/O, hundreds of slides); what the slides hold on a small built cohort.
"""

import hashlib

import numpy as np
import openslide
import pandas as pd
import pytest

from pathomch_assets.augment import rgb_to_hed
from pathomch_assets.demo_cohort import (
    PEN_COLOURS,
    SOURCE_PX,
    TCGA_LIKE_COHORT,
    build_tcga_like,
    load_source_tiles,
    pen_mask,
    plan_tcga_like,
    site_sources,
)
from pathomch_assets.slides import is_diagnostic, patient_id, tss_code

SEED = 2020


@pytest.fixture(scope="module")
def sources():
    return sorted(load_source_tiles())


@pytest.fixture(scope="module")
def big_plan(sources):
    import dataclasses

    spec = dataclasses.replace(TCGA_LIKE_COHORT, n_patients=300)
    return spec, *plan_tcga_like(spec, SEED, sources)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tcga_like")
    cfg = build_tcga_like(out, n_patients=16, seed=SEED, workers=1, progress=lambda *a: None)
    return out, cfg


def test_each_site_has_its_own_source_slides(sources, big_plan):
    spec, _, _, _, _, _, plans = big_plan
    own = site_sources(spec, sources, SEED)
    assert sorted(own) == sorted(spec.tss) and len(spec.tss) >= 4
    every = [s for parts in own.values() for s in parts]
    assert sorted(every) == sorted(sources)  # each shipped source slide goes to exactly one site
    for p in plans:
        assert tss_code(p.slide_id) == p.site and p.source in own[p.site]
    stains = {p.site: p.stain for p in plans}
    assert len(set(stains.values())) == len(spec.tss)  # a stain per site
    assert all(all(tuple(q.stain) == stains[q.site] for q in plans if q.site == s) for s in spec.tss)


def test_site_only_trait_follows_the_site_and_is_planted_nowhere(big_plan, built):
    spec, patients, with_slides, _, shares, _, plans = big_plan
    site = [t for t, e in spec.traits.items() if e == "site"][0]
    frame = pd.DataFrame({"share": shares[site]}).assign(site=lambda d: d.index.str[5:7])
    between = frame.groupby("site")["share"].transform("mean")
    r2 = 1 - ((frame["share"] - between) ** 2).sum() / ((frame["share"] - frame["share"].mean()) ** 2).sum()
    assert r2 > 0.8, r2  # the site determines most of it
    assert all(site not in p.on for p in plans)
    planted = [t for t, e in spec.traits.items() if e not in ("none", "site")][0]
    frame = pd.DataFrame({"share": shares[planted]}).assign(site=lambda d: d.index.str[5:7])
    between = frame.groupby("site")["share"].transform("mean")
    assert 1 - ((frame["share"] - between) ** 2).sum() / ((frame["share"] - frame["share"].mean()) ** 2).sum() < 0.2
    out, _ = built
    tiles = pd.read_csv(out / "ground_truth_tiles.csv")
    assert tiles.loc[tiles["trait"] == site, "planted_on"].sum() == 0
    assert tiles.loc[tiles["trait"] == planted, "planted_on"].sum() > 0


def test_pen_strokes_blur_dx2_and_40x_shares(big_plan):
    spec, _, with_slides, _, _, _, plans = big_plan
    pen = [p for p in plans if p.pen]
    assert 0.10 <= len(pen) / len(plans) <= 0.20, len(pen) / len(plans)
    assert {p.pen["colour"] for p in pen} == set(PEN_COLOURS)
    assert {p.pen["over_tissue"] for p in pen} == {True, False}  # over the tissue and beside it
    assert 0.10 <= sum(bool(p.blur) for p in plans) / len(plans) <= 0.20
    dx2 = {patient_id(p.slide_id) for p in plans if "-DX2." in p.slide_id}
    assert 0.25 <= len(dx2) / len(with_slides) <= 0.42
    assert all(is_diagnostic(p.slide_id) for p in plans)
    assert 0.25 <= sum(p.style == "aperio40_power" for p in plans) / len(plans) <= 0.45


def test_built_slides_hold_the_ink_the_blur_and_the_site_stain(built):
    out, _ = built
    truth = pd.read_csv(out / "ground_truth_slides.csv", keep_default_na=False)
    art = pd.read_csv(out / "ground_truth_artifacts.csv")
    files = {f.name.rsplit(".", 1)[0]: f for f in (out / "tcga" / "slides").iterdir()}
    assert set(files) == set(truth["slide_id"])
    assert truth["slide_id"].str.contains("-DX2.").any()
    forty = truth[truth["style"] == "aperio40_power"]
    assert len(forty)
    for sid in forty["slide_id"]:
        s = openslide.OpenSlide(files[sid])
        assert s.properties["openslide.objective-power"] == "40"
        assert s.level_downsamples[:2] == (1.0, 4.0)  # 40x, 10x: no 20x level
    from pathomch_assets.demo_cohort import TcgaSlidePlan, plan_tcga_like  # the planned strokes, re-drawn

    spec = __import__("dataclasses").replace(TCGA_LIKE_COHORT, n_patients=16)
    plans = {p.slide_id: p for p in plan_tcga_like(spec, SEED, sorted(load_source_tiles()))[-1]}
    assert set(plans) == set(truth["slide_id"])
    checked = 0
    for sid, p in plans.items():
        assert isinstance(p, TcgaSlidePlan)
        s = openslide.OpenSlide(files[sid])
        scale = 2 if p.style == "aperio40_power" else 1
        if p.pen:
            mask = pen_mask(p)
            ys, xs = np.nonzero(mask[::16, ::16])
            y, x = ys[len(ys) // 2] * 16, xs[len(xs) // 2] * 16  # a point in the middle of the stroke
            px = np.asarray(s.read_region((x * scale, y * scale), 0, (1, 1)).convert("RGB"))[0, 0].astype(int)
            ink = np.array(PEN_COLOURS[p.pen["colour"]])
            assert np.abs(px - ink).max() < 60, (sid, px, ink)
            cells = art[(art["slide_id"] == sid) & (art["pen"] > 0)]
            assert len(cells) and cells["pen"].max() > 0.05
            checked += 1
        if p.blur:
            r0, c0, _, _, _ = p.blur
            cell = SOURCE_PX * scale
            region = np.asarray(s.read_region((c0 * cell, r0 * cell), 0, (cell, cell)).convert("L"), float)
            lap = np.abs(np.diff(region, 2, axis=0)).mean()
            sharp = [
                np.abs(
                    np.diff(np.asarray(s.read_region((c * cell, r * cell), 0, (cell, cell)).convert("L"), float), 2, 0)
                ).mean()
                for r, c in zip(*np.nonzero(np.asarray(p.tissue) & (np.asarray(p.edge_white) == 0)))
                if not (p.blur[0] <= r < p.blur[2] and p.blur[1] <= c < p.blur[3])
            ][:4]
            assert lap < 0.5 * min(sharp), (sid, lap, sharp)
    assert checked or not any(p.pen for p in plans.values())
    # per-site stain: the sites' mean haematoxylin on their tissue differs in the direction of their H scales
    by_site = truth.groupby("site")["stain_h"].first()
    lo, hi = by_site.idxmin(), by_site.idxmax()
    means = {}
    for site in (lo, hi):
        sid = truth.loc[(truth["site"] == site) & (truth["style"] == "aperio20"), "slide_id"]
        if sid.empty:
            pytest.skip("no 20x slide of an extreme site in this small cohort")
        s = openslide.OpenSlide(files[sid.iloc[0]])
        img = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
        tissue = ~(img > 220).all(axis=-1)
        means[site] = rgb_to_hed(img[tissue][::7])[:, 0].mean()
    assert by_site[hi] / by_site[lo] > 1.1 and means[hi] > means[lo]


def test_same_seed_same_bytes(tmp_path):
    def digest(folder):
        return {
            str(f.relative_to(folder)): hashlib.md5(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*"))
            if f.is_file()
        }

    a = build_tcga_like(tmp_path / "a", n_patients=5, seed=7, workers=1, progress=lambda *a: None).parent
    b = build_tcga_like(tmp_path / "b", n_patients=5, seed=7, workers=1, progress=lambda *a: None).parent
    c = build_tcga_like(tmp_path / "c", n_patients=5, seed=8, workers=1, progress=lambda *a: None).parent
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_the_config_it_writes_loads(built):
    from pathomch_assets.config import load_config

    _, cfg_path = built
    cfg = load_config(cfg_path)
    assert list(cfg.cohorts) == ["tcga"]
    assert cfg.cohorts["tcga"].traits == list(TCGA_LIKE_COHORT.traits)


def test_too_few_sources_for_the_sites_is_a_clear_error():
    with pytest.raises(ValueError, match="each site needs its own"):
        site_sources(TCGA_LIKE_COHORT, ["a", "b"], SEED)


def test_the_command_builds_it_and_needs_a_folder(tmp_path, capsys, monkeypatch):
    import json

    from pathomch_assets.cli import main

    monkeypatch.setenv("PATHOMCH_CONFIG", "")  # the command sets it: restored after the test
    monkeypatch.delenv("PATHOMCH_CONFIG")
    assert main(["demo", "--family", "tcga_like", "--no-materialize"]) == 2
    assert "needs --dir" in capsys.readouterr().err
    out = tmp_path / "family"
    args = ["demo", "--family", "tcga_like", "--dir", str(out), "--patients", "4", "--no-materialize"]
    assert main(args) == 0
    assert json.loads((out / "demo.json").read_text())["family"] == "tcga_like"
    assert (out / "pathomch.yaml").exists() and (out / "ground_truth_artifacts.csv").exists()
    assert main(args) == 0
    assert "already built" in capsys.readouterr().out
