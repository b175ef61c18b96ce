"""Sizing arithmetic: counted from GDC manifests, measured rates from bench/results.json."""

import csv
from pathlib import Path

import pytest

from pathomch_assets.config import load_config
from pathomch_assets.sizing import Rates, manifest_totals, report, size_cohort

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "deploy" / "pathomch.tcga.yaml"


def test_manifest_totals_count_slides_and_bytes():
    path = REPO / "deploy" / "manifests" / "gdc_manifest_luad.txt"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert manifest_totals(path) == (len(rows), sum(int(r["size"]) for r in rows)) and len(rows) == 469


def test_cohort_row_follows_the_method_shares():
    cfg = load_config(PAPER, check_files=False)  # paper defaults: 20/80 percentiles, 80/10/10, 16 evals/epoch
    rates = Rates(
        tiling_tiles_per_s_per_worker=50,
        tile_bytes=100_000,
        train_tiles_per_s=100,
        infer_tiles_per_s=1000,
        device="test",
        machine="test",
    )
    row = size_cohort(
        cfg,
        "luad",
        slides=10,
        slide_bytes=10**12,
        rates=rates,
        tiles_per_slide=100,
        epochs=2,
        tiling_workers=4,
        accelerators=2,
    )
    # 1000 tiles; 400 labeled; 320 train, 40 val; per model 2*320/100 s training + (2*16*40 + 1000)/1000 s inference
    per_model_s = 2 * 320 / 100 + (2 * 16 * 40 + 1000) / 1000
    assert row["models"] == 5 * 5 and row["tiles_M"] == pytest.approx(1e-3)
    assert row["device_h"] == pytest.approx(25 * per_model_s / 3600)
    assert row["training_wall_h_2_devices"] == pytest.approx(row["device_h"] / 2)
    assert row["tiling_core_h"] == pytest.approx(1000 / 50 / 3600)
    assert row["tiling_wall_h_4_workers"] == pytest.approx(row["tiling_core_h"] / 4)
    assert row["tile_store_GB"] == pytest.approx(0.1)


def test_report_for_the_paper_config_uses_the_shipped_measurements():
    text = report(load_config(PAPER, check_files=False), REPO / "bench" / "results.json")
    rates = Rates.from_bench(REPO / "bench" / "results.json")
    assert "| total" in text and "1230" in text
    assert f"{rates.tiling_tiles_per_s_per_worker:.0f} tiles/s per worker" in text


def test_gpu_measurements_replace_the_cpu_rates(tmp_path):
    import json

    results = json.loads((REPO / "bench" / "results.json").read_text())
    results["accelerators"] = [
        {
            "device": "GPU X",
            "devices": 1,
            "precision": p,
            "architecture": "inception_v3",
            "input_px": 512,
            "batch_per_device": 32,
            "training_tiles_per_s": t,
            "inference_tiles_per_s": 3 * t,
        }
        for p, t in (("float32", 200.0), ("mixed_float16", 450.0))
    ]
    (tmp_path / "r.json").write_text(json.dumps(results))
    rates = Rates.from_bench(tmp_path / "r.json")
    assert (rates.train_tiles_per_s, rates.infer_tiles_per_s, rates.device) == (450.0, 1350.0, "GPU X, mixed_float16")


def test_sizing_command_counts_every_diagnostic_slide_of_the_paper(capsys, monkeypatch):
    """`pathomch sizing --config deploy/pathomch.tcga.yaml`: 761 BRCA and 469 LUAD slides (paper, Methods)
    of 703 and 410 patients: every diagnostic slide, not one per patient."""
    from pathomch_assets.cli import main

    monkeypatch.chdir(REPO)
    assert main(["sizing", "--config", str(PAPER)]) == 0
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and "cohort" not in line
    }
    assert rows["brca"] == ["703", "761"] and rows["luad"] == ["410", "469"] and rows["total"] == ["1113", "1230"]
