"""The demo cohorts: real TCGA tissue, planted trait morphology, real file formats.

Two cohorts (breast-like ``brca`` and lung-like ``luad``).  Each slide is laid out from the
shipped TCGA-BRCA tiles (``data/tcga_tiles``, one source slide per demo slide so the stain is
consistent) on a tile grid at 20x, as a tissue blob on white background with ragged edges, and
written as a pyramidal tiled JPEG TIFF that OpenSlide opens: most as Aperio SVS at 20x
(AppMag and MPP), some at 40x with objective power only, some as generic TIFFs with mpp only.

Planted signal: per trait a spatial region of the tissue (a smooth random field, thresholded
to the patient's share) where a visible change is applied to the tissue pixels:

- ``dark_nuclei``: hematoxylin-dense pixels darkened (hyperchromasia),
- ``blue_tint``: tissue shifted towards blue,
- ``pale_eosin``: eosin-rich stroma paler and less saturated,
- ``fine_texture``: a granular chromatin texture at the scale of nuclei (alternate 8 px cells of the
  hematoxylin-dense pixels darkened, 4 um at 20x): weaker than the others and mostly lost
  when a tile is shrunk to a small model input (the harder family, ``HARDER_COHORT``),
- ``none``: a negative control with no change.

A patient's expression follows the planted share of positive tissue plus noise; survival
follows the planted heterogeneity (HTI) of the cohort's trait pair.  Ground truth is written
beside the data (per tile and trait: planted on/off; per slide: planted shares and HTI).
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .heterogeneity import hti_from_calls
from .slides import patient_id

REPO_TILES = Path(__file__).resolve().parent.parent / "data" / "tcga_tiles"
#: where else the source tiles may be (an installed package has no ``data/`` beside it)
TILES_ENV = "PATHOMCH_DEMO_TILES"


def demo_tiles_dir() -> Path:
    """The TCGA tiles the demo slides are made of: ``$PATHOMCH_DEMO_TILES``, else ``data/tcga_tiles`` of
    the source checkout this package runs from."""
    return Path(os.environ.get(TILES_ENV) or REPO_TILES)


SOURCE_PX = 512  # shipped tiles: 512 px at 20x

#: real Entrez ids of the genes used (PanCanAtlas ``SYMBOL|Entrez``)
ENTREZ = {
    "MKI67": 4288,
    "FOXA1": 3169,
    "MYC": 4609,
    "ESR1": 2099,
    "CD24": 100133941,
    "FOXC1": 2296,
    "ERBB2": 2064,
    "EGFR": 1956,
    "KRAS": 3845,
    "CD274": 29126,
    "GAPDH": 2597,
    "ACTB": 60,
    "TP53": 7157,
    "PTEN": 5728,
    "CDH1": 999,
    "VIM": 7431,
    "KRT5": 3852,
    "PGR": 5241,
}
EXTRA_MIRNAS = ["hsa-let-7a-5p", "hsa-miR-21-5p", "hsa-miR-29a-3p", "hsa-miR-155-5p", "hsa-miR-200c-3p"]


@dataclass(frozen=True)
class DemoCohortSpec:
    name: str
    tss: tuple[str, ...]  # TCGA tissue source site codes used in barcodes
    traits: dict[str, str]  # trait -> planted effect
    survival_pair: tuple[str, str]
    n_patients: int = 120
    second_slide_share: float = 0.12
    gdc_layout: bool = False  # slides in <uuid>/<file>, as gdc-client writes them
    #: slides `grid_scale` times as many tiles across, with regions as many tiles wide (1: the demo's 5-6 x 6-7
    #: grids, 15-25 tissue tiles; 2: 10-12 x 12-14, 60-100).  Real slides have hundreds to thousands of tiles.
    grid_scale: int = 1

    def __post_init__(self):
        if self.grid_scale < 1:
            raise ValueError(f"grid_scale must be a whole number >= 1, got {self.grid_scale!r}")


DEFAULT_COHORTS = (
    DemoCohortSpec(
        "brca",
        ("A1", "A2", "AR", "BH", "E2"),
        {"MKI67": "dark_nuclei", "miR-17-5p": "blue_tint", "ESR1": "none"},
        ("MKI67", "miR-17-5p"),
        n_patients=200,
    ),
    DemoCohortSpec(
        "luad",
        ("05", "38", "44", "49", "55"),
        {"miR-17-5p": "dark_nuclei", "KRAS": "pale_eosin", "EGFR": "none"},
        ("miR-17-5p", "KRAS"),
        n_patients=160,
        gdc_layout=True,
    ),
)

#: the harder planted family (issue 19): a fine nuclear texture beside a colour trait and a control.
#: Not part of ``make demo`` (time); built by ``test_harder_family`` and ``bench/resolution.py`` (docs/hti-evidence.md).
HARDER_COHORT = DemoCohortSpec(
    "hard",
    ("A7", "AC", "B6", "D8", "E9"),
    {"FOXC1": "fine_texture", "miR-17-5p": "blue_tint", "EGFR": "none"},
    ("FOXC1", "miR-17-5p"),
    n_patients=160,
)

#: fine_texture: cell size of the granular pattern in source pixels (20x) and the darkening of its dark cells
TEXTURE_CELL_PX = 8
TEXTURE_DARKEN = 0.65


#: nuclear_atypia: nuclei (tissue darker than NUCLEUS_LUM) grown by NUCLEUS_GROW_PX source pixels (1 um at 20x) and
#: darkened (hyperchromatic, enlarged nuclei); stroma_texture: diagonal stripes of STRIPE_PERIOD_PX (3 um at 20x)
#: darkening half of the lighter, eosin-rich tissue (a fine striated stroma)
NUCLEUS_LUM = 150
NUCLEUS_GROW_PX = 2
NUCLEUS_DARKEN = 0.72
STRIPE_PERIOD_PX = 6
STRIPE_DARKEN = 0.86


# --------------------------------------------------------------------------- planted effects
def _tissue_mask(rgb: np.ndarray) -> np.ndarray:
    return ~np.all(rgb > 220, axis=-1)


def apply_effect(rgb: np.ndarray, effect: str) -> np.ndarray:
    """Apply a planted morphology change to the tissue pixels of a uint8 RGB tile.

    Whole-array float32 arithmetic (a factor of 1 or an added 0 where the change does not apply):
    the same values as changing the selected pixels alone, without gathering and scattering them.
    """
    if effect == "none":
        return rgb
    one, zero = np.float32(1), np.float32(0)
    img = rgb.astype(np.float32)
    tissue = ~((rgb[..., 0] > 220) & (rgb[..., 1] > 220) & (rgb[..., 2] > 220))  # _tissue_mask, per channel
    lum = (img[..., 0] + img[..., 1] + img[..., 2]) / np.float32(3)  # img.mean(axis=-1), same order
    if effect == "dark_nuclei":
        img *= np.where(tissue & (lum < 175), np.float32(0.45), one)[..., None]
    elif effect == "blue_tint":
        img *= np.where(tissue[..., None], np.array([0.72, 0.88, 1.0], np.float32), one)
        img[..., 2] += np.where(tissue, np.float32(18), zero)
    elif effect == "pale_eosin":
        sel = tissue & (lum >= 120)
        grey = lum[..., None]
        faded = (0.2 * img + 0.8 * grey) * np.array([1.04, 0.97, 0.82], np.float32)
        img = np.where(sel[..., None], faded, img)
    elif effect == "fine_texture":
        yy, xx = np.indices(rgb.shape[:2])
        checker = ((yy // TEXTURE_CELL_PX + xx // TEXTURE_CELL_PX) % 2).astype(bool)
        img *= np.where(tissue & (lum < 175) & checker, np.float32(TEXTURE_DARKEN), one)[..., None]
    elif effect == "nuclear_atypia":
        from scipy.ndimage import binary_dilation

        nuclei = binary_dilation(tissue & (lum < NUCLEUS_LUM), iterations=NUCLEUS_GROW_PX)
        img *= np.where(nuclei, np.float32(NUCLEUS_DARKEN), one)[..., None]
    elif effect == "stroma_texture":
        yy, xx = np.indices(rgb.shape[:2])
        stripes = ((yy + xx) % STRIPE_PERIOD_PX) < STRIPE_PERIOD_PX // 2
        img *= np.where(tissue & (lum >= NUCLEUS_LUM) & stripes, np.float32(STRIPE_DARKEN), one)[..., None]
    else:
        raise ValueError(
            f"unknown planted effect {effect!r}; expected dark_nuclei, blue_tint, pale_eosin, fine_texture, "
            "nuclear_atypia, stroma_texture or none"
        )
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- layout helpers
def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float = 1.6) -> np.ndarray:
    """A smooth random field on the grid (Gaussian-blurred noise)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.standard_normal(shape), sigma=scale, mode="reflect")


def _tissue_blob(rng: np.random.Generator, rows: int, cols: int, scale: int = 1) -> np.ndarray:
    """A connected-looking tissue region covering about 60% of the grid."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    cy, cx = (rows - 1) / 2 + rng.uniform(-0.5, 0.5) * scale, (cols - 1) / 2 + rng.uniform(-0.5, 0.5) * scale
    r = ((yy - cy) / (rows / 2)) ** 2 + ((xx - cx) / (cols / 2)) ** 2
    f = -r + 0.35 * _smooth_field(rng, (rows, cols), 1.0 * scale)
    return f > np.quantile(f, 0.4)


def _on_map(field_: np.ndarray, tissue: np.ndarray, share: float) -> np.ndarray:
    """Tissue positions where the trait is on: the top ``share`` of the field."""
    vals = field_[tissue]
    k = int(round(share * vals.size))
    on = np.zeros_like(tissue)
    if k > 0:
        thr = np.sort(vals)[::-1][k - 1]
        on = tissue & (field_ >= thr)
    return on


def _random_id(rng: np.random.Generator, n: int = 4) -> str:
    alphabet = np.array(list(string.ascii_uppercase + string.digits))
    return "".join(rng.choice(alphabet, n))


def load_source_tiles(tiles_dir: str | Path | None = None) -> dict[str, list[np.ndarray]]:
    """Shipped tiles per source slide, decoded (uint8 512x512x3); ``tiles_dir`` default :func:`demo_tiles_dir`."""
    from PIL import Image

    tiles_dir = Path(tiles_dir) if tiles_dir is not None else demo_tiles_dir()
    if not tiles_dir.is_dir():
        raise FileNotFoundError(
            f"{tiles_dir}: the demo's source tiles are not here. They ship in a source checkout's data/tcga_tiles "
            f"(git clone the project); point {TILES_ENV} at that folder to build the demo from an installed package"
        )
    out = {}
    for d in sorted(tiles_dir.iterdir()):
        if d.is_dir():
            out[d.name] = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(d.glob("*.jpeg"))]
    if not out:
        raise FileNotFoundError(f"{tiles_dir}: no tile folders found (expected <slide>/<col>_<row>.jpeg)")
    return out


# --------------------------------------------------------------------------- slide writing
@dataclass
class SlidePlan:
    cohort: str
    slide_id: str
    file: str  # relative to the cohort's slide folder
    source: str
    rows: int
    cols: int
    style: str  # aperio20 | aperio40_power | generic_mpp
    seed: int
    tissue: list = field(default_factory=list)  # rows x cols bool
    edge_white: list = field(default_factory=list)  # rows x cols float, share of the tile blanked
    on: dict = field(default_factory=dict)  # trait -> rows x cols bool
    effects: dict = field(default_factory=dict)  # trait -> effect


_VARIANTS: dict = {}


def _variant(sources, source: str, index: int, effects: tuple[str, ...], stain: tuple | None = None) -> np.ndarray:
    """A source tile with planted effects applied, then its site's stain (HED scales), cached (both pixel-wise)."""
    key = (source, index, effects, stain)
    if key not in _VARIANTS:
        t = sources[source][index]
        for effect in effects:
            t = apply_effect(t, effect)
        if stain is not None:
            from .augment import restain

            t = restain(t, stain)
        _VARIANTS[key] = t
    return _VARIANTS[key]


def compose_slide(
    plan: SlidePlan, sources: dict[str, list[np.ndarray]], scale: int = 1, stain: tuple | None = None
) -> np.ndarray:
    """The level-0 RGB image of a planned slide (``scale`` = 2 for a 40x base; ``stain``: HED scales of its site)."""
    from PIL import Image

    rng = np.random.default_rng(plan.seed)
    px = SOURCE_PX * scale
    canvas = np.full((plan.rows * px, plan.cols * px, 3), 255, np.uint8)
    n_tiles = len(sources[plan.source])
    tissue = np.asarray(plan.tissue, bool)
    white = np.asarray(plan.edge_white, float)
    on = {t: np.asarray(v, bool) for t, v in plan.on.items()}
    for r in range(plan.rows):
        for c in range(plan.cols):
            if not tissue[r, c]:
                continue
            effects = tuple(e for t, e in plan.effects.items() if on[t][r, c])
            t = _variant(sources, plan.source, int(rng.integers(n_tiles)), effects, stain)
            t = np.rot90(t, int(rng.integers(4)))
            if rng.random() < 0.5:
                t = t[:, ::-1]
            t = np.ascontiguousarray(t)
            if white[r, c] > 0:  # ragged tissue edge: blank a band of the tile (a copy: cache stays)
                t = t.copy()
                w = int(round(white[r, c] * SOURCE_PX))
                side = rng.integers(4)
                if side == 0:
                    t[:w] = 255
                elif side == 1:
                    t[-w:] = 255
                elif side == 2:
                    t[:, :w] = 255
                else:
                    t[:, -w:] = 255
            if scale != 1:
                t = np.asarray(Image.fromarray(t).resize((px, px), Image.Resampling.BICUBIC))
            canvas[r * px : (r + 1) * px, c * px : (c + 1) * px] = t
    return canvas


def _downsample(img: np.ndarray, factor: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).reduce(factor))


def write_pyramid(path: str | Path, base: np.ndarray, style: str, quality: int = 80) -> None:
    """Write a tiled JPEG pyramid (levels /4) that OpenSlide opens with every level (SPEC 6)."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    levels = [base]
    while min(levels[-1].shape[:2]) >= 1024:
        levels.append(_downsample(levels[-1], 4))
    h, w = base.shape[:2]
    mag, mpp = (40, 0.25) if style == "aperio40_power" else (20, 0.5)
    tmp = path.with_name(f".{path.name}.tmp")
    with tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for i, lev in enumerate(levels):
            kw: dict[str, Any] = dict(
                tile=(256, 256),
                compression="jpeg",
                compressionargs={"level": quality},
                photometric="rgb",
                metadata=None,
            )
            if i == 0 and style.startswith("aperio"):
                desc = f"Aperio Image Library v12.0.15\r\n{w}x{h} (256x256) JPEG/RGB Q={quality}|AppMag = {mag}"
                if style == "aperio20":
                    desc += f"|MPP = {mpp:.4f}"
                kw["description"] = desc
            if style == "generic_mpp":
                # mpp only, from TIFF resolution in px/cm (0.5 um/px = 20000 px/cm at level 0)
                res = 1e4 / (mpp * (4**i))
                kw.update(resolution=(res, res), resolutionunit="CENTIMETER")
            tif.write(lev, subfiletype=0 if i == 0 else 1, **kw)
    tmp.replace(path)


def _build_slide(args) -> str:
    plan_dict, slides_dir, tiles_dir = args
    plan = SlidePlan(**plan_dict)
    sources = _SOURCES_CACHE.get(tiles_dir) or _SOURCES_CACHE.setdefault(tiles_dir, load_source_tiles(tiles_dir))
    scale = 2 if plan.style == "aperio40_power" else 1
    base = compose_slide(plan, sources, scale)
    write_pyramid(Path(slides_dir) / plan.file, base, plan.style)
    return plan.slide_id


_SOURCES_CACHE: dict = {}


# --------------------------------------------------------------------------- cohort
def draw_patients(rng: np.random.Generator, tss, n_patients: int) -> tuple[list[str], list[str], list[str]]:
    """Patient barcodes at sites ``tss``: all of them (in drawn order), the ``n_patients`` with slides and the ~15%
    more that have expression but no slide (both sorted)."""
    ids: set[str] = set()
    while len(ids) < int(n_patients * 1.15):
        ids.add(f"TCGA-{rng.choice(list(tss))}-{_random_id(rng)}")
    patients = sorted(ids)
    rng.shuffle(patients)
    return patients, sorted(patients[:n_patients]), sorted(patients[n_patients:])


def plan_cohort(spec: DemoCohortSpec, seed: int, sources: list[str]):
    """Patients, slides, planted maps and molecular values of one demo cohort (no I/O)."""
    rng = np.random.default_rng([seed, sum(map(ord, spec.name))])
    patients, with_slides, without = draw_patients(rng, spec.tss, spec.n_patients)
    planted = [t for t, e in spec.traits.items() if e != "none"]
    shares: dict[str, dict[str, float]] = {t: {} for t in spec.traits}
    mixing = {}
    plans: list[SlidePlan] = []
    for pid in with_slides:
        for t in spec.traits:
            shares[t][pid] = float(rng.uniform(0.0, 1.0))
        mixing[pid] = float(rng.uniform(0.0, 1.0))
        n_slides = 2 if rng.random() < spec.second_slide_share else 1
        for dx in range(1, n_slides + 1):
            plans.append(_plan_slide(spec, rng, pid, f"DX{dx}", sources, shares, mixing[pid], planted))
        if rng.random() < 0.03:  # a frozen-section tissue slide: not diagnostic, must be skipped
            plans.append(_plan_slide(spec, rng, pid, "TS1", sources, shares, mixing[pid], planted, sample="01A-01"))
    return patients, with_slides, without, shares, mixing, plans


def _plan_slide(spec, rng, pid, kind, sources, shares, mix, planted, sample="01Z-00") -> SlidePlan:
    g = spec.grid_scale
    rows, cols = int(rng.integers(5, 7)) * g, int(rng.integers(6, 8)) * g
    tissue = _tissue_blob(rng, rows, cols, g)
    # ragged edges: some border tissue tiles are partly blank, a few mostly blank
    edge_white = np.zeros((rows, cols))
    border = tissue & ~_eroded(tissue)
    for r, c in zip(*np.nonzero(border)):
        u = rng.random()
        edge_white[r, c] = rng.uniform(0.7, 0.85) if u < 0.2 else (rng.uniform(0.1, 0.3) if u < 0.5 else 0.0)
    kept = tissue & (edge_white < 0.5)
    base_field = _smooth_field(rng, (rows, cols), 1.6 * g)
    on = {}
    for i, t in enumerate(planted):
        f = base_field if i == 0 else (1 - mix) * base_field + mix * _smooth_field(rng, (rows, cols), 1.6 * g)
        on[t] = _on_map(f, kept, shares[t][pid]).tolist()
    u = rng.random()
    style = "aperio20" if u < 0.75 else ("aperio40_power" if u < 0.87 else "generic_mpp")
    suffix = uuid.UUID(int=int(rng.integers(2**63)) << 64 | int(rng.integers(2**63))).hex[:8].upper()
    sid = f"{pid}-{sample}-{kind}.{suffix}"
    ext = ".tif" if style == "generic_mpp" else ".svs"
    file = f"{sid}{ext}"
    if spec.gdc_layout:
        file = f"{uuid.UUID(int=int(rng.integers(2**63)))}/{file}"
    return SlidePlan(
        spec.name,
        sid,
        file,
        str(rng.choice(sources)),
        rows,
        cols,
        style,
        int(rng.integers(2**31)),
        tissue.tolist(),
        edge_white.tolist(),
        on,
        {t: spec.traits[t] for t in planted},
    )


def _eroded(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, border_value=0)


def _aliquot(rng, pid: str, sample: str = "01A") -> str:
    return f"{pid}-{sample}-{rng.integers(11, 99):02d}R-A{_random_id(rng, 3)}-07"


def expression_tables(spec: DemoCohortSpec, seed: int, patients, with_slides, shares):
    """mRNA (PanCanAtlas TSV layout) and miRNA (CSV layout) frames with barcodes as columns."""
    rng = np.random.default_rng([seed, 7, sum(map(ord, spec.name))])
    columns, col_patient = [], []
    for pid in patients:
        columns.append(_aliquot(rng, pid))
        col_patient.append((pid, "01"))
        if rng.random() < 0.1:  # a second primary aliquot: averaged
            columns.append(_aliquot(rng, pid, "01B"))
            col_patient.append((pid, "01"))
        if rng.random() < 0.1:  # solid tissue normal: must be ignored
            columns.append(_aliquot(rng, pid, "11A"))
            col_patient.append((pid, "11"))

    def values_for(trait: str) -> list:
        out = []
        for pid, stype in col_patient:
            if stype != "01":
                out.append(float(rng.uniform(1e4, 1e5)))  # wildly off: would show if not ignored
                continue
            s = shares.get(trait, {}).get(pid, rng.uniform(0, 1))
            log2 = 6 + 5 * s + rng.normal(0, 0.35)
            out.append(float(2**log2))
        return out

    traits = list(spec.traits)
    genes = [t for t in traits if not t.startswith(("miR-", "let-"))]
    mirs = [t for t in traits if t.startswith(("miR-", "let-"))]
    mrna_rows = {f"{g}|{ENTREZ[g]}": values_for(g) for g in genes}
    for g, eid in ENTREZ.items():
        if g not in genes:
            mrna_rows[f"{g}|{eid}"] = [float(2 ** rng.normal(8, 2)) for _ in columns]
    mrna_rows["?|100130426"] = [float(rng.uniform(0, 2)) for _ in columns]
    mrna = pd.DataFrame(mrna_rows, index=columns).T
    mrna = mrna.sample(frac=1.0, random_state=seed)  # genes in no particular order
    mrna = mrna.mask(rng.random(mrna.shape) < 0.01)  # sprinkled NA
    mirna_rows = {f"hsa-{m}": values_for(m) for m in mirs}
    for m in EXTRA_MIRNAS:
        if m not in mirna_rows:
            mirna_rows[m] = [float(2 ** rng.normal(10, 2)) for _ in columns]
    mirna = pd.DataFrame(mirna_rows, index=columns).T
    return mrna, mirna


def write_mrna(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    out.index.name = "gene_id"
    out.to_csv(path, sep="\t", na_rep="NA", float_format="%.4f")


def write_mirna(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    out.insert(0, "Correction", "Corrected")
    out.index.name = "Genes"
    out.to_csv(path, sep=",", na_rep="NA", float_format="%.4f")


def clinical_table(spec: DemoCohortSpec, seed: int, with_slides, planted_hti: dict[str, float], shares) -> pd.DataFrame:
    """cBioPortal patient table; hazard rises steeply with the planted HTI of the trait pair."""
    rng = np.random.default_rng([seed, 11, sum(map(ord, spec.name))])
    rows = []
    for pid in with_slides:
        h = planted_hti.get(pid, 0.0)
        hazard = 0.01 * np.exp(4.0 * h)
        t_event = rng.exponential(1 / hazard)
        t_cens = rng.uniform(24, 160)
        event = int(t_event <= t_cens)
        er = "Positive" if shares.get("ESR1", {}).get(pid, rng.uniform()) > 0.3 else "Negative"
        subtype = rng.choice(["LumA", "LumB", "Her2", "Basal", "Normal"], p=[0.4, 0.2, 0.12, 0.18, 0.1])
        rows.append(
            {
                "PATIENT_ID": pid,
                "OS_STATUS": "1:DECEASED" if event else "0:LIVING",
                "OS_MONTHS": round(min(t_event, t_cens), 2),
                "AGE": int(rng.integers(30, 85)),
                "ER_STATUS_BY_IHC": er if spec.name == "brca" else "[Not Available]",
                "SUBTYPE": f"BRCA_{subtype}" if spec.name == "brca" else "[Not Available]",
            }
        )
    return pd.DataFrame(rows)


def cohort_entry(name: str, traits, pair) -> dict:
    """A generated cohort's entry in ``pathomch.yaml``: its files (as the writers below name them), traits and
    survival pair, relative to the config's folder."""
    return {
        "slides_dir": f"{name}/slides",
        "mrna": f"{name}/EBPlusPlusAdjustPANCAN_IlluminaHiSeq_RNASeqV2.geneExp.tsv",
        "mirna": f"{name}/pancanMiRs_EBadjOnProtocolPlatformWithoutRepsWithUnCorrectMiRs_08_04_16.csv",
        "clinical": f"{name}/data_clinical_patient.txt",
        "traits": list(traits),
        "survival_pairs": [list(pair)],
    }


def write_clinical(df: pd.DataFrame, path: Path) -> None:
    """cBioPortal ``data_clinical_patient.txt``: four ``#`` lines, then the header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = {
        "PATIENT_ID": "Patient Identifier",
        "OS_STATUS": "Overall Survival Status",
        "OS_MONTHS": "Overall Survival (Months)",
        "AGE": "Diagnosis Age",
        "ER_STATUS_BY_IHC": "ER Status By IHC",
        "SUBTYPE": "Subtype",
    }
    types = {"OS_MONTHS": "NUMBER", "AGE": "NUMBER"}
    cols = list(df.columns)
    lines = [
        "#" + "\t".join(names.get(c, c) for c in cols),
        "#" + "\t".join(names.get(c, c) for c in cols),
        "#" + "\t".join(types.get(c, "STRING") for c in cols),
        "#" + "\t".join("1" for _ in cols),
        "\t".join(cols),
    ]
    lines += ["\t".join(str(v) for v in rec) for rec in df.itertuples(index=False)]
    path.write_text("\n".join(lines) + "\n")


def write_manifest(plans: list[SlidePlan], slides_dir: Path, path: Path) -> None:
    """A GDC manifest (``id filename md5 size state``) of the written slides."""
    import hashlib

    rows = []
    for p in plans:
        f = slides_dir / p.file
        rows.append(
            (
                p.file.split("/")[0] if "/" in p.file else str(uuid.uuid5(uuid.NAMESPACE_URL, p.slide_id)),
                Path(p.file).name,
                hashlib.md5(f.read_bytes()).hexdigest(),
                f.stat().st_size,
                "released",
            )
        )
    pd.DataFrame(rows, columns=["id", "filename", "md5", "size", "state"]).to_csv(path, sep="\t", index=False)


def build_demo(
    out_dir: str | Path,
    seed: int = 2020,
    cohorts=DEFAULT_COHORTS,
    workers: int = 2,
    tiles_dir: str | Path | None = None,
    progress=print,
    write_config: bool = True,
    overrides: dict | None = None,
) -> Path:
    """Build every demo cohort under ``out_dir``.

    With ``write_config``, also writes ``out_dir/pathomch.yaml``: the shipped demo settings
    with this folder's cohorts and an ``output`` folder beside them; returns its path.
    """
    from .config import DEMO_CONFIG

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: a file, not a folder; choose an empty folder")
    tiles_dir = Path(tiles_dir) if tiles_dir is not None else demo_tiles_dir()
    sources = sorted(load_source_tiles(tiles_dir))  # before anything is removed: a bad tiles folder changes nothing
    if (out_dir / "demo.json").exists():  # an earlier demo build: replace it whole
        import shutil

        # the stamp says "building" until the end: a build cut short is never taken as finished, and the
        # folder stays recognisably a demo build (rebuilt next time, not refused)
        (out_dir / "demo.json").write_text(json.dumps({"seed": None, "building": True}))
        for spec in cohorts:
            shutil.rmtree(out_dir / spec.name, ignore_errors=True)
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty and not a demo build (no demo.json); choose an empty folder")
    shipped = yaml.safe_load(DEMO_CONFIG.read_text())
    settings = {k: v for k, v in shipped.items() if k not in ("cohorts", "data_dir", "duckdb_path", "seed")}
    for section, values in (overrides or {}).items():
        settings[section] = {**settings.get(section, {}), **values} if isinstance(values, dict) else values
    config = {"data_dir": "output", "duckdb_path": "output/pathomch.duckdb", "seed": seed, "cohorts": {}, **settings}
    all_plans: list[tuple[SlidePlan, Path]] = []
    truth_tiles, truth_slides = [], []
    for spec in cohorts:
        cdir = out_dir / spec.name
        patients, with_slides, without, shares, mixing, plans = plan_cohort(spec, seed, sources)
        pair = spec.survival_pair
        planted_hti = {}
        for p in plans:
            on = np.stack([np.asarray(p.on[t], bool) for t in pair], axis=-1) if all(t in p.on for t in pair) else None
            kept = np.asarray(p.tissue, bool) & (np.asarray(p.edge_white) < 0.5)
            h = float(hti_from_calls(on[kept])) if on is not None else 0.0
            if "-DX1." in p.slide_id:
                planted_hti[patient_id(p.slide_id)] = h
            truth_slides.append(
                {
                    "cohort": spec.name,
                    "slide_id": p.slide_id,
                    "patient_id": patient_id(p.slide_id),
                    "traits": "+".join(pair),
                    "planted_hti": h,
                    "style": p.style,
                    "source_slide": p.source,
                    "n_tissue_positions": int(kept.sum()),
                    **{f"share_{t}": shares[t][patient_id(p.slide_id)] for t in spec.traits},
                }
            )
            for r, c in zip(*np.nonzero(kept)):
                for t in spec.traits:
                    truth_tiles.append(
                        (spec.name, p.slide_id, int(c), int(r), t, int(t in p.on and bool(p.on[t][r][c])))
                    )
        mrna, mirna = expression_tables(spec, seed, patients, with_slides, shares)
        write_mrna(mrna, cdir / "EBPlusPlusAdjustPANCAN_IlluminaHiSeq_RNASeqV2.geneExp.tsv")
        write_mirna(mirna, cdir / "pancanMiRs_EBadjOnProtocolPlatformWithoutRepsWithUnCorrectMiRs_08_04_16.csv")
        write_clinical(clinical_table(spec, seed, with_slides, planted_hti, shares), cdir / "data_clinical_patient.txt")
        config["cohorts"][spec.name] = cohort_entry(spec.name, spec.traits, pair)
        all_plans.extend((p, cdir / "slides") for p in plans)
    jobs = [(asdict(p), str(d), str(tiles_dir)) for p, d in all_plans]
    progress(f"writing {len(jobs)} demo slides to {out_dir} ...")
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for i, _ in enumerate(pool.map(_build_slide, jobs, chunksize=4), 1):
                if i % 50 == 0 or i == len(jobs):
                    progress(f"  {i}/{len(jobs)} slides")
    else:
        for job in jobs:
            _build_slide(job)
    for spec in cohorts:
        plans = [p for p, _ in all_plans if p.cohort == spec.name]
        write_manifest(plans, out_dir / spec.name / "slides", out_dir / spec.name / "gdc_manifest.txt")
    pd.DataFrame(truth_tiles, columns=["cohort", "slide_id", "col", "row", "trait", "planted_on"]).to_csv(
        out_dir / "ground_truth_tiles.csv", index=False
    )
    pd.DataFrame(truth_slides).to_csv(out_dir / "ground_truth_slides.csv", index=False)
    cfg_path = out_dir / "pathomch.yaml"
    if write_config:
        cfg_path.write_text(
            "# written by pathomch_assets.demo_cohort.build_demo\n" + yaml.safe_dump(config, sort_keys=False)
        )
    (out_dir / "demo.json").write_text(json.dumps({"seed": seed, "cohorts": [asdict(c) for c in cohorts]}, indent=1))
    return cfg_path


# --------------------------------------------------------------------------- the TCGA-like family (issue 28)
@dataclass(frozen=True)
class TcgaLikeSpec(DemoCohortSpec):
    """A cohort with TCGA's site structure and artefacts (issue 28 item 6, issue 29).

    Every tissue source site (``tss``) has its own source slides among the real tiles (disjoint between
    sites) and its own stain (per-site scales of the H, E and D concentrations, :func:`augment.restain`).
    Trait effects as in :class:`DemoCohortSpec`, plus ``site``: expression that follows the patient's site
    (a site mean plus noise) and is planted in no tissue.  ``pen_share`` of the slides carry a marker
    stroke (green, blue or black) over or next to the tissue, ``blur_share`` a blurred block of tissue;
    ``share_40x`` of the slides are 40x pyramids with 10x and 2.5x levels (no 20x level).
    """

    pen_share: float = 0.15
    blur_share: float = 0.15
    share_40x: float = 0.35
    share_generic: float = 0.1
    #: per-site stain: the H and E scales are drawn from [1 - stain_spread, 1 + stain_spread]
    stain_spread: float = 0.25
    #: standard deviation of the site-only trait's share around its site's mean
    site_noise: float = 0.08


#: the TCGA-like family: a nuclear change and a fine stroma texture (the survival pair), a site-only trait and a
#: negative control; five sites, a DX2 slide for a third of the patients
TCGA_LIKE_COHORT = TcgaLikeSpec(
    "tcga",
    ("A7", "AR", "BH", "D8", "E2"),
    {"MKI67": "nuclear_atypia", "FOXC1": "stroma_texture", "ESR1": "site", "EGFR": "none"},
    ("MKI67", "FOXC1"),
    n_patients=100,
    second_slide_share=1 / 3,
)

PEN_COLOURS = {"green": (40, 150, 70), "blue": (40, 70, 180), "black": (35, 35, 45)}
UNPLANTED = ("none", "site")


@dataclass
class TcgaSlidePlan(SlidePlan):
    site: str = ""
    stain: tuple = (1.0, 1.0, 1.0)  # H, E, D scales of the site
    pen: dict | None = None  # colour, points [(x, y)] at 20x level-0 pixels, width
    blur: list | None = None  # [row0, col0, row1, col1] (grid cells, end exclusive), sigma in 20x pixels


def site_sources(spec: DemoCohortSpec, sources: list[str], seed: int) -> dict[str, list[str]]:
    """Each site's own source slides: the sources shuffled by ``seed`` and cut into ``len(spec.tss)`` disjoint parts.

    Raises ``ValueError`` when there are fewer source slides than sites.
    """
    if len(sources) < len(spec.tss):
        raise ValueError(
            f"{len(sources)} source slides for {len(spec.tss)} sites: each site needs its own; use fewer sites "
            f"or more source tiles ({TILES_ENV})"
        )
    order = list(sorted(sources))
    np.random.default_rng([seed, 28]).shuffle(order)
    return {
        site: [str(x) for x in part] for site, part in zip(spec.tss, np.array_split(np.array(order), len(spec.tss)))
    }


def plan_tcga_like(spec: TcgaLikeSpec, seed: int, sources: list[str]):
    """Patients, slides (with site, stain, pen and blur), planted maps and shares of a TCGA-like cohort (no I/O)."""
    rng = np.random.default_rng([seed, 28, sum(map(ord, spec.name))])
    own = site_sources(spec, sources, seed)
    stains = {
        s: (
            float(rng.uniform(1 - spec.stain_spread, 1 + spec.stain_spread)),
            float(rng.uniform(1 - spec.stain_spread, 1 + spec.stain_spread)),
            float(rng.uniform(0.9, 1.1)),
        )
        for s in spec.tss
    }
    site_mean = dict(zip(spec.tss, rng.permutation(np.linspace(0.1, 0.9, len(spec.tss)))))
    patients, with_slides, without = draw_patients(rng, spec.tss, spec.n_patients)
    planted = [t for t, e in spec.traits.items() if e not in UNPLANTED]
    shares: dict[str, dict[str, float]] = {t: {} for t in spec.traits}
    for pid in patients:  # the site-only traits: every patient, with a slide or not
        for t, e in spec.traits.items():
            if e == "site":
                mean = site_mean[pid.split("-")[1]]
                shares[t][pid] = float(np.clip(mean + rng.normal(0, spec.site_noise), 0, 1))
    mixing, plans = {}, []
    for pid in with_slides:
        site = pid.split("-")[1]
        for t in planted + [t for t, e in spec.traits.items() if e == "none"]:
            shares[t][pid] = float(rng.uniform(0.0, 1.0))
        mixing[pid] = float(rng.uniform(0.0, 1.0))
        n_slides = 2 if rng.random() < spec.second_slide_share else 1
        for dx in range(1, n_slides + 1):
            base = _plan_slide(spec, rng, pid, f"DX{dx}", own[site], shares, mixing[pid], planted)
            u = rng.random()
            style = (
                "aperio40_power"
                if u < spec.share_40x
                else ("generic_mpp" if u < spec.share_40x + spec.share_generic else "aperio20")
            )
            file = base.file.replace(".tif", ".svs") if style != "generic_mpp" else base.file.replace(".svs", ".tif")
            plan = TcgaSlidePlan(**{**asdict(base), "style": style, "file": file}, site=site, stain=stains[site])
            kept = np.asarray(plan.tissue, bool) & (np.asarray(plan.edge_white) < 0.5)
            if rng.random() < spec.pen_share:
                plan.pen = _pen_stroke(rng, kept)
            if rng.random() < spec.blur_share:
                plan.blur = _blur_block(rng, kept)
            plans.append(plan)
    return patients, with_slides, without, shares, mixing, plans


def _pen_stroke(rng: np.random.Generator, kept: np.ndarray) -> dict:
    """A marker stroke: a slightly bent line through the tissue, or beside it on the background."""
    rows, cols = kept.shape
    colour = str(rng.choice(list(PEN_COLOURS)))
    over = bool(rng.random() < 0.5)
    if over:  # across the tissue, through a tissue cell
        r, c = np.argwhere(kept)[int(rng.integers(kept.sum()))]
        cy, cx = (r + 0.5) * SOURCE_PX, (c + 0.5) * SOURCE_PX
    else:  # beside it: in the background margin, along the nearest edge
        side = int(rng.integers(4))
        cy = rows * SOURCE_PX * (0.06 if side == 0 else 0.94 if side == 1 else rng.uniform(0.3, 0.7))
        cx = cols * SOURCE_PX * (0.06 if side == 2 else 0.94 if side == 3 else rng.uniform(0.3, 0.7))
    angle = (
        rng.uniform(0, np.pi)
        if over
        else (0.0 if cy < rows * SOURCE_PX * 0.1 or cy > rows * SOURCE_PX * 0.9 else np.pi / 2)
    )
    half = rng.uniform(0.8, 1.6) * SOURCE_PX
    bend = rng.uniform(-0.25, 0.25) * SOURCE_PX
    pts = []
    for s in np.linspace(-1, 1, 9):
        off = bend * (1 - s * s)
        x = cx + s * half * np.cos(angle) - off * np.sin(angle)
        y = cy + s * half * np.sin(angle) + off * np.cos(angle)
        pts.append((float(x), float(y)))
    return {"colour": colour, "over_tissue": over, "points": pts, "width": float(rng.uniform(40, 90))}


def _blur_block(rng: np.random.Generator, kept: np.ndarray) -> list:
    """A block of 2x2 grid cells holding tissue, blurred (a region out of focus)."""
    rows, cols = kept.shape
    r, c = np.argwhere(kept[: rows - 1, : cols - 1])[int(rng.integers(kept[: rows - 1, : cols - 1].sum()))]
    return [int(r), int(c), int(r) + 2, int(c) + 2, float(rng.uniform(3.0, 5.0))]


def pen_mask(plan: TcgaSlidePlan, scale: int = 1) -> np.ndarray:
    """Level-0 boolean mask of the slide's pen stroke (all False without one)."""
    from PIL import Image, ImageDraw

    h, w = plan.rows * SOURCE_PX * scale, plan.cols * SOURCE_PX * scale
    img = Image.new("L", (w, h), 0)
    if plan.pen:
        pts = [(x * scale, y * scale) for x, y in plan.pen["points"]]
        ImageDraw.Draw(img).line(pts, fill=255, width=int(round(plan.pen["width"] * scale)), joint="curve")
    return np.asarray(img) > 0


def add_artifacts(canvas: np.ndarray, plan: TcgaSlidePlan, scale: int = 1) -> np.ndarray:
    """The slide's blurred block (Gaussian, on the level-0 pixels) and pen stroke (ink multiplied over the pixels)."""
    from PIL import Image, ImageFilter

    if plan.blur:
        r0, c0, r1, c1, sigma = plan.blur
        px = SOURCE_PX * scale
        block = canvas[r0 * px : r1 * px, c0 * px : c1 * px]
        blurred = Image.fromarray(block).filter(ImageFilter.GaussianBlur(sigma * scale))
        canvas[r0 * px : r1 * px, c0 * px : c1 * px] = np.asarray(blurred)
    if plan.pen:
        mask = pen_mask(plan, scale)
        ink = np.asarray(PEN_COLOURS[plan.pen["colour"]], np.float32) / 255
        canvas[mask] = np.clip(canvas[mask].astype(np.float32) * ink * 1.05, 0, 255).astype(np.uint8)
    return canvas


def _build_tcga_slide(args) -> str:
    plan_dict, slides_dir, tiles_dir = args
    plan = TcgaSlidePlan(**{**plan_dict, "stain": tuple(plan_dict["stain"])})
    sources = _SOURCES_CACHE.get(tiles_dir) or _SOURCES_CACHE.setdefault(tiles_dir, load_source_tiles(tiles_dir))
    scale = 2 if plan.style == "aperio40_power" else 1
    base = add_artifacts(compose_slide(plan, sources, scale, plan.stain), plan, scale)
    write_pyramid(Path(slides_dir) / plan.file, base, plan.style)
    return plan.slide_id


def artifact_truth(plan: TcgaSlidePlan) -> list[tuple]:
    """Per grid cell (512 px at 20x) of a slide: planted tissue, share of the cell under pen ink, blurred or not."""
    ink = pen_mask(plan).reshape(plan.rows, SOURCE_PX, plan.cols, SOURCE_PX).mean(axis=(1, 3)) if plan.pen else None
    kept = np.asarray(plan.tissue, bool) & (np.asarray(plan.edge_white) < 0.5)
    r0, c0, r1, c1 = plan.blur[:4] if plan.blur else (0, 0, 0, 0)
    out = []
    for r in range(plan.rows):
        for c in range(plan.cols):
            blurred = r0 <= r < r1 and c0 <= c < c1
            pen = float(ink[r, c]) if ink is not None else 0.0
            out.append((plan.cohort, plan.slide_id, c, r, int(kept[r, c]), round(pen, 4), int(blurred and kept[r, c])))
    return out


def build_tcga_like(
    out_dir: str | Path,
    n_patients: int = 100,
    seed: int = 2020,
    spec: TcgaLikeSpec = TCGA_LIKE_COHORT,
    workers: int = 2,
    tiles_dir: str | Path | None = None,
    progress=print,
    overrides: dict | None = None,
) -> Path:
    """Build the TCGA-like family (:class:`TcgaLikeSpec`) under ``out_dir`` in the demo's formats; returns the path
    of its ``pathomch.yaml`` (the demo's settings, this cohort).

    Beside the slides and tables: ``ground_truth_slides.csv`` (planted shares and HTI, site, stain, pen colour,
    blurred cells), ``ground_truth_tiles.csv`` (per tissue cell and trait: planted on/off) and
    ``ground_truth_artifacts.csv`` (per grid cell of 512 px at 20x: tissue, share under pen ink, blurred).
    The same seed, spec and source tiles give the same bytes.

    Examples
    --------
    ``pathomch demo --family tcga_like --dir /tmp/tcga --patients 100 --no-materialize``
    """
    from .config import DEMO_CONFIG

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "demo.json").exists():
        raise FileExistsError(f"{out_dir}: not empty and not a demo build (no demo.json); choose an empty folder")
    tiles_dir = Path(tiles_dir) if tiles_dir is not None else demo_tiles_dir()
    sources = sorted(load_source_tiles(tiles_dir))
    spec = dataclasses.replace(spec, n_patients=n_patients)
    if (out_dir / spec.name).exists():
        import shutil

        shutil.rmtree(out_dir / spec.name)
    cdir = out_dir / spec.name
    patients, with_slides, without, shares, mixing, plans = plan_tcga_like(spec, seed, sources)
    pair = spec.survival_pair
    planted_hti, truth_slides, truth_tiles, artifacts = {}, [], [], []
    for p in plans:
        kept = np.asarray(p.tissue, bool) & (np.asarray(p.edge_white) < 0.5)
        on = np.stack([np.asarray(p.on[t], bool) for t in pair], axis=-1) if all(t in p.on for t in pair) else None
        h = float(hti_from_calls(on[kept])) if on is not None else 0.0
        pid = patient_id(p.slide_id)
        if "-DX1." in p.slide_id:
            planted_hti[pid] = h
        truth_slides.append(
            {
                "cohort": spec.name,
                "slide_id": p.slide_id,
                "patient_id": pid,
                "site": p.site,
                "traits": "+".join(pair),
                "planted_hti": h,
                "style": p.style,
                "source_slide": p.source,
                "stain_h": round(p.stain[0], 4),
                "stain_e": round(p.stain[1], 4),
                "pen": p.pen["colour"] if p.pen else "",
                "pen_over_tissue": bool(p.pen and p.pen["over_tissue"]),
                "blurred_cells": int(sum(a[-1] for a in artifact_truth(p))) if p.blur else 0,
                "n_tissue_positions": int(kept.sum()),
                **{f"share_{t}": shares[t][pid] for t in spec.traits},
            }
        )
        for r, c in zip(*np.nonzero(kept)):
            for t in spec.traits:
                truth_tiles.append((spec.name, p.slide_id, int(c), int(r), t, int(t in p.on and bool(p.on[t][r][c]))))
        artifacts.extend(artifact_truth(p))
    mrna, mirna = expression_tables(spec, seed, patients, with_slides, shares)
    write_mrna(mrna, cdir / "EBPlusPlusAdjustPANCAN_IlluminaHiSeq_RNASeqV2.geneExp.tsv")
    write_mirna(mirna, cdir / "pancanMiRs_EBadjOnProtocolPlatformWithoutRepsWithUnCorrectMiRs_08_04_16.csv")
    write_clinical(clinical_table(spec, seed, with_slides, planted_hti, shares), cdir / "data_clinical_patient.txt")
    jobs = [(asdict(p), str(cdir / "slides"), str(tiles_dir)) for p in plans]
    progress(f"writing {len(jobs)} TCGA-like slides to {out_dir} ...")
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(_build_tcga_slide, jobs, chunksize=4))
    else:
        for job in jobs:
            _build_tcga_slide(job)
    write_manifest(plans, cdir / "slides", cdir / "gdc_manifest.txt")
    pd.DataFrame(truth_tiles, columns=["cohort", "slide_id", "col", "row", "trait", "planted_on"]).to_csv(
        out_dir / "ground_truth_tiles.csv", index=False
    )
    pd.DataFrame(truth_slides).to_csv(out_dir / "ground_truth_slides.csv", index=False)
    pd.DataFrame(artifacts, columns=["cohort", "slide_id", "col", "row", "tissue", "pen", "blurred"]).to_csv(
        out_dir / "ground_truth_artifacts.csv", index=False
    )
    shipped = yaml.safe_load(DEMO_CONFIG.read_text())
    settings = {k: v for k, v in shipped.items() if k not in ("cohorts", "data_dir", "duckdb_path", "seed")}
    for section, values in (overrides or {}).items():
        settings[section] = {**settings.get(section, {}), **values} if isinstance(values, dict) else values
    config = {"data_dir": "output", "duckdb_path": "output/pathomch.duckdb", "seed": seed, **settings}
    config["cohorts"] = {spec.name: cohort_entry(spec.name, spec.traits, pair)}
    cfg_path = out_dir / "pathomch.yaml"
    cfg_path.write_text(
        "# written by pathomch_assets.demo_cohort.build_tcga_like\n" + yaml.safe_dump(config, sort_keys=False)
    )
    stamp = {"seed": seed, "family": "tcga_like", "cohorts": [asdict(spec)]}
    (out_dir / "demo.json").write_text(json.dumps(stamp, indent=1))
    return cfg_path
