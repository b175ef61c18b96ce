"""Molecular inputs in their real public layouts (SPEC 2).

- PanCanAtlas mRNA (``EBPlusPlusAdjustPANCAN_IlluminaHiSeq_RNASeqV2.geneExp.tsv``): tab
  separated, first column ``gene_id`` = ``SYMBOL|EntrezID``, then aliquot barcodes, ``NA`` missing.
- PanCanAtlas miRNA (``pancanMiRs_EBadjOnProtocolPlatformWithoutRepsWithUnCorrectMiRs_08_04_16.csv``):
  comma separated, ``Genes``, ``Correction``, then aliquot barcodes.
- cBioPortal ``data_clinical_patient.txt`` of the "TCGA, Firehose Legacy" studies (the paper's) or the
  PanCanAtlas 2018 studies: tab separated, ``#`` header lines, ``PATIENT_ID``, ``OS_STATUS``,
  ``OS_MONTHS``; or the Firehose Legacy BCR table (``VITAL_STATUS``, days to death or last follow-up).

The expression files are streamed: the header is read once, then only the lines of the wanted
genes are split, and only primary-tumour (sample type ``01``) columns are kept, so a 1.9 GB
file never sits in memory.  Every format error names the file, the line and what was expected.
Gzipped files (``.tsv.gz``, ``.csv.gz``, as PanCanAtlas files are often stored) are read as they are,
recognised by their first bytes; a UTF-8 byte order mark is ignored.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import is_mirna, mirna_name

_BARCODE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-\d{2}", re.IGNORECASE)
NA_STRINGS = {
    "",
    "NA",
    "NaN",
    "nan",
    "null",
    "[Not Available]",
    "[Not Applicable]",
    "[Unknown]",
    "[Discrepancy]",
    "[Not Evaluated]",
    "[Completed]",
}
PRIMARY_TUMOUR = "01"


class ExpressionFormatError(ValueError):
    """An expression or clinical file that does not have the expected layout."""


@dataclass(frozen=True)
class TableLayout:
    sep: str
    id_column: str
    meta_columns: tuple[str, ...]  # columns between the id and the first barcode
    name: str


MRNA = TableLayout("\t", "gene_id", (), "PanCanAtlas mRNA (tab separated, gene_id = SYMBOL|EntrezID)")
MIRNA = TableLayout(",", "Genes", ("Correction",), "PanCanAtlas miRNA (comma separated, Genes, Correction)")


def open_text(path: str | Path):
    """Open a text table: gunzipped when it starts with the gzip magic bytes (whatever its suffix),
    UTF-8 with or without a byte order mark."""
    path = Path(path)
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


@contextlib.contextmanager
def _decoding_errors(path: Path):
    """Turn decoding and gzip errors while reading ``path`` into :class:`ExpressionFormatError`."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise ExpressionFormatError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start} of a block); "
            f"expected a tab/comma separated text file, optionally gzipped"
        ) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ExpressionFormatError(
            f"{path}: truncated or corrupt gzip file ({err}); fetch or decompress it again"
        ) from None


def sample_type(barcode: str) -> str:
    """Characters 14-15 of a TCGA barcode: ``01`` primary tumour, ``11`` normal, ..."""
    return barcode[13:15]


def mrna_symbol(gene_id: str) -> str:
    return gene_id.split("|", 1)[0]


@dataclass
class ExpressionTable:
    """Per-patient values (aliquots averaged) for the wanted rows of one file."""

    values: pd.DataFrame  # index: row name (trait), columns: patient_id
    n_aliquots: pd.Series  # per patient
    source: Path
    skipped_columns: int = 0  # non-primary or unwanted aliquots
    notes: list[str] = field(default_factory=list)


def read_expression(
    path: str | Path, layout: TableLayout, rows: list[str], key=lambda s: s, patients: set[str] | None = None
) -> ExpressionTable:
    """Stream ``path`` and return the ``rows`` (matched on ``key(first field)``) for primary tumours.

    Parameters
    ----------
    path : str or Path
        The expression file.
    layout : TableLayout
        :data:`MRNA` or :data:`MIRNA`.
    rows : list of str
        Row names wanted, as ``key`` returns them (gene symbols, ``hsa-miR-...`` names).
    key : callable, optional (default=identity)
        Maps the first field of a line to a row name (``mrna_symbol`` for ``SYMBOL|Entrez``).
    patients : set of str, optional (default=None)
        Keep only these patients' aliquots; ``None`` keeps every primary-tumour aliquot.
    """
    path = Path(path)
    wanted = set(rows)
    with _decoding_errors(path), open_text(path) as fh:
        header_line = fh.readline()
        if not header_line:
            raise ExpressionFormatError(f"{path}: line 1: file is empty, expected a {layout.name} header")
        header = next(csv.reader([header_line.rstrip("\r\n")], delimiter=layout.sep))
        expected = [layout.id_column, *layout.meta_columns]
        if header[: len(expected)] != expected:
            raise ExpressionFormatError(
                f"{path}: line 1: expected the header to start with {expected} ({layout.name}), "
                f"found {header[: len(expected)]}"
            )
        first = len(expected)
        keep_idx, keep_patients, skipped = [], [], 0
        for i, bc in enumerate(header[first:], start=first):
            if not _BARCODE.match(bc):
                raise ExpressionFormatError(
                    f"{path}: line 1, column {i + 1}: expected a TCGA aliquot barcode "
                    f"(TCGA-XX-XXXX-01A-...), found {bc!r}"
                )
            pid = bc[:12].upper()
            if sample_type(bc) != PRIMARY_TUMOUR or (patients is not None and pid not in patients):
                skipped += 1
                continue
            keep_idx.append(i)
            keep_patients.append(pid)
        found: dict[str, np.ndarray] = {}
        found_line: dict[str, int] = {}
        n_fields = len(header)
        for lineno, line in enumerate(fh, start=2):
            name = key(line.split(layout.sep, 1)[0].strip('"'))
            if name not in wanted:
                continue
            if name in found:
                raise ExpressionFormatError(
                    f"{path}: line {lineno}: {name!r} appears again (first on line {found_line[name]}); "
                    f"expected one row per {'gene' if layout is MRNA else 'miRNA'}"
                )
            fields = next(csv.reader([line.rstrip("\r\n")], delimiter=layout.sep))
            if len(fields) != n_fields:
                raise ExpressionFormatError(
                    f"{path}: line {lineno}: expected {n_fields} fields as in the header, found {len(fields)} "
                    f"(truncated or malformed file?)"
                )
            found[name] = _parse_values(fields, keep_idx, header, path, lineno)
            found_line[name] = lineno
    missing = [r for r in rows if r not in found]
    if missing:
        raise ExpressionFormatError(f"{path}: no row for {missing} (looked up in column {layout.id_column!r})")
    values = pd.DataFrame({name: found[name] for name in rows}, index=keep_patients).T
    # several primary aliquots of one patient are averaged (NA ignored)
    averaged = values.T.groupby(level=0).mean().T
    n_aliquots = pd.Series(keep_patients).value_counts().sort_index()
    return ExpressionTable(averaged, n_aliquots, path, skipped)


def _parse_values(fields: list[str], idx: list[int], header: list[str], path: Path, lineno: int) -> np.ndarray:
    out = np.empty(len(idx), dtype=float)
    for j, i in enumerate(idx):
        raw = fields[i].strip()
        if raw in NA_STRINGS:
            out[j] = np.nan
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ExpressionFormatError(
                f"{path}: line {lineno}, column {i + 1} ({header[i]}): expected a number or NA, found {raw!r}"
            ) from None
        if math.isinf(value):
            raise ExpressionFormatError(
                f"{path}: line {lineno}, column {i + 1} ({header[i]}): expected a finite number or NA, found {raw!r}; "
                f"an infinite expression value is an upstream error: fix the file or write NA"
            )
        out[j] = value  # a NaN spelling not in NA_STRINGS is missing too
    return out


def read_traits(
    traits: list[str], mrna: str | Path, mirna: str | Path | None, patients: set[str] | None = None
) -> pd.DataFrame:
    """Long table ``trait, patient_id, value, n_aliquots`` for configured traits.

    miRNA traits (``miR-``/``let-``) come from the miRNA file, others from the mRNA file.
    """
    genes = [t for t in traits if not is_mirna(t)]
    mirs = [t for t in traits if is_mirna(t)]
    frames = []
    if genes:
        tab = read_expression(mrna, MRNA, genes, key=mrna_symbol, patients=patients)
        frames.append(_long(tab, dict(zip(genes, genes))))
    if mirs:
        if mirna is None:
            raise ExpressionFormatError(f"miRNA traits {mirs} need a miRNA file (config key 'mirna')")
        names = {mirna_name(t): t for t in mirs}
        tab = read_expression(mirna, MIRNA, list(names), patients=patients)
        frames.append(_long(tab, names))
    return pd.concat(frames, ignore_index=True)


def _long(tab: ExpressionTable, names: dict[str, str]) -> pd.DataFrame:
    df = tab.values.rename(index=names).rename_axis(index="trait", columns="patient_id").stack(future_stack=True)
    df = df.rename("value").reset_index()
    df["n_aliquots"] = df["patient_id"].map(tab.n_aliquots).astype(int)
    return df


# --------------------------------------------------------------------------- clinical
@dataclass
class ClinicalTable:
    patients: pd.DataFrame  # patient_id, os_months, os_event, er_status, subtype
    problems: list[str] = field(default_factory=list)  # rows left out, each naming file and line
    layout: str = "cBioPortal OS_STATUS/OS_MONTHS"  # which survival columns were read
    missing_columns: list[str] = field(default_factory=list)  # configured ER/subtype columns the file lacks


#: OS status spellings: cBioPortal since 2020 (``1:DECEASED``), Firehose Legacy and PanCanAtlas 2018 downloads
#: before that (``DECEASED``/``LIVING``), TCGA BCR vital status (``Dead``/``Alive``); compared upper-cased
_STATUS = {"1:DECEASED": 1, "DECEASED": 1, "0:LIVING": 0, "LIVING": 0, "1": 1, "0": 0, "DEAD": 1, "ALIVE": 0}
#: days per month for survival given in days (TCGA BCR ``DAYS_TO_DEATH``/``DAYS_TO_LAST_FOLLOWUP``)
DAYS_PER_MONTH = 365.25 / 12
#: other names of the patient id column (TCGA BCR biotab files, the Firehose Legacy study's BCR table)
_PATIENT_ALIASES = ("PATIENT_ID", "BCR_PATIENT_BARCODE")


def read_clinical(
    path: str | Path, er_column: str = "ER_STATUS_BY_IHC", subtype_column: str = "SUBTYPE"
) -> ClinicalTable:
    """Read a cBioPortal clinical patient table; rows with NA or negative survival are left out
    and listed in ``problems``; a wrong header raises :class:`ExpressionFormatError`.

    Layouts (``layout`` says which was read; column names are matched case-insensitively):

    - cBioPortal ``data_clinical_patient.txt`` of the "TCGA, Firehose Legacy" studies (``brca_tcga``,
      ``luad_tcga``, the paper's) and of the PanCanAtlas 2018 studies: ``PATIENT_ID``, ``OS_STATUS``
      (``1:DECEASED``/``0:LIVING``, or ``DECEASED``/``LIVING`` in older downloads), ``OS_MONTHS``.
      PanCanAtlas adds ``SUBTYPE`` (``BRCA_LumA``, ...); Firehose Legacy patient tables have no PAM50 column.
    - The Firehose Legacy study's ``data_bcr_clinical_data_patient.txt`` (and TCGA BCR biotabs), when the
      ``OS_`` columns are absent: ``VITAL_STATUS`` (``Dead``/``Alive``) with ``DAYS_TO_DEATH`` or
      ``DAYS_TO_LAST_FOLLOWUP``, in days (months = days / 30.44); biotab header continuation rows
      (``CDE_ID:...``) are skipped.
    """
    path = Path(path)
    problems: list[str] = []
    with _decoding_errors(path), open_text(path) as fh:
        lines = [(n, ln) for n, ln in enumerate(fh, start=1) if not ln.startswith("#") and ln.strip()]
    if not lines:
        raise ExpressionFormatError(f"{path}: no header line (expected PATIENT_ID, OS_STATUS, OS_MONTHS)")
    hline, header_text = lines[0]
    header = header_text.rstrip("\r\n").split("\t")
    upper = [h.strip().upper() for h in header]
    ix = {c: i for i, c in reversed(list(enumerate(upper)))}
    pid_col = next((a for a in _PATIENT_ALIASES if a in ix), None)
    used = {pid_col, "OS_STATUS", "OS_MONTHS", "VITAL_STATUS", "DAYS_TO_DEATH", "DAYS_TO_LAST_FOLLOWUP"}
    for col in sorted(c for c in used | {er_column.upper(), subtype_column.upper()} if c and upper.count(c) > 1):
        fields = [i + 1 for i, c in enumerate(upper) if c == col]
        raise ExpressionFormatError(
            f"{path}: line {hline}: column {col} appears {len(fields)} times (fields {fields}): which one to "
            "read is ambiguous; keep one"
        )
    if {"OS_STATUS", "OS_MONTHS"} <= ix.keys() or pid_col is None or "VITAL_STATUS" not in ix:
        layout = "cBioPortal OS_STATUS/OS_MONTHS"
        need = ["PATIENT_ID", "OS_STATUS", "OS_MONTHS"]
        missing = [c for c in need if c not in ix and not (c == "PATIENT_ID" and pid_col)]
    else:
        layout = "TCGA BCR VITAL_STATUS/DAYS_TO_DEATH/DAYS_TO_LAST_FOLLOWUP"
        missing = (
            [] if {"DAYS_TO_DEATH", "DAYS_TO_LAST_FOLLOWUP"} & ix.keys() else ["DAYS_TO_DEATH", "DAYS_TO_LAST_FOLLOWUP"]
        )
    if missing:
        raise ExpressionFormatError(
            f"{path}: line {hline}: expected columns ['PATIENT_ID', 'OS_STATUS', 'OS_MONTHS'] "
            f"in the tab-separated cBioPortal header (or VITAL_STATUS with DAYS_TO_DEATH/"
            f"DAYS_TO_LAST_FOLLOWUP), missing {missing}"
        )
    er_i, sub_i = ix.get(er_column.upper()), ix.get(subtype_column.upper())
    absent = [c for c, i in ((er_column, er_i), (subtype_column, sub_i)) if i is None]
    rows = []
    for lineno, text in lines[1:]:
        f = text.rstrip("\r\n").split("\t")
        if len(f) != len(header):
            problems.append(f"{path}: line {lineno}: expected {len(header)} fields, found {len(f)}; row left out")
            continue
        pid = f[ix[pid_col]].strip()
        if pid.startswith("CDE_ID:") or pid.upper() == pid_col or pid == header[ix[pid_col]].strip():
            continue  # biotab header continuation (CDE names and ids)
        if layout.startswith("cBioPortal"):
            parsed = _os_columns(f[ix["OS_STATUS"]].strip(), f[ix["OS_MONTHS"]].strip(), pid)
        else:
            parsed = _vital_status(f, ix, pid)
        if isinstance(parsed, str):
            problems.append(f"{path}: line {lineno}: {parsed}")
            continue
        t, event = parsed
        er = f[er_i].strip() if er_i is not None else ""
        sub = f[sub_i].strip() if sub_i is not None else ""
        rows.append(
            (
                pid,
                t,
                event,
                None if er in NA_STRINGS else er,
                None if sub in NA_STRINGS else sub.removeprefix("BRCA_").removeprefix("LUAD_"),
            )
        )
    if not rows:
        shown = "\n  ".join(problems[:5]) + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ExpressionFormatError(
            f"{path}: no usable patient row (of {len(lines) - 1}); survival cannot be "
            f"computed: fix the file" + (f"\n  {shown}" if problems else "")
        )
    df = pd.DataFrame(rows, columns=["patient_id", "os_months", "os_event", "er_status", "subtype"])
    dup = df["patient_id"].duplicated(keep="first")
    for pid in df.loc[dup, "patient_id"]:
        problems.append(f"{path}: patient {pid} appears more than once; the first row is used")
    return ClinicalTable(df[~dup].reset_index(drop=True), problems, layout, absent)


def _months(value: str, what: str, pid: str, scale: float = 1.0) -> float | str:
    try:
        t = float(value)
    except ValueError:
        return f"{what} {value!r} is not a number; row left out"
    if not np.isfinite(t) or t < 0:
        return f"{what} {value} is {'negative' if t < 0 else 'not finite'}; row left out"
    return t / scale


def _os_columns(status: str, months: str, pid: str) -> tuple[float, int] | str:
    if status in NA_STRINGS or months in NA_STRINGS:
        return f"{pid} has no OS_STATUS/OS_MONTHS; left out of survival"
    if status.upper() not in _STATUS:
        return f"OS_STATUS {status!r} is not 1:DECEASED/0:LIVING (or DECEASED/LIVING); row left out"
    t = _months(months, "OS_MONTHS", pid)
    return t if isinstance(t, str) else (t, _STATUS[status.upper()])


def _vital_status(f: list[str], ix: dict[str, int], pid: str) -> tuple[float, int] | str:
    status = f[ix["VITAL_STATUS"]].strip()
    if status in NA_STRINGS:
        return f"{pid} has no VITAL_STATUS; left out of survival"
    if status.upper() not in _STATUS:
        return f"VITAL_STATUS {status!r} is not Dead/Alive; row left out"
    event = _STATUS[status.upper()]
    column = "DAYS_TO_DEATH" if event else "DAYS_TO_LAST_FOLLOWUP"
    days = f[ix[column]].strip() if column in ix else ""
    if days in NA_STRINGS:
        return f"{pid} is {status} without {column}; left out of survival"
    t = _months(days, column, pid, DAYS_PER_MONTH)
    return t if isinstance(t, str) else (t, event)
