"""Tissue source sites: which site each patient's tissue came from (Howard et al. 2021, Nat Commun 12:4423).

A TCGA patient's site is its barcode's tissue source site (:func:`pathomch_assets.slides.tss_code`: ``A2``
in ``TCGA-A2-A04N``).  A cohort may instead give a ``site_file`` (``cohorts.<name>.site_file``): a CSV or
TSV with a ``patient_id`` and a ``site`` column; the file wins for the patients it lists.  A patient that
is neither listed nor a TCGA barcode has no site (null): the ``patient`` split method does not need one,
``site_preserved`` refuses (:func:`require_sites`).

:func:`patient_sites` is the one place the rule lives; every module that needs a site calls it.
"""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path

import pandas as pd

from .slides import patient_id, tss_code

SITE_FILE_COLUMNS = ("patient_id", "site")


def read_site_file(path: str | os.PathLike) -> pd.Series:
    """A site file as a Series ``patient_id -> site`` (named ``site``).

    Tab separated when the header line holds a tab, else comma separated; a UTF-8 BOM, blank lines and
    lines starting with ``#`` are ignored; other columns are allowed.  Patient ids are read as the
    ``slides`` table writes them (:func:`pathomch_assets.slides.patient_id`: a TCGA barcode is cut to
    12 characters and upper-cased).  ``ValueError`` naming the file and line for a missing column, an
    empty id or site, or a patient given two different sites.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "sites.csv"
    >>> _ = p.write_text("patient_id,site\\ncase_001,Leeds\\ncase_002,Oslo\\n")
    >>> read_site_file(p).to_dict()
    {'case_001': 'Leeds', 'case_002': 'Oslo'}
    """
    path = Path(path)
    st = path.stat()  # FileNotFoundError names the file
    return _read_site_file(str(path), st.st_mtime_ns, st.st_size).copy()


@functools.lru_cache(maxsize=8)
def _read_site_file(path: str, mtime_ns: int, size: int) -> pd.Series:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        numbered = [(i, line) for i, line in enumerate(fh, start=1) if line.strip() and not line.startswith("#")]
    if not numbered:
        raise ValueError(f"{path}: empty site file; expected a header line with columns {list(SITE_FILE_COLUMNS)}")
    delimiter = "\t" if "\t" in numbered[0][1] else ","
    rows = list(csv.reader([line for _, line in numbered], delimiter=delimiter))
    header = [h.strip() for h in rows[0]]
    missing = [c for c in SITE_FILE_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{path}: line {numbered[0][0]}: missing column(s) {missing}; expected a header with "
            f"'patient_id' and 'site' ({'tab' if delimiter == chr(9) else 'comma'} separated), found {header}"
        )
    ip, isite = header.index("patient_id"), header.index("site")
    sites: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for (line_no, _), row in zip(numbered[1:], rows[1:]):
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line_no}: {len(row)} fields, expected {len(header)} as in the header")
        pid, site = row[ip].strip(), row[isite].strip()
        if not pid or not site:
            raise ValueError(f"{path}: line {line_no}: empty {'patient_id' if not pid else 'site'}; give both")
        pid = patient_id(pid)
        if pid in sites and sites[pid] != site:
            raise ValueError(
                f"{path}: line {line_no}: patient {pid} has site {site!r} here but {sites[pid]!r} on line "
                f"{first_line[pid]}; give each patient one site"
            )
        sites.setdefault(pid, site)
        first_line.setdefault(pid, line_no)
    return pd.Series(sites, name="site", dtype="object")


def patient_sites(patient_ids, site_file: str | os.PathLike | None = None) -> pd.Series:
    """Each patient's tissue source site: ``patient_id -> site`` (``None`` where unknown), named ``site``.

    Parameters
    ----------
    patient_ids: iterable of str
        Patient ids as in ``slides.patient_id``; duplicates are dropped, first-seen order is kept.
    site_file: path, optional (default=None)
        ``cohorts.<name>.site_file``: its site wins for the patients it lists.

    Returns
    -------
    pd.Series
        Indexed by patient id: the site file's site, else the TCGA barcode's tissue source site, else
        ``None`` (a non-TCGA id not in the site file).

    Examples
    --------
    >>> patient_sites(["TCGA-A2-A04N", "tcga-e2-a1b1", "case_001"]).to_dict()
    {'TCGA-A2-A04N': 'A2', 'tcga-e2-a1b1': 'E2', 'case_001': None}
    """
    ids = list(dict.fromkeys(str(p) for p in patient_ids))
    listed = read_site_file(site_file) if site_file is not None else None
    out = [site_of(pid, listed) for pid in ids]
    return pd.Series(out, index=pd.Index(ids, name="patient_id"), name="site", dtype="object")


def site_of(pid: str, listed: pd.Series | None = None) -> str | None:
    """The site rule for one patient: its entry in ``listed`` (a read site file), else the TCGA barcode's
    tissue source site, else ``None``."""
    site = listed.get(patient_id(pid)) if listed is not None else None
    if site is None:
        try:
            site = tss_code(pid)
        except ValueError:
            return None
    return site


def site_lookup(site_files: dict[str, str | os.PathLike | None]):
    """``(cohort, patient_id) -> site or None`` for writing ``slides.site``, given each cohort's ``site_file``.

    Every site file is read (and checked) here, once; a cohort not in ``site_files`` uses barcodes only.
    """
    listed = {c: read_site_file(f) for c, f in site_files.items() if f is not None}
    return lambda cohort, pid: site_of(pid, listed.get(cohort))


def require_sites(sites: pd.Series, cohort: str) -> pd.Series:
    """``sites`` unchanged when every patient has one, else ``ValueError`` naming the cohort and what to add."""
    missing = sites[sites.isna()]
    if not missing.empty:
        raise ValueError(
            f"cohort {cohort}: splits.method site_preserved needs every patient's tissue source site, but "
            f"{len(missing)} of {len(sites)} patients have none (not TCGA barcodes and not in a site file; "
            f"e.g. {sorted(missing.index)[:5]}); add cohorts.{cohort}.site_file: a CSV/TSV with columns "
            f"patient_id and site"
        )
    return sites
