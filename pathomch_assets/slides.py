"""Slides: discovery in a folder or GDC manifest, TCGA ids, magnification and pyramid level.

Nothing here imports Dagster.  OpenSlide errors are turned into :class:`SlideError`, which
names the file and says what is wrong (empty, truncated, a folder, ...), so a caller can record
the slide as failed and go on with the others.  Discovery applies a path policy: a slide is read
only inside its cohort's ``slides_dir`` (or ``allowed_dirs``); anything else comes back as a
:class:`SlideRef` with an ``error``, never read and never silently dropped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:  # imported where used: a tiling worker needs no pandas
    import pandas as pd

#: File endings OpenSlide opens (OpenSlide 4).  DICOM slides are one folder of ``.dcm`` files.
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".czi", ".dcm"}

#: mpp outside this range is not a microscope slide (e.g. a TIFF's 72 dpi default).
PLAUSIBLE_MPP = (0.05, 20.0)

#: objective power outside these is not a slide scan (1x is below any scanner objective, 100x is oil immersion):
#: it bounds the configured target and every slide's own magnification (from its mpp or objective power); a
#: tiny one would make one tile read the whole slide many times over, an infinite one every pixel a tile
MIN_MAGNIFICATION, MAX_MAGNIFICATION = 1.0, 100.0

#: grid cells one slide may have at the target magnification (a 512 x 512 px tile grid of 1,000,000 cells
#: is a 512,000 px square at 20x, far beyond any scan): more means its size or magnification is wrong
MAX_CELLS = 1_000_000

_TCGA = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)
#: a TCGA patient barcode: project, tissue source site (2 characters), participant (4)
_TCGA_PATIENT = re.compile(r"^TCGA-([A-Z0-9]{2})-([A-Z0-9]{4})$")
_DX = re.compile(r"-DX(\d+)", re.IGNORECASE)

GDC_MANIFEST_COLUMNS = ["id", "filename", "md5", "size", "state"]
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


class SlideError(RuntimeError):
    """A slide that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ManifestError(ConfigError):
    """A GDC manifest that does not have the expected layout (a configuration input, so the CLI prints
    it as one line like any other configuration error)."""


@dataclass(frozen=True)
class SlideRef:
    """A slide found on disk, or listed (in a manifest, or as a name in ``slides_dir``) but not usable.

    ``missing`` is True whenever the slide must not be read: not on disk, or refused with
    ``error`` (a path outside ``slides_dir``, a broken link, a folder named like a slide, a slide
    id found twice).  ``error`` is the message for the ``slides`` table (status 'error'); it names
    the file (or manifest line) and what to do.  ``md5`` and ``size`` are the manifest's, when any
    (:func:`check_manifest_entry` compares them with the file); ``listed_in`` is ``<manifest>:<line>``.
    """

    cohort: str
    slide_id: str
    path: Path
    missing: bool = False
    md5: str | None = None
    size: int | None = None
    error: str | None = None
    listed_in: str | None = None

    @property
    def usable(self) -> bool:
        return not self.missing and self.error is None

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
    """SPEC 2: the first 12 characters, ``TCGA-XX-XXXX``; a TCGA barcode in any case is upper-cased (the
    expression tables and cBioPortal write patients in upper case).

    Examples
    --------
    >>> patient_id("tcga-a2-a04n-01z-00-dx1.9d2a8c6c")
    'TCGA-A2-A04N'
    >>> patient_id("case_017-slide2")
    'case_017-sli'
    """
    pid = slide_id[:12]
    return pid.upper() if _TCGA.match(pid) else pid


def tss_code(patient: str) -> str:
    """The tissue source site of a TCGA patient barcode: its second field (``A2`` in ``TCGA-A2-A04N``).

    Any case is accepted; a slide or aliquot barcode is cut to its patient part first.  ``ValueError`` for
    anything that is not a TCGA barcode (give such a cohort a ``site_file``).

    Examples
    --------
    >>> tss_code("TCGA-A2-A04N")
    'A2'
    >>> tss_code("tcga-e2-a1b1-01z-00-dx1")
    'E2'
    >>> tss_code("TCGA-A2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: 'TCGA-A2' is not a TCGA patient barcode ...
    """
    m = _TCGA_PATIENT.match(str(patient)[:12].upper())
    if not m:
        raise ValueError(
            f"{patient!r} is not a TCGA patient barcode (TCGA-<site: 2 characters>-<participant: 4>, "
            "e.g. TCGA-A2-A04N); give the cohort a site_file that maps its patients to sites"
        )
    return m.group(1)


def is_diagnostic(slide_id: str) -> bool:
    """TCGA diagnostic slides carry ``-DX<n>``; non-TCGA names are taken as diagnostic."""
    return bool(_DX.search(slide_id)) or not _TCGA.match(slide_id)


def dx_number(slide_id: str) -> int:
    m = _DX.search(slide_id)
    return int(m.group(1)) if m else 10**6


def read_gdc_manifest(path: str | Path) -> pd.DataFrame:
    """Read a GDC manifest (tab separated: ``id filename md5 size state``); ``attrs["lines"]``: line numbers.

    ``md5`` must be 32 hex digits (or empty) and ``size`` a byte count (or empty); a UTF-8 BOM is ignored.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:5]] != GDC_MANIFEST_COLUMNS:
            raise ManifestError(
                f"{path}: line 1: expected GDC manifest header "
                f"{' '.join(GDC_MANIFEST_COLUMNS)!r}, found {' '.join(header or [])!r}"
            )
        rows, lines = [], []
        for lineno, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 5:
                raise ManifestError(f"{path}: line {lineno}: expected 5 tab-separated fields, found {len(row)}")
            md5, size = row[2].strip(), row[3].strip()
            if md5 and not _MD5.match(md5):
                raise ManifestError(
                    f"{path}: line {lineno}: md5 {md5!r} is not 32 hex digits; fix the manifest "
                    f"(download it again from the GDC portal)"
                )
            if size and not size.isdigit():
                raise ManifestError(
                    f"{path}: line {lineno}: size {size!r} is not a byte count; fix the manifest "
                    f"(download it again from the GDC portal)"
                )
            rows.append(row[:5])
            lines.append(lineno)
    import pandas as pd

    out = pd.DataFrame(rows, columns=GDC_MANIFEST_COLUMNS)
    out.attrs["lines"] = lines
    return out


def discover_slides(
    cohort: str, slides_dir: str | Path, manifest: str | Path | None = None, allowed_dirs=()
) -> list[SlideRef]:
    """List the slides of a cohort, sorted by slide id.

    Without a manifest: every file under ``slides_dir`` with a slide ending (recursively,
    so ``gdc-client``'s ``<uuid>/<file>`` layout works); a DICOM folder counts once.
    With a manifest: its slides only, looked up as ``<dir>/<id>/<filename>`` or
    ``<dir>/<filename>``; one that is not on disk is returned with ``missing=True``.

    Path policy: a slide must resolve (links followed) inside ``slides_dir`` or one of
    ``allowed_dirs``; manifest ids and file names must be plain names (no folders, no ``..``,
    not absolute).  A slide that breaks it, a broken link, a folder named like a slide and a
    slide id found in two places come back with ``missing=True`` and an ``error`` naming the
    path (or manifest line) and what to do: never read, never silently left out.
    """
    slides_dir = Path(slides_dir)
    roots = _roots(slides_dir, allowed_dirs)
    if manifest is not None:
        return _from_manifest(cohort, slides_dir, Path(manifest), roots)
    units: dict[str, dict[str, tuple[Path, str | None]]] = {}
    for p in sorted(slides_dir.rglob("*")):
        if p.suffix.lower() not in SLIDE_SUFFIXES or p.name.startswith("."):
            continue
        is_dcm_file = p.suffix.lower() == ".dcm" and not p.is_dir()
        unit = str(p.parent if is_dcm_file else p)
        sid = slide_id_from_path(p)
        units.setdefault(sid, {}).setdefault(unit, (p, path_problem(p, roots, dicom_folder_ok=False)))
    refs = []
    for sid, found in units.items():
        (first, problem), *others = found.values()
        if others:
            where = ", ".join(str(u) for u in found)
            refs.append(
                SlideRef(
                    cohort,
                    sid,
                    first,
                    True,
                    error=f"{first}: slide id {sid!r} found {len(found)} times "
                    f"({where}); a slide id must be unique in slides_dir: remove or rename the copies",
                )
            )
        elif problem:
            refs.append(SlideRef(cohort, sid, first, True, error=f"{first}: {problem}"))
        else:
            refs.append(SlideRef(cohort, sid, first))
    return sorted(refs, key=lambda r: r.slide_id)


def discover_cohort(name: str, cohort) -> list[SlideRef]:
    """:func:`discover_slides` for a cohort's config (``slides_dir``, ``manifest``, ``allowed_dirs``)."""
    return discover_slides(name, cohort.slides_dir, cohort.manifest, getattr(cohort, "allowed_dirs", ()) or ())


def find_slide(name: str, cohort, slide_id: str) -> SlideRef | None:
    """One slide of a cohort's config looked up by id, without listing ``slides_dir`` (``None``: not found).

    With a manifest: the manifest's lines of that id (their files are checked, the others' are not).
    Without: the files ``slides_dir/<id><suffix>`` (any slide suffix, any case) and a DICOM folder
    ``slides_dir/<id>/``; when exactly one is there it is the slide (path policy checked, as
    :func:`discover_slides` does).  Otherwise (a ``gdc-client`` ``<uuid>/<file>`` layout, a name found
    twice) the whole folder is listed, so that a duplicate id is reported as :func:`discover_slides` does.
    """
    slides_dir = Path(cohort.slides_dir)
    roots = _roots(slides_dir, getattr(cohort, "allowed_dirs", ()) or ())
    if cohort.manifest is not None:
        found = _from_manifest(name, slides_dir, Path(cohort.manifest), roots, only=slide_id)
        return found[0] if found else None
    suffixes = {v for s in SLIDE_SUFFIXES if s != ".dcm" for v in (s, s.upper())}
    candidates = [p for s in sorted(suffixes) if os.path.lexists(p := slides_dir / f"{slide_id}{s}")]
    folder = slides_dir / slide_id
    if folder.is_dir():
        dcm = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm" and not p.name.startswith("."))
        candidates += dcm[:1]
    if len(candidates) == 1 and slide_id_from_path(candidates[0]) == slide_id:
        problem = path_problem(candidates[0], roots, dicom_folder_ok=False)
        return (
            SlideRef(name, slide_id, candidates[0], True, error=f"{candidates[0]}: {problem}")
            if problem
            else (SlideRef(name, slide_id, candidates[0]))
        )
    return next((r for r in discover_cohort(name, cohort) if r.slide_id == slide_id), None)


#: run tag carrying the slide the sensor found (:func:`ref_tag`), read by the run's ``slide_tiles`` step
SLIDE_TAG = "pathomch/slide"


def ref_tag(ref: SlideRef) -> str:
    """A found slide as a run tag value (JSON: path, size and mtime on disk, manifest MD5/size/line), so that
    the run reads that slide without listing the folder again (:func:`ref_from_tag`)."""
    st = os.stat(ref.path)
    return json.dumps(
        {
            "path": str(ref.path),
            "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "md5": ref.md5,
            "size": ref.size,
            "listed_in": ref.listed_in,
        },  # fmt: skip
        sort_keys=True,
    )


def ref_from_tag(name: str, cohort, slide_id: str, tag: str | None) -> tuple[SlideRef | None, str | None]:
    """The slide a run tag (:func:`ref_tag`) names, checked again: ``(ref, None)`` when the file is still
    there with the same size and mtime, is the slide ``slide_id`` and lies inside the cohort's
    ``slides_dir``/``allowed_dirs``; else ``(None, why)``, and the caller looks the slide up by id
    (:func:`find_slide`).  A tag is a hint, never a permission: a path outside the allowed folders is refused."""
    if not tag:
        return None, None
    try:
        d = json.loads(tag)
        path, size, mtime = Path(d["path"]), int(d["bytes"]), int(d["mtime_ns"])
    except (ValueError, KeyError, TypeError) as err:
        return None, f"slide tag {tag[:200]!r} unreadable ({err})"
    if slide_id_from_path(path) != slide_id:
        return None, f"slide tag names {path}, not slide {slide_id}"
    roots = _roots(Path(cohort.slides_dir), getattr(cohort, "allowed_dirs", ()) or ())
    if not os.path.lexists(path):
        return None, f"{path} (slide tag) is no longer there"
    problem = path_problem(path, roots, dicom_folder_ok=False)
    if problem:
        return None, f"{path} (slide tag): {problem}"
    st = os.stat(path)
    if (st.st_size, st.st_mtime_ns) != (size, mtime):
        return None, f"{path} (slide tag) changed since the sensor saw it"
    return SlideRef(name, slide_id, path, md5=d.get("md5"), size=d.get("size"), listed_in=d.get("listed_in")), None


def _roots(slides_dir: Path, allowed_dirs) -> list[str]:
    return [os.path.realpath(d) for d in (slides_dir, *allowed_dirs)]


def _inside(real: str, roots: list[str]) -> bool:
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def path_problem(path: Path, roots: list[str], dicom_folder_ok: bool = True) -> str | None:
    """Why ``path`` may not be read as a slide (``None``: it may): outside the allowed folders, a
    broken link, a folder named like a slide, not a regular file."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link (to {os.readlink(path)}); restore the file it points to or remove the link"
    real = os.path.realpath(path)
    if not _inside(real, roots):
        allowed = " or ".join(roots)
        return (
            f"resolves to {real}, outside {allowed}; slides are read only inside slides_dir: move the "
            f"file there, or add its folder to the cohort's allowed_dirs if it is meant to be read"
        )
    if os.path.isdir(real):
        if dicom_folder_ok and path.suffix.lower() == ".dcm":
            return None
        return "is a folder, not a slide file; rename or remove it (or put the slide file in its place)"
    if not os.path.isfile(real):
        return "is not a regular file (a device, pipe or socket); replace it with the slide file"
    return None


def _plain_name(value: str) -> bool:
    return bool(value) and value not in (".", "..") and not re.search(r"[\\/]|^[A-Za-z]:|\x00", value)


def _from_manifest(
    cohort: str, slides_dir: Path, manifest: Path, roots: list[str], only: str | None = None
) -> list[SlideRef]:
    by_id: dict[str, list[tuple[str, SlideRef]]] = {}  # slide id: (manifest line, ref) for each listing
    table = read_gdc_manifest(manifest)
    for line, rec in zip(table.attrs["lines"], table.itertuples()):
        where = f"{manifest}:{line}"
        sid = slide_id_from_path(os.path.basename(rec.filename.replace("\\", "/")) or rec.filename)
        if only is not None and sid != only:
            continue  # one slide looked up (find_slide): the other lines' files are not looked at
        md5 = rec.md5.strip().lower() or None
        size = int(rec.size) if rec.size.strip() else None
        bad = next(((k, v) for k, v in (("id", rec.id), ("filename", rec.filename)) if not _plain_name(v)), None)
        if bad is not None:
            ref = SlideRef(
                cohort,
                sid,
                slides_dir,
                True,
                md5=md5,
                size=size,
                listed_in=where,
                error=(
                    f"{manifest}: line {line}: {bad[0]} {bad[1]!r} is not a plain name (a GDC manifest lists a file "
                    f"id and a file name, no folders, '..' or absolute paths); the slide is not read: fix that line"
                ),
            )
        else:
            candidates = [slides_dir / rec.id / rec.filename, slides_dir / rec.filename]
            found = next((c for c in candidates if os.path.lexists(c)), None)
            problem = path_problem(found, roots) if found is not None else None
            if found is not None and problem:
                error = f"{found}: {problem} (listed in {manifest}, line {line})"
                ref = SlideRef(cohort, sid, found, True, md5=md5, size=size, listed_in=where, error=error)
            else:
                ref = SlideRef(cohort, sid, found or candidates[0], found is None, md5=md5, size=size, listed_in=where)
        by_id.setdefault(sid, []).append((str(line), ref))
    refs = []
    for sid, listings in by_id.items():
        same = [ref for _, ref in listings]
        if len(same) > 1:
            lines = ", ".join(line for line, _ in listings)
            refs.append(
                SlideRef(
                    cohort,
                    sid,
                    same[0].path,
                    True,
                    same[0].md5,
                    same[0].size,
                    listed_in=same[0].listed_in,
                    error=f"{manifest}: lines {lines}: slide id {sid!r} is listed {len(same)} times; "
                    f"a slide id must be unique: remove the extra lines",
                )
            )
        else:
            refs.append(same[0])
    return sorted(refs, key=lambda r: r.slide_id)


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """MD5 of a file, read in ``chunk``-byte pieces (slides are gigabytes)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_manifest_entry(ref: SlideRef) -> str | None:
    """Compare a slide file with its manifest's ``size`` and ``md5``; ``None`` when they agree (or the
    manifest gives neither), else an error message naming the file, the manifest line and what to do.

    The size is checked first (free); the MD5 streams the whole file once.
    """
    if ref.size is None and ref.md5 is None:
        return None
    listed = f" ({ref.listed_in})" if ref.listed_in else ""
    redo = "download it again (gdc-client download -m <manifest>)"
    try:
        size = os.stat(ref.path).st_size
        if ref.size is not None and size != ref.size:
            return (
                f"{ref.path}: {size} bytes, but the manifest{listed} says {ref.size}: incomplete or wrong file; {redo}"
            )
        if ref.md5 is not None:
            digest = file_md5(ref.path)
            if digest != ref.md5.lower():
                return (
                    f"{ref.path}: MD5 {digest} differs from the manifest's {ref.md5}{listed}: corrupt or not the "
                    f"listed file; {redo}"
                )
    except OSError as err:
        return f"{ref.path}: cannot read it to check it against the manifest{listed}: {err.strerror or err}"
    return None


# ---------------------------------------------------------------- a slide's content

#: bytes read from each end of each of a slide's files for its content fingerprint
FINGERPRINT_BYTES = 1 << 20


def slide_files(path: str | Path) -> list[Path]:
    """The files a slide is made of: a DICOM slide's every file in its folder, an MRXS slide's
    ``.mrxs`` and the files of its data folder (``Slidedat.ini``, ``.dat``), else the file itself."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".dcm":
        own, folder = [], path.parent
    elif suffix == ".mrxs":
        own, folder = [path], path.with_suffix("")
    else:
        return [path]
    return own + (
        sorted(e for e in folder.iterdir() if e.is_file() and not e.name.startswith(".")) if folder.is_dir() else []
    )


def content_fingerprint(path: str | Path) -> str:
    """A slide's content, sampled: a BLAKE2b hash of each of its files' name, size, first and last MiB.

    A TIFF's header and directories sit at one end or the other, its tile data between, so another slide
    put in its place (``mv``, a copy, a download) gives another fingerprint at the cost of reading 2 MiB,
    not the whole file (a full MD5 streams gigabytes: ``docs/reliability.md``).  It does not depend
    on mtime: a ``touch`` or a restore of the same bytes leaves it unchanged.  Raises ``OSError``.
    """
    h = hashlib.blake2b(digest_size=12)
    for f in slide_files(path):
        if f.is_dir():  # a slide OpenSlide reads from a folder: its files are listed by the caller's stats
            h.update(f"{f.name}/\0".encode())
            continue
        with open(f, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            h.update(f"{f.name}\0{size}\0".encode())
            h.update(fh.read(FINGERPRINT_BYTES))
            if size > FINGERPRINT_BYTES:
                fh.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
                h.update(fh.read(FINGERPRINT_BYTES))
    return h.hexdigest()


@dataclass(frozen=True)
class SlideState:
    """What a slide's files are now: :func:`content_fingerprint` and each file's size, mtime and inode.

    Taken before and after a slide is read: when the two differ the file was replaced or written
    while it was read, and its tiles are not this file's."""

    fingerprint: str
    size: int
    mtime_ns: int
    stats: tuple[tuple[str, int, int, int], ...]


def slide_state(path: str | Path) -> SlideState:
    """The slide's :class:`SlideState` (raises ``OSError`` when a file cannot be read)."""
    stats = []
    for f in slide_files(path):
        st = os.stat(f)
        stats.append((f.name, st.st_size, st.st_mtime_ns, st.st_ino))
    first = os.stat(path)
    return SlideState(content_fingerprint(path), first.st_size, first.st_mtime_ns, tuple(stats))


def usable_slides(slides: pd.DataFrame) -> pd.DataFrame:
    """Every usable slide (``status == 'ok'``; non-diagnostic slides are 'skipped' at tiling), sorted by
    cohort and slide id: all of them are trained on and scored, each with its patient's label (SPEC 2)."""
    ok = slides[slides["status"] == "ok"]
    return ok.sort_values(["cohort", "slide_id"]).reset_index(drop=True)


def primary_slides(slides: pd.DataFrame) -> pd.DataFrame:
    """One usable slide per patient: the DX1 slide, else the lowest DX number (SPEC 2: survival only).

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
    plausible, else ``openslide.objective-power``, else ``default``.  A value is used only when the
    magnification it gives is within ``MIN_MAGNIFICATION``-``MAX_MAGNIFICATION`` (an objective power of
    0.05 would make each tile one pixel read).  A slide with no usable value raises :class:`SlideError`
    naming what it has (never silently taken as 40x).

    Examples
    --------
    >>> base_magnification({"openslide.mpp-x": "0.25"}, "x.svs")
    (40.0, 'mpp', 0.25)
    """
    mpp = _float(props.get("openslide.mpp-x"))
    power = _float(props.get("openslide.objective-power"))
    if mpp is not None and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] and _in_bounds(10.0 / mpp):
        return 10.0 / mpp, "mpp", mpp
    if power is not None and _in_bounds(power):
        return power, "objective_power", mpp
    if default is not None:
        return float(default), "config_default", mpp
    bounds = f"{MIN_MAGNIFICATION:g}-{MAX_MAGNIFICATION:g}x"
    has = [
        "no objective power" if power is None else f"an objective power of {power:g} (outside {bounds})",
        "no mpp" if mpp is None else f"an implausible mpp of {mpp:g} um/px",
    ]
    why = "no objective power and no mpp" if power is None and mpp is None else " and ".join(has)
    raise SlideError(path, f"{why}; set default_magnification for this cohort to use it")


def _in_bounds(magnification: float) -> bool:
    return MIN_MAGNIFICATION <= magnification <= MAX_MAGNIFICATION


def check_grid(path: str | Path, n_cols: int, n_rows: int, read_px: int, level_magnification: float) -> None:
    """Refuse a slide whose tile grid has more than ``MAX_CELLS`` cells (its size or magnification is wrong)."""
    if n_cols * n_rows > MAX_CELLS:
        raise SlideError(
            path,
            f"{n_cols} x {n_rows} = {n_cols * n_rows:,} tile cells of {read_px} px at {level_magnification:g}x "
            f"(more than {MAX_CELLS:,}): its dimensions or magnification are wrong; check its metadata or set "
            "default_magnification for this cohort",
        )


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


def choose_level(
    base_mag: float, downsamples: tuple[float, ...], target_mag: float, tile_px: int, tolerance: float = 0.05
) -> LevelChoice:
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
    """Open with OpenSlide; any failure becomes a :class:`SlideError` naming the file and saying
    what is wrong (empty, truncated, a folder, a broken link, permission, format)."""
    import openslide

    path = Path(path)
    if not path.exists() or path.is_dir() and path.suffix.lower() != ".dcm":
        raise SlideError(path, describe_open_error(path, None))
    try:
        slide = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError) as err:
        raise SlideError(path, describe_open_error(path, err)) from None
    truncated = tiff_truncation(path) if path.suffix.lower() != ".ndpi" else None
    if truncated:  # the header and directories are there, but tile data is cut off
        slide.close()
        raise SlideError(path, truncated)
    return slide


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def describe_open_error(path: str | Path, exc: BaseException | None) -> str:
    """The reason (without the path) a slide cannot be opened: a broken link, a folder, permission,
    an empty or truncated file, else the OpenSlide error ``exc``, with what to do."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        return f"broken symbolic link (to {os.readlink(p)}); restore the file it points to or remove the link"
    if not p.exists():
        return "file not found"
    if p.is_dir() and p.suffix.lower() != ".dcm":
        return "is a folder, not a slide file; rename or remove it (or put the slide file in its place)"
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(132)
    except PermissionError:
        return "permission denied: the file cannot be read; fix its permissions (e.g. chmod a+r) and run again"
    except OSError as err:
        return f"cannot read it: {err.strerror or err}"
    if size == 0:
        return "empty file (0 bytes): the download or copy did not finish; fetch it again"
    if head[:4] in _TIFF_MAGIC or head[:2] in (b"II", b"MM") and size < 8:
        truncated = tiff_truncation(p)
        if truncated:
            return truncated
        return f"corrupt or unsupported TIFF; OpenSlide cannot open it: {exc}"
    if isinstance(exc, OSError):
        return f"cannot read it: {exc.strerror or exc}"
    if type(exc).__name__ == "OpenSlideUnsupportedFormatError" and head[128:132] != b"DICM":
        return (
            f"not a slide format OpenSlide reads ({size} bytes starting {head[:8]!r}; "
            f"{exc or 'unsupported format'}); check the file is the slide and not, e.g., an HTML error page"
        )
    return f"OpenSlide cannot open it: {exc}"


_TIFF_TYPE_SIZE = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_TIFF_ARRAY = {3: "u2", 4: "u4", 13: "u4", 16: "u8"}
_DATA_TAGS = {273: "offsets", 324: "offsets", 279: "counts", 325: "counts"}


def tiff_truncation(path: str | Path) -> str | None:
    """A message when a TIFF-based file (SVS, generic TIFF) refers to bytes past its end, i.e. it was
    cut off; ``None`` for a complete file, a non-TIFF file, or one this walk cannot follow.

    Walks the header and every image directory, checking directory entries and strip/tile data.
    """
    try:
        return _tiff_truncation(Path(path))
    except (OSError, struct.error, ValueError):
        return None


def _tiff_truncation(path: Path) -> str | None:
    size = path.stat().st_size

    def cut(end: int) -> str:
        return (
            f"truncated or corrupt: the file has {size} bytes but its TIFF structure refers to byte {end}; "
            f"the download or copy did not finish: fetch it again"
        )

    with open(path, "rb") as fh:
        head = fh.read(16)
        if head[:2] not in (b"II", b"MM"):
            return None
        e = "<" if head[:2] == b"II" else ">"
        if len(head) < 8:
            return cut(8)
        magic = struct.unpack(e + "H", head[2:4])[0]
        if magic == 42:
            big, off = False, struct.unpack(e + "I", head[4:8])[0]
        elif magic == 43:
            if len(head) < 16:
                return cut(16)
            big, off = True, struct.unpack(e + "Q", head[8:16])[0]
        else:
            return None
        cnt_fmt, cnt_size, ent_size, off_fmt, off_size = ("Q", 8, 20, "Q", 8) if big else ("H", 2, 12, "I", 4)
        seen: set[int] = set()
        while off and off not in seen and len(seen) < 100_000:
            seen.add(off)
            if off + cnt_size > size:
                return cut(off + cnt_size)
            fh.seek(off)
            n = struct.unpack(e + cnt_fmt, fh.read(cnt_size))[0]
            end = off + cnt_size + n * ent_size + off_size
            if end > size:
                return cut(end)
            raw = fh.read(n * ent_size + off_size)
            arrays: dict[str, np.ndarray] = {}
            for i in range(n):
                ent = raw[i * ent_size : (i + 1) * ent_size]
                tag, typ = struct.unpack(e + "HH", ent[:4])
                count = struct.unpack(e + off_fmt, ent[4 : 4 + off_size])[0]
                nbytes = _TIFF_TYPE_SIZE.get(typ, 1) * count
                if nbytes <= off_size:
                    value = ent[4 + off_size : 4 + off_size + nbytes]
                else:
                    voff = struct.unpack(e + off_fmt, ent[4 + off_size :])[0]
                    if voff + nbytes > size:
                        return cut(voff + nbytes)
                    value = None
                    if tag in _DATA_TAGS and typ in _TIFF_ARRAY:
                        fh.seek(voff)
                        value = fh.read(nbytes)
                if tag in _DATA_TAGS and typ in _TIFF_ARRAY and value is not None:
                    arrays[_DATA_TAGS[tag]] = np.frombuffer(value, dtype=e + _TIFF_ARRAY[typ]).astype(np.uint64)
            offsets, counts = arrays.get("offsets"), arrays.get("counts")
            if offsets is not None and counts is not None and len(offsets) == len(counts) and len(offsets):
                data_end = int((offsets + counts).max())
                if data_end > size:
                    return cut(data_end)
            off = struct.unpack(e + off_fmt, raw[-off_size:])[0]
    return None


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
