"""Sizing a deployment from measured rates (``bench/results.json``) and GDC manifests.

Every figure is arithmetic on three kinds of input, each printed with the table:

- counted: slides and their bytes (the manifests' ``size`` column), models (traits x rounds);
- measured by ``make bench`` on the machine it ran on: tiles/s of the tiler per worker, stored
  bytes per 512 px tile, Inception v3 512 px training and inference tiles/s (a GPU's when
  the bench ran on one);
- assumed, and named: tissue tiles per slide at 20x (measure with
  ``select avg(n_tiles) from slides where status = 'ok'`` after tiling a sample) and epochs per
  model (the paper's early stopping ends most runs within a few epochs).

The method's shares come from the configuration: 40 % of patients labeled (20th/80th
percentiles), train/val/test 80/10/10, 16 validation passes per epoch, 5 rounds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import PathomchConfig

#: the named assumptions and cluster shape, unless the caller gives others (CLI flags)
ASSUMPTIONS = {"tiles_per_slide": 2500, "epochs": 5, "tiling_workers": 64, "accelerators": 8}


@dataclass(frozen=True)
class Rates:
    tiling_tiles_per_s_per_worker: float
    tile_bytes: float
    train_tiles_per_s: float
    infer_tiles_per_s: float
    device: str
    machine: str

    @classmethod
    def from_bench(cls, path: str | Path) -> Rates:
        r = json.loads(Path(path).read_text())
        # the paper's slides are TCGA 40x SVS files without a 20x level: the tiler's one-thread rate on that pyramid
        one = r["tiling"]["tcga40x"]["tiler_1"]
        paper = next(i for i in r["input_pipeline"] if i.get("store") == "paper" or "inception" in i["config"])
        train, infer, device = (
            paper["training_tiles_per_s"],
            paper.get("inference_tiles_per_s", float("nan")),
            paper.get("device", "CPU"),
        )
        gpu = [
            a
            for a in r.get("accelerators", [])
            if a["devices"] == 1 and a["architecture"] == "inception_v3" and a["input_px"] == 512
        ]
        if gpu:  # measured on a GPU: one device, its faster precision
            best = max(gpu, key=lambda a: a["training_tiles_per_s"])
            train, infer = best["training_tiles_per_s"], best["inference_tiles_per_s"]
            device = f"{best['device']}, {best['precision']}"
        return cls(
            one["tiles"] / one["seconds"],
            paper.get("tile_bytes", float("nan")),
            train,
            infer,
            device,
            f"{r['machine']['platform']}, {r['machine']['cpus']} CPUs",
        )


def manifest_totals(manifest: str | Path) -> tuple[int, int]:
    """(slides, bytes) of a GDC manifest."""
    df = pd.read_csv(manifest, sep="\t")
    return len(df), int(df["size"].sum())


def manifest_patients(manifest: str | Path) -> int:
    """Patients of a GDC manifest (TCGA ids: the first 12 characters of the file name).  Every diagnostic
    slide is tiled and trained on (SPEC 2), so sizing counts slides; this is for the report."""
    return pd.read_csv(manifest, sep="\t")["filename"].str[:12].nunique()


def size_cohort(
    cfg: PathomchConfig,
    cohort: str,
    slides: int,
    slide_bytes: int,
    rates: Rates,
    tiles_per_slide: float,
    epochs: float,
    tiling_workers: int,
    accelerators: int,
) -> dict:
    """One row of the sizing table."""
    c = cfg.cohorts[cohort]
    tiles = slides * tiles_per_slide
    labeled = (cfg.labels.low_percentile + 100 - cfg.labels.high_percentile) / 100 * tiles
    train = labeled * (1 - cfg.splits.test_fraction - cfg.splits.val_fraction)
    val = labeled * cfg.splits.val_fraction
    models = len(c.traits) * cfg.splits.rounds
    evals = cfg.training.evals_per_epoch
    # per model: training passes, validation passes at every evaluation, then every tile scored once
    train_s = epochs * train / rates.train_tiles_per_s
    infer_s = (epochs * evals * val + tiles) / rates.infer_tiles_per_s
    device_hours = models * (train_s + infer_s) / 3600
    tiling_core_h = tiles / rates.tiling_tiles_per_s_per_worker / 3600
    return {
        "cohort": cohort,
        "slides": slides,
        "slide_TB": slide_bytes / 1e12,
        "tiles_M": tiles / 1e6,
        "tile_store_GB": tiles * rates.tile_bytes / 1e9,
        "models": models,
        "tiling_core_h": tiling_core_h,
        f"tiling_wall_h_{tiling_workers}_workers": tiling_core_h / tiling_workers,
        "device_h": device_hours,
        f"training_wall_h_{accelerators}_devices": device_hours / accelerators,
    }


def sizing_table(cfg: PathomchConfig, rates: Rates, **assumptions) -> pd.DataFrame:
    """One row per cohort and a total; ``assumptions`` override :data:`ASSUMPTIONS`."""
    a = ASSUMPTIONS | assumptions
    rows = []
    for name, c in cfg.cohorts.items():
        if c.manifest is None:
            raise ValueError(f"cohorts.{name}: sizing counts slides from its GDC manifest; none configured")
        slides, nbytes = manifest_totals(c.manifest)
        row = size_cohort(cfg, name, slides, nbytes, rates, **a)
        rows.append({"cohort": name, "patients": manifest_patients(c.manifest), **row})
    table = pd.DataFrame(rows)
    total = table.drop(columns="cohort").sum().to_dict()
    table = pd.concat([table, pd.DataFrame([{"cohort": "total", **total}])], ignore_index=True)
    return table.astype({"patients": int, "slides": int, "models": int})


def report(cfg: PathomchConfig, bench: str | Path, **kwargs) -> str:
    rates = Rates.from_bench(bench)
    table = sizing_table(cfg, rates, **kwargs)
    assumed = ASSUMPTIONS | kwargs
    lines = [
        table.to_markdown(index=False, floatfmt=".3g"),
        "",
        f"Measured ({bench}; {rates.machine}; training device: {rates.device}): tiler "
        f"{rates.tiling_tiles_per_s_per_worker:.0f} tiles/s per worker, {rates.tile_bytes / 1024:.0f} KiB per stored "
        f"512 px tile, Inception v3 512 px training {rates.train_tiles_per_s:.3g} tiles/s, inference "
        f"{rates.infer_tiles_per_s:.3g} tiles/s.",
        f"Assumed: {assumed['tiles_per_slide']} tissue tiles per slide, {assumed['epochs']} epochs per model; "
        f"{assumed['tiling_workers']} tiling workers, {assumed['accelerators']} training devices in parallel.",
    ]
    return "\n".join(lines)
