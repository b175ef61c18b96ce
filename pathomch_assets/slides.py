"""Slides: discovery in a folder or GDC manifest, TCGA ids, magnification and pyramid level.

Nothing here imports Dagster.  OpenSlide errors are turned into :class:`SlideError`, which
names the file, so a caller can record the slide as failed and go on with the others.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

#: File endings OpenSlide opens (OpenSlide 4).  DICOM slides are one folder of ``.dcm`` files.
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs",
                  ".svslide", ".bif", ".czi", ".dcm"}

#: mpp outside this range is not a microscope slide (e.g. a TIFF's 72 dpi default).
PLAUSIBLE_MPP = (0.05, 20.0)

_TCGA = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}")
_DX = re.compile(r"-DX(\d+)", re.IGNORECASE)

GDC_MANIFEST_COLUMNS = ["id", "filename", "md5", "size", "state"]


class SlideError(RuntimeError):
    """A slide that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ManifestError(ValueError):
    """A GDC manifest that does not have the expected layout."""


@dataclass(frozen=True)
class SlideRef:
    """A slide found on disk (or listed in a manifest but missing)."""

    cohort: str
    slide_id: str
    path: Path
    missing: bool = False

    @property
    def patient_id(self) -> str:
        return patient_id(self.slide_id)

    @property
    def partition_key(self) -> str:
        return f"{self.cohort}/{self.slide_id}"


def slide_id_from_path(path: str | Path) -> str:
    """SPEC 2: file name without extension (a DICOM slide: its folder's name)."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return path.parent.name
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def patient_id(slide_id: str) -> str:
    """SPEC 2: the first 12 characters, ``TCGA-XX-XXXX``."""
    return slide_id[:12]


def is_diagnostic(slide_id: str) -> bool:
    """TCGA diagnostic slides carry ``-DX<n>``; non-TCGA names are taken as diagnostic."""
    return bool(_DX.search(slide_id)) or not _TCGA.match(slide_id)


def dx_number(slide_id: str) -> int:
    m = _DX.search(slide_id)
    return int(m.group(1)) if m else 10**6


def read_gdc_manifest(path: str | Path) -> pd.DataFrame:
    """Read a GDC manifest (tab separated: ``id filename md5 size state``)."""
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:5]] != GDC_MANIFEST_COLUMNS:
            raise ManifestError(f"{path}: line 1: expected GDC manifest header "
                                f"{' '.join(GDC_MANIFEST_COLUMNS)!r}, found {' '.join(header or [])!r}")
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 5:
                raise ManifestError(f"{path}: line {lineno}: expected 5 tab-separated fields, found {len(row)}")
            rows.append(row[:5])
    return pd.DataFrame(rows, columns=GDC_MANIFEST_COLUMNS)


def discover_slides(cohort: str, slides_dir: str | Path, manifest: str | Path | None = None) -> list[SlideRef]:
    """List the slides of a cohort, sorted by slide id.

    Without a manifest: every file under ``slides_dir`` with a slide ending (recursively,
    so ``gdc-client``'s ``<uuid>/<file>`` layout works); a DICOM folder counts once.
    With a manifest: its slides only, looked up as ``<dir>/<id>/<filename>`` or
    ``<dir>/<filename>``; one that is not on disk is returned with ``missing=True``.
    """
    slides_dir = Path(slides_dir)
    if manifest is not None:
        refs = []
        for rec in read_gdc_manifest(manifest).itertuples():
            candidates = [slides_dir / rec.id / rec.filename, slides_dir / rec.filename]
            found = next((c for c in candidates if c.exists()), None)
            refs.append(SlideRef(cohort, slide_id_from_path(rec.filename), found or candidates[0], found is None))
        return sorted(refs, key=lambda r: r.slide_id)
    refs: dict[str, SlideRef] = {}
    for p in sorted(slides_dir.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in SLIDE_SUFFIXES or p.name.startswith("."):
            continue
        sid = slide_id_from_path(p)
        refs.setdefault(sid, SlideRef(cohort, sid, p))
    return sorted(refs.values(), key=lambda r: r.slide_id)


def primary_slides(slides: pd.DataFrame) -> pd.DataFrame:
    """One usable slide per patient: the DX1 slide, else the lowest DX number (SPEC 2).

    ``slides`` has ``cohort, slide_id, patient_id, status``; only ``status == 'ok'`` counts.
    """
    ok = slides[slides["status"] == "ok"].copy()
    if ok.empty:
        return ok
    ok["_dx"] = ok["slide_id"].map(dx_number)
    ok = ok.sort_values(["cohort", "patient_id", "_dx", "slide_id"])
    return ok.drop_duplicates(["cohort", "patient_id"]).drop(columns="_dx").reset_index(drop=True)


# ---------------------------------------------------------------- magnification


@dataclass(frozen=True)
class SlideInfo:
    """What tiling needs to know about an opened slide."""

    width: int
    height: int
    level_downsamples: tuple[float, ...]
    level_dimensions: tuple[tuple[int, int], ...]
    base_magnification: float
    magnification_source: str  # 'mpp', 'objective_power' or 'config_default'
    mpp: float | None
    vendor: str
    properties: dict = field(default_factory=dict, repr=False, compare=False)


def base_magnification(props: dict, path: str | Path, default: float | None = None) -> tuple[float, str, float | None]:
    """Objective power of level 0 and where it came from.

    Prefers ``openslide.mpp-x`` (physical: 20x = 0.5 um/px, so ``mag = 10 / mpp``) when it is
    plausible, else ``openslide.objective-power``, else ``default``.  A slide with none of them
    raises :class:`SlideError` (never silently taken as 40x).
    """
    mpp = _float(props.get("openslide.mpp-x"))
    mpp_ok = mpp is not None and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]
    power = _float(props.get("openslide.objective-power"))
    if mpp_ok:
        return 10.0 / mpp, "mpp", mpp
    if power is not None and power > 0:
        return power, "objective_power", mpp
    if default is not None:
        return float(default), "config_default", mpp
    why = "no objective power and no mpp" if mpp is None else f"no objective power and an implausible mpp of {mpp:g} um/px"
    raise SlideError(path, f"{why}; set default_magnification for this cohort to use it")


def _float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


@dataclass(frozen=True)
class LevelChoice:
    level: int
    level_magnification: float
    read_px: int  # pixels read at `level` for one tile; resized to tile_px when different


def choose_level(base_mag: float, downsamples: tuple[float, ...], target_mag: float, tile_px: int,
                 tolerance: float = 0.05) -> LevelChoice:
    """The pyramid level closest to, and not below, the target magnification (SPEC 3.3).

    A level within ``tolerance`` (relative) of the target is read as is.  When every level is
    below the target (a 10x scan tiled at 20x), level 0 is used and tiles are upsampled.

    Examples
    --------
    >>> choose_level(40.0, (1.0, 2.0, 8.0), 20.0, 512)   # 40x slide with a 20x level
    LevelChoice(level=1, level_magnification=20.0, read_px=512)
    >>> choose_level(40.0, (1.0, 4.0), 20.0, 512)        # no 20x level: read 1024 px at 40x
    LevelChoice(level=0, level_magnification=40.0, read_px=1024)
    """
    best = 0
    for i, d in enumerate(downsamples):
        mag = base_mag / d
        if mag >= target_mag * (1 - tolerance) and mag <= base_mag / downsamples[best]:
            best = i
    mag = base_mag / downsamples[best]
    ratio = mag / target_mag
    read_px = tile_px if abs(ratio - 1) <= tolerance else max(1, round(tile_px * ratio))
    return LevelChoice(best, mag, read_px)


def open_slide(path: str | Path):
    """Open with OpenSlide; any failure becomes a :class:`SlideError` naming the file."""
    import openslide

    path = Path(path)
    if not path.exists():
        raise SlideError(path, "file not found")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as err:
        raise SlideError(path, f"not a slide format OpenSlide reads ({err or 'unsupported format'})") from None
    except (openslide.OpenSlideError, OSError) as err:
        raise SlideError(path, f"OpenSlide cannot open it: {err}") from None


def slide_info(slide, path: str | Path, default_magnification: float | None = None) -> SlideInfo:
    props = dict(slide.properties)
    mag, source, mpp = base_magnification(props, path, default_magnification)
    return SlideInfo(
        width=slide.dimensions[0],
        height=slide.dimensions[1],
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        level_dimensions=tuple(tuple(d) for d in slide.level_dimensions),
        base_magnification=mag,
        magnification_source=source,
        mpp=mpp,
        vendor=props.get("openslide.vendor", "unknown"),
        properties=props,
    )
