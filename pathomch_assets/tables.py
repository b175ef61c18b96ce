"""Result tables: one Parquet file per (table, partition), seen as DuckDB views at ``duckdb_path``.

Why not plain DuckDB tables: DuckDB allows one writing process per database file, and Dagster
runs partitions in parallel processes.  Per-partition files are written to a temporary name and
renamed (:func:`pathomch_assets.files.atomic_path`), so re-materializing a partition replaces
exactly its rows (idempotent), parallel writers never meet, and a killed run leaves no
half-written rows.  On object storage DuckDB reads the Parquet files through the same fsspec
filesystem.  ``SCHEMAS`` holds every table's columns (the SPEC 5 contract first).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from .files import as_path, atomic_path, is_remote, partition_filename

if TYPE_CHECKING:  # imported where used
    import duckdb
    import pandas as pd


# --------------------------------------------------------------------------- schemas
#: Column names are the SPEC 5 contract (extra columns follow the required ones).
SCHEMAS: dict[str, dict[str, str]] = {
    "slides": {
        "cohort": "VARCHAR",
        "slide_id": "VARCHAR",
        "patient_id": "VARCHAR",
        "path": "VARCHAR",
        "status": "VARCHAR",
        "error": "VARCHAR",
        "site": "VARCHAR",
        "n_tiles": "INTEGER",
        "width": "BIGINT",
        "height": "BIGINT",
        "vendor": "VARCHAR",
        "base_magnification": "DOUBLE",
        "magnification_source": "VARCHAR",
        "mpp": "DOUBLE",
        "level": "INTEGER",
        "level_magnification": "DOUBLE",
        "read_px": "INTEGER",
        "seconds": "DOUBLE",
        "file_size": "BIGINT",
        "file_mtime_ns": "BIGINT",
        "params_hash": "VARCHAR",
        "file_fingerprint": "VARCHAR",
        "tiles_digest": "VARCHAR",
        "n_tiles_qc_dropped": "INTEGER",
    },
    "tiles": {
        "cohort": "VARCHAR",
        "slide_id": "VARCHAR",
        "col": "INTEGER",
        "row": "INTEGER",
        "tissue_fraction": "DOUBLE",
        "idx": "INTEGER",
        "pen": "DOUBLE",
        "blur": "DOUBLE",
        "blurred": "BOOLEAN",
        "dark": "DOUBLE",
        "qc": "VARCHAR",
    },
    "stain": {
        "cohort": "VARCHAR",
        "slide_id": "VARCHAR",
        "status": "VARCHAR",
        "error": "VARCHAR",
        "h_r": "DOUBLE",
        "h_g": "DOUBLE",
        "h_b": "DOUBLE",
        "e_r": "DOUBLE",
        "e_g": "DOUBLE",
        "e_b": "DOUBLE",
        "h_p50": "DOUBLE",
        "h_p99": "DOUBLE",
        "e_p50": "DOUBLE",
        "e_p99": "DOUBLE",
        "n_pixels": "BIGINT",
        "n_tiles_sampled": "INTEGER",
        "normalize": "VARCHAR",
        "target": "VARCHAR",
    },
    "labels": {
        "cohort": "VARCHAR",
        "trait": "VARCHAR",
        "patient_id": "VARCHAR",
        "percentile": "DOUBLE",
        "label": "INTEGER",
        "subset": "VARCHAR",
        "expression": "DOUBLE",
    },
    "splits": {"cohort": "VARCHAR", "round": "INTEGER", "patient_id": "VARCHAR", "split": "VARCHAR", "site": "VARCHAR"},
    "expression": {
        "cohort": "VARCHAR",
        "trait": "VARCHAR",
        "patient_id": "VARCHAR",
        "value": "DOUBLE",
        "n_aliquots": "INTEGER",
    },
    "clinical": {
        "cohort": "VARCHAR",
        "patient_id": "VARCHAR",
        "os_months": "DOUBLE",
        "os_event": "INTEGER",
        "er_status": "VARCHAR",
        "subtype": "VARCHAR",
    },
    "slide_scores": {
        "cohort": "VARCHAR",
        "trait": "VARCHAR",
        "model": "VARCHAR",
        "slide_id": "VARCHAR",
        "score": "DOUBLE",
        "n_tiles": "INTEGER",
        "patient_id": "VARCHAR",
        "tiles_digest": "VARCHAR",
    },
    "model_metrics": {
        "cohort": "VARCHAR",
        "trait": "VARCHAR",
        "model": "VARCHAR",
        "eval_set": "VARCHAR",
        "auc": "DOUBLE",
        "n_slides": "INTEGER",
        "n_patients": "INTEGER",
        "auc_min": "DOUBLE",
        "auc_max": "DOUBLE",
        "n_models": "INTEGER",
    },
    "model_rounds": {
        "cohort": "VARCHAR",
        "trait": "VARCHAR",
        "model": "VARCHAR",
        "status": "VARCHAR",
        "reason": "VARCHAR",
        "train_patients": "INTEGER",
        "train_slides": "INTEGER",
        "val_patients": "INTEGER",
        "val_slides": "INTEGER",
    },
    "split_counts": {
        "cohort": "VARCHAR",
        "round": "INTEGER",
        "split": "VARCHAR",
        "subset": "VARCHAR",
        "trait": "VARCHAR",
        "label": "INTEGER",
        "n_patients": "INTEGER",
        "n_slides": "INTEGER",
        "share": "DOUBLE",
        "target_share": "DOUBLE",
        "method": "VARCHAR",
        "solver_status": "VARCHAR",
    },
    "correlations": {
        "cohort": "VARCHAR",
        "trait": "VARCHAR",
        "eval_set": "VARCHAR",
        "spearman_rho": "DOUBLE",
        "p_value": "DOUBLE",
        "fdr": "DOUBLE",
        "n_slides": "INTEGER",
    },
    "hti": {
        "cohort": "VARCHAR",
        "traits": "VARCHAR",
        "slide_id": "VARCHAR",
        "patient_id": "VARCHAR",
        "hti": "DOUBLE",
        "n_tiles": "INTEGER",
        "n_positive": "INTEGER",
        "valid": "BOOLEAN",
        "invalid_traits": "VARCHAR",
        "n_tiles_qc_dropped": "INTEGER",
    },
    "survival": {
        "cohort": "VARCHAR",
        "traits": "VARCHAR",
        "grouping": "VARCHAR",
        "n_low": "INTEGER",
        "n_high": "INTEGER",
        "logrank_p": "DOUBLE",
        "test_statistic": "DOUBLE",
        "method": "VARCHAR",
        "hazard_ratio": "DOUBLE",
        "hr_ci_low": "DOUBLE",
        "hr_ci_high": "DOUBLE",
        "p_value": "DOUBLE",
        "n_patients": "INTEGER",
        "c_index": "DOUBLE",
        "status": "VARCHAR",
        "reason": "VARCHAR",
    },
    "hti_stats": {
        "cohort": "VARCHAR",
        "traits": "VARCHAR",
        "slide_id": "VARCHAR",
        "patient_id": "VARCHAR",
        "hti": "DOUBLE",
        "ci_low": "DOUBLE",
        "ci_high": "DOUBLE",
        "hti_robust": "DOUBLE",
        "p_spatial": "DOUBLE",
        "hta": "DOUBLE",
        "hta_random": "DOUBLE",
        "hti_present": "DOUBLE",
        "n_combinations": "INTEGER",
        "region_side": "INTEGER",
        "n_tiles": "INTEGER",
    },
    "trait_validity": {
        "cohort": "VARCHAR",
        "trait": "VARCHAR",
        "feeds": "BOOLEAN",
        "held_out": "VARCHAR",
        "reason": "VARCHAR",
        "valid": "BOOLEAN",
        "auc": "DOUBLE",
        "ci_low": "DOUBLE",
        "ci_high": "DOUBLE",
        "confidence": "DOUBLE",
        "min_auc": "DOUBLE",
        "n_slides": "INTEGER",
        "n_patients": "INTEGER",
        "n_high": "INTEGER",
        "n_low": "INTEGER",
        "n_rounds": "INTEGER",
        "n_sites": "INTEGER",
        "auc_unseen_sites": "DOUBLE",
        "unseen_ci_low": "DOUBLE",
        "unseen_ci_high": "DOUBLE",
        "n_unseen_slides": "INTEGER",
        "auc_ood_near": "DOUBLE",
        "ood_near_ci_low": "DOUBLE",
        "ood_near_ci_high": "DOUBLE",
        "n_ood_near_slides": "INTEGER",
        "ci_method": "VARCHAR",
        "site_p_value": "DOUBLE",
    },
    "site_effects": {
        "cohort": "VARCHAR",
        "trait": "VARCHAR",
        "test": "VARCHAR",
        "statistic": "DOUBLE",
        "p_value": "DOUBLE",
        "cramers_v": "DOUBLE",
        "site_dependent": "BOOLEAN",
        "n_patients": "INTEGER",
        "n_sites": "INTEGER",
        "auc_seen_sites": "DOUBLE",
        "n_seen_slides": "INTEGER",
        "auc_unseen_sites": "DOUBLE",
        "n_unseen_slides": "INTEGER",
        "site_from_scores_bacc": "DOUBLE",
        "site_from_scores_chance": "DOUBLE",
        "site_from_scores_p": "DOUBLE",
        "n_scored_slides": "INTEGER",
        "site_from_stain_bacc": "DOUBLE",
        "site_from_stain_chance": "DOUBLE",
        "site_from_stain_p": "DOUBLE",
        "alpha": "DOUBLE",
        "note": "VARCHAR",
    },
    "hti_combinations": {
        "cohort": "VARCHAR",
        "traits": "VARCHAR",
        "slide_id": "VARCHAR",
        "patient_id": "VARCHAR",
        "combination": "VARCHAR",
        "share": "DOUBLE",
        "n_tiles": "INTEGER",
        "tissue_share": "DOUBLE",
        "share_robust": "DOUBLE",
    },
}

_PANDAS_TYPES = {
    "VARCHAR": "string",
    "INTEGER": "Int32",
    "BIGINT": "Int64",
    "DOUBLE": "float64",
    "BOOLEAN": "boolean",
}


def read_parquet(path, **kwargs) -> pd.DataFrame:
    import pandas as pd

    with as_path(path).open("rb") as fh:
        return pd.read_parquet(fh, **kwargs)


# --------------------------------------------------------------------------- tables
def sql_string(text: str) -> str:
    """``text`` as a SQL string literal (quotes doubled): paths are never pasted raw into SQL."""
    return "'" + str(text).replace("'", "''") + "'"


#: DuckDB errors of a Parquet file renamed over while a query read it (measured 2026-12-04, DuckDB 2.0.1, 300
#: partition files, one replaced 40 times a second: 128 of 129 reads failed with one of these).  With
#: ``union_by_name`` a query reads every file's footer when it binds and opens each file again to scan it, with
#: the footer read at bind: a file replaced in between is scanned at the old footer's offsets.
REPLACED_DURING_READ = (
    "TProtocolException",
    "Out of buffer",
    "don't know what type",
    "invalid TType",
    "Prefetch registered for bytes outside file",
    "Could not read enough bytes",
    "No magic bytes found",
    "Negative size",
)


def replaced_during_read(err: BaseException) -> bool:
    """``err`` is a DuckDB error of a Parquet file replaced during the read (``REPLACED_DURING_READ``)."""
    text = str(err)
    return any(sign in text for sign in REPLACED_DURING_READ)


def glob_escape(path: str) -> str:
    """``path`` with glob characters matched literally (``[`` -> ``[[]``), for DuckDB and fsspec globs."""
    return "".join(f"[{ch}]" if ch in "[*?" else ch for ch in path)


#: recent local table reads of this process, by folder state and query (``TableStore.read``)
_READS: OrderedDict[tuple, pd.DataFrame] = OrderedDict()
_READS_MAX = 32


class TableStore:
    """Per-partition Parquet files under ``tables_dir``, seen as DuckDB views at ``duckdb_path``.

    Materializations never need the DuckDB file: they write Parquet files, and the views read the
    tables' globs, so new partitions appear in every open connection at its next query.  The file
    is (re)written only when the set of tables, their schemas or ``tables_dir`` change, and then
    as a new file renamed over the old one: readers holding it open keep the old views until they
    reconnect, nobody waits for a lock, and the pipeline never fails because someone is reading.
    Connect read-only (``duckdb.connect(path, read_only=True)``, ``duckdb -readonly path``);
    ``query`` uses an in-memory connection with the same views and never opens the file.
    """

    def __init__(self, tables_dir, duckdb_path: str | Path):
        self.tables_dir = as_path(tables_dir)
        self.duckdb_path = Path(duckdb_path)

    def _connect(self, database: str = ":memory:", read_only: bool = False) -> duckdb.DuckDBPyConnection:
        import duckdb

        con = duckdb.connect(database, read_only=read_only)
        if is_remote(self.tables_dir):
            con.register_filesystem(self.tables_dir.fs)  # read_parquet('s3://...') through fsspec
        return con

    def _dir(self, table: str) -> Path:
        if table not in SCHEMAS:
            raise KeyError(f"unknown table {table!r}; known: {sorted(SCHEMAS)}")
        return self.tables_dir / table

    def _glob(self, table: str) -> str:
        """The table's files as an escaped SQL literal (any ``'``, ``[``, ``*`` in the folder is literal)."""
        return sql_string(glob_escape(str(self._dir(table))) + "/*.parquet")

    def _view_sql(self, table: str, temporary: bool = False) -> str:
        return (
            f"CREATE OR REPLACE {'TEMP ' if temporary else ''}VIEW {table} AS SELECT * FROM "
            f"read_parquet({self._glob(table)}, union_by_name=true)"
        )

    def conform(self, table: str, df: pd.DataFrame) -> pd.DataFrame:
        """Order and type ``df``'s columns as the table's schema; missing required ones raise."""
        schema = SCHEMAS[table]
        required = list(schema)[: _REQUIRED[table]]
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise ValueError(f"table {table}: missing columns {missing}")
        import pandas as pd

        columns = {}
        for col, typ in schema.items():
            values = df[col] if col in df.columns else pd.Series(pd.NA, index=df.index, dtype="object")
            if typ == "VARCHAR":
                columns[col] = values.astype("string")
            elif typ == "BOOLEAN":
                columns[col] = values.astype("object").where(values.notna(), None).astype("boolean")
            else:
                columns[col] = pd.to_numeric(values, errors="coerce").astype(_PANDAS_TYPES[typ])
        return pd.DataFrame(columns, index=df.index).reset_index(drop=True)  # one frame, not a column at a time

    def write(self, table: str, partition_key: str, df: pd.DataFrame) -> Path:
        """Replace the rows of ``partition_key`` in ``table`` with ``df`` (atomically)."""
        self.ensure_schema_file(table)
        path = self._dir(table) / f"{partition_filename(partition_key)}.parquet"
        data = self.conform(table, df)
        with atomic_path(path) as tmp:
            data.to_parquet(tmp, index=False)
        self._forget(table)
        return path

    def delete(self, table: str, partition_key: str) -> None:
        (self._dir(table) / f"{partition_filename(partition_key)}.parquet").unlink(missing_ok=True)
        self._forget(table)

    def _forget(self, table: str) -> None:
        """Drop this process's cached reads of ``table`` (a write within the folder's mtime resolution)."""
        folder = str(self._dir(table))
        for key in [k for k in _READS if k[0] == folder]:
            del _READS[key]

    def ensure_schema_file(self, table: str) -> None:
        """An empty file with the schema, so a table with no partitions yet still reads."""
        path = self._dir(table) / "_schema.parquet"
        if not path.exists():
            with atomic_path(path) as tmp:
                import pandas as pd

                self.conform(table, pd.DataFrame(columns=list(SCHEMAS[table]))).to_parquet(tmp, index=False)

    def read(
        self, table: str, where: str | None = None, params: list | None = None, partitions: list[str] | None = None
    ) -> pd.DataFrame:
        """Rows of ``table`` (optionally filtered by a SQL ``where`` clause with ``?`` params).

        With ``partitions`` (partition keys, e.g. ``cohort/slide_id`` of a per-slide table), only those
        partitions' files are opened: a one-slide run reads one file, whatever the number of slides
        (``docs/scale-out.md``).  The ``where`` clause still applies; a partition without a file has no rows.

        A local table's reads are cached in the process until its folder changes (every write renames
        a file into it, which moves the folder's mtime): per-slide tables are hundreds of files, and
        one run reads the same ones several times.
        """
        self.ensure_schema_file(table)
        if partitions is not None:
            files = [self._dir(table) / f"{partition_filename(k)}.parquet" for k in dict.fromkeys(partitions)]
            return self._read_files(table, [f for f in files if f.exists()], where, params)
        sql = f"SELECT * FROM read_parquet({self._glob(table)}, union_by_name=true)"
        if where:
            sql += f" WHERE {where}"
        key = None
        if not is_remote(self.tables_dir):
            st = os.stat(self._dir(table))
            key = (str(self._dir(table)), st.st_mtime_ns, st.st_ino, sql, tuple(params or ()))
            if key in _READS:
                _READS.move_to_end(key)
                return _READS[key].copy()
        df = self._read_consistent(table, sql, params)
        if key is not None:
            _READS[key] = df.copy()
            while len(_READS) > _READS_MAX:
                _READS.popitem(last=False)
        return df

    def _read_files(self, table: str, files: list, where: str | None, params: list | None) -> pd.DataFrame:
        """Rows of ``files`` (partition files of ``table``), read with the table's empty schema file so that
        columns and types are those of a whole-table read; a file replaced while it was read is read again
        (each file is whole: it was renamed into place)."""
        import duckdb

        files = [self._dir(table) / "_schema.parquet", *files]
        listed = ", ".join(sql_string(glob_escape(str(f))) for f in files)
        sql = f"SELECT * FROM read_parquet([{listed}], union_by_name=true)" + (f" WHERE {where}" if where else "")
        for attempt in range(3):
            try:
                with self._connect() as con:
                    return con.execute(sql, params or []).df()
            except duckdb.Error as err:
                if attempt == 2 or not replaced_during_read(err):
                    raise
        raise AssertionError("unreachable")

    def _read_consistent(self, table: str, sql: str, params: list | None) -> pd.DataFrame:
        """Run ``sql`` (a read of ``table``'s glob); when a partition file was replaced during the read
        (:func:`replaced_during_read`), read again from a snapshot of the table's files (hard links: each
        name keeps the content it had, whatever is renamed over the original meanwhile)."""
        import duckdb

        try:
            with self._connect() as con:
                return con.execute(sql, params or []).df()
        except duckdb.Error as err:
            if not replaced_during_read(err):
                raise
        if is_remote(self.tables_dir):  # object storage: no hard links; the replaced object is read again
            with self._connect() as con:
                return con.execute(sql, params or []).df()
        snapshots = self.tables_dir / ".snapshots"
        snapshots.mkdir(exist_ok=True)
        snap = Path(tempfile.mkdtemp(prefix=f"{table}.", dir=snapshots))
        try:
            for f in os.scandir(self._dir(table)):
                if f.name.endswith(".parquet") and not f.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):  # deleted since listed: not in the table now
                        os.link(f.path, snap / f.name)
            with self._connect() as con:
                return con.execute(sql.replace(self._glob(table), sql_string(glob_escape(str(snap)) + "/*.parquet")),
                                   params or []).df()  # fmt: skip
        finally:
            shutil.rmtree(snap, ignore_errors=True)

    def views_signature(self) -> str:
        """What the DuckDB file's views depend on: the tables, their schemas and the folder."""
        text = json.dumps({"tables_dir": str(self.tables_dir), "schemas": SCHEMAS}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def _stamp(self) -> Path:
        return self.duckdb_path.with_name(self.duckdb_path.name + ".views")

    def ensure_views(self) -> bool:
        """Write the DuckDB file with one view per table, unless it is already up to date.

        Returns whether it was written.  Never opens the existing file: a new one is built beside
        it and renamed over it, so a reader holding the old file (even read-write, e.g. the DuckDB
        CLI without ``-readonly``) neither blocks this nor is blocked by it.
        """
        signature = self.views_signature()
        current = [signature, self._file_identity()]  # the file as this stamp wrote it, unchanged since
        if self.duckdb_path.is_file() and self._stamp.is_file() and self._stamp.read_text().split() == current:
            return False
        if self.duckdb_path.is_dir():
            raise IsADirectoryError(
                f"duckdb_path {self.duckdb_path} is a directory; set duckdb_path to a file name "
                f"such as {self.duckdb_path / 'pathomch.duckdb'}"
            )
        for table in SCHEMAS:
            self.ensure_schema_file(table)
        self.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.duckdb_path.name}.", suffix=".tmp", dir=self.duckdb_path.parent)
        os.close(fd)
        os.unlink(tmp)  # DuckDB creates the file itself
        try:
            with self._connect(tmp) as con:
                for table in SCHEMAS:
                    con.execute(self._view_sql(table))
            os.replace(tmp, self.duckdb_path)
            with atomic_path(self._stamp) as stamp_tmp:
                stamp_tmp.write_text(f"{signature}\n{self._file_identity()}\n")
        finally:
            for leftover in (tmp, tmp + ".wal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
        return True

    def _file_identity(self) -> str:
        """The views file as it was written (size, mtime, inode): anything that changed it since, a ``DROP VIEW``
        through an ``ATTACH`` included (or a write-ahead log beside it), makes :meth:`ensure_views` write it
        again, so views repair themselves without the file ever being opened to check them."""
        try:
            st = os.stat(self.duckdb_path)
        except OSError:
            return "absent"
        wal = os.path.exists(f"{self.duckdb_path}.wal")
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}{':wal' if wal else ''}"

    def connect(self, sandboxed: bool = False) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the tables as views (no file, no lock, nothing written).

        ``sandboxed``: then nothing outside ``tables_dir`` can be read or written (DuckDB's
        ``enable_external_access = false`` with ``allowed_directories``; no ``read_csv('/etc/passwd')``,
        ``COPY ... TO``, ``ATTACH``, ``INSTALL``), and the configuration is locked so no statement lifts it.
        On object storage the views need the registered filesystem: there only :func:`read_only_problem` guards.
        """
        con = self._connect()
        for table, schema in SCHEMAS.items():
            if (self._dir(table) / "_schema.parquet").exists():
                con.execute(self._view_sql(table, temporary=True))
            else:  # nothing materialized yet: an empty view of the right columns
                cols = ", ".join(f"CAST(NULL AS {typ}) AS {col}" for col, typ in schema.items())
                con.execute(f"CREATE TEMP VIEW {table} AS SELECT {cols} WHERE false")
        if sandboxed and not is_remote(self.tables_dir):
            con.execute(f"SET allowed_directories = [{sql_string(str(self.tables_dir) + os.sep)}]")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        return con

    def query(self, sql: str, params: list | None = None, read_only: bool = False) -> pd.DataFrame:
        """Run SQL against the tables; never opens (or locks) the DuckDB file.

        ``read_only``: a user's query (``pathomch sql``): only statements that read (:func:`read_only_problem`)
        on a :meth:`connect` ``sandboxed`` connection; anything else raises :class:`ReadOnlyError`.
        """
        for attempt in range(3):
            with self.connect(sandboxed=read_only) as con:
                if read_only and (problem := read_only_problem(con, sql)):
                    raise ReadOnlyError(problem)
                try:
                    return con.execute(sql, params or []).df()
                except Exception as err:  # a partition replaced while it was read: read again
                    if attempt == 2 or not replaced_during_read(err):
                        raise
        raise AssertionError("unreachable")


class ReadOnlyError(PermissionError):
    """A statement that would write, refused by a read-only query."""


#: statement kinds a read-only query may run (PIVOT is a MULTI statement; PRAGMA and CALL run with external
#: access off and the configuration locked)
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN", "MULTI", "PRAGMA", "CALL")


def read_only_problem(con, sql: str) -> str | None:
    """Why ``sql`` is not a read-only query (its first statement that would write or reach outside), or None.
    Raises ``duckdb.Error`` for SQL that does not parse."""
    for statement in con.extract_statements(sql):
        kind = statement.type.name
        if kind not in READ_ONLY_STATEMENTS:
            first = " ".join(str(statement.query).split())[:60]
            return f"{kind} statement refused ({first!r}): queries are read-only; pass --write to run it"
    return None


#: how many leading columns of each schema are the SPEC 5 contract (required on write)
_REQUIRED = {
    "slides": 6,
    "tiles": 5,
    "stain": 4,
    "labels": 6,
    "splits": 4,
    "expression": 4,
    "clinical": 4,
    "slide_scores": 5,
    "model_metrics": 6,
    "correlations": 6,
    "hti": 6,
    "survival": 6,
    "model_rounds": 5,
    "split_counts": 8,
    "hti_stats": 8,
    "hti_combinations": 7,
    "trait_validity": 5,
    "site_effects": 7,
}
