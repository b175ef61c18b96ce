"""A canonical digest of the demo's results, and the readable difference between two digests.

``python -m pathomch_assets_tests.demo_digest`` compares the demo in ``data/output`` with the stored digest
(``fixtures/demo_digest.json``); ``--write`` stores the digest of the demo there (after a change meant to change
results, with the reason in the commit).  ``test_demo_results.py`` runs the comparison after ``make demo``.

What is digested:

- every results table (``tables.SCHEMAS``, the Parquet files under the config's ``tables_dir``): its columns, row
  count, a hash per column, a per-column summary (min, mean, max), and either its rows themselves (at most
  ``FULL_ROWS`` rows) or a hash per group of rows (``KEYS``/``GROUPS``: a slide, a model).  Rows are sorted,
  floats rounded to ``SIGNIFICANT`` significant digits, and the run-specific columns of ``RUN_SPECIFIC`` left out;
- the training histories the training curves draw (``models/<cohort>/<trait>/<round>/history.csv``);
- the figures: which PNG files exist (run ids in names replaced by ``<run id>``), their pixel size, and for each
  kind of figure (``FIGURE_DATA``) the hash of the data it draws.  Pixels are not compared: a new matplotlib or
  FreeType moves antialiased text by a pixel, and the figure's content is its data; the size (compared within
  ``SIZE_TOLERANCE``) catches a panel added or lost;
- the machine ``signature`` of what decides how training rounds (CPU features, CPU count, the libraries that
  train, the variables that steer oneDNN), and which tables depend on training (``training_derived``).

Two digests of the same ``signature`` are compared exactly.  Between two signatures the tables written before a
model exists are still compared exactly, and the training-derived ones (``TRAINING_ASSET`` and the assets
downstream of it in the asset graph) by structure and within ``MEAN_TOLERANCE``/``AUC_TOLERANCE``
(:func:`compare`; the reasons are in ``docs/demo-digest.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import struct
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from pathomch_assets.config import DEMO_CONFIG, load_config
from pathomch_assets.tables import SCHEMAS

STORED = Path(__file__).resolve().parent / "fixtures" / "demo_digest.json"

#: significant digits floats are compared at.  Two demo runs on one machine agree to the last bit (measured
#: 2026-12-05, docs/demo-digest.md); six digits leave room for another BLAS or CPU rounding the last bits
#: differently while any change of a result (an AUC, a p-value, an HTI) still shows.
SIGNIFICANT = 6

#: a table of at most this many rows is stored whole, so a difference names the rows and values
FULL_ROWS = 250

#: a figure's width and height may differ by this share (text extents of another matplotlib/FreeType)
SIZE_TOLERANCE = 0.1

#: columns that differ between two runs of the same code on the same inputs, and why (measured 2026-12-05: the
#: only ones; absolute paths in strings are compared with the checkout's folder replaced by ``<root>``)
RUN_SPECIFIC: dict[str, dict[str, str]] = {
    "slides": {
        "seconds": "wall-clock time to tile the slide",
        "file_mtime_ns": "modification time of the slide file, set when `pathomch demo` wrote it",
    },
}

#: each table's row identity (rows of the tables stored whole are matched on it); all but its last column name a
#: group of rows, unless ``GROUPS`` says otherwise
KEYS: dict[str, tuple[str, ...]] = {
    "slides": ("cohort", "slide_id"),
    "tiles": ("cohort", "slide_id", "col", "row"),
    "stain": ("cohort", "slide_id"),
    "labels": ("cohort", "trait", "patient_id"),
    "splits": ("cohort", "round", "patient_id"),
    "expression": ("cohort", "trait", "patient_id"),
    "clinical": ("cohort", "patient_id"),
    "slide_scores": ("cohort", "trait", "model", "slide_id"),
    "model_metrics": ("cohort", "trait", "model", "eval_set"),
    "model_rounds": ("cohort", "trait", "model"),
    "split_counts": ("cohort", "round", "split", "subset", "trait", "label"),
    "correlations": ("cohort", "trait", "eval_set"),
    "hti": ("cohort", "traits", "slide_id"),
    "survival": ("cohort", "traits", "grouping"),
    "hti_stats": ("cohort", "traits", "slide_id"),
    "trait_validity": ("cohort", "trait"),
    "site_effects": ("cohort", "trait"),
    "hti_combinations": ("cohort", "traits", "slide_id", "combination"),
}
#: group columns where a group is not the row key less its last column (one row per slide: group by slide)
GROUPS: dict[str, tuple[str, ...]] = {
    "slides": ("cohort", "slide_id"),
    "tiles": ("cohort", "slide_id"),
    "stain": ("cohort", "slide_id"),
    "clinical": ("cohort",),
    "hti": ("cohort", "traits", "slide_id"),
    "hti_stats": ("cohort", "traits", "slide_id"),
    "hti_combinations": ("cohort", "traits", "slide_id"),
}

#: the data each kind of figure draws (tables, or ``histories``), by the figure's path pattern (``layout.py``)
FIGURE_DATA: dict[str, tuple[str, ...]] = {
    "cartography/*/*.png": ("hti_combinations", "hti"),
    "figures/heterogeneity_maps/<run id>.png": ("hti_combinations", "hti"),
    "figures/training_curves/*/*/*.png": ("histories",),
    "figures/*_figure_2_scores.png": ("slide_scores", "labels", "splits"),
    "figures/*_trait_validity.png": ("trait_validity",),
    "figures/*_label_share_by_site.png": ("labels", "splits", "site_effects"),
    "survival/*_kaplan_meier.png": ("hti", "clinical", "survival"),
    "survival/*_hti_by_expression.png": ("hti", "expression"),
    "survival/*_hti_by_clinical.png": ("hti", "clinical"),
}

#: the asset(s) writing each table: ``store.write`` in the asset's module or in the plain module it calls
#: (``ingest.py`` for ``slide_tiles``); with the asset graph this says which tables depend on training
WRITTEN_BY: dict[str, tuple[str, ...]] = {
    "slides": ("slide_tiles",),
    "tiles": ("slide_tiles",),
    "stain": ("slide_tiles",),
    "expression": ("expression",),
    "labels": ("labels",),
    "splits": ("splits",),
    "split_counts": ("splits",),
    "clinical": ("clinical",),
    "model_rounds": ("trait_model",),
    "model_metrics": ("trait_model", "ensemble"),
    "slide_scores": ("trait_model", "slide_predictions"),
    "correlations": ("model_evaluation",),
    "trait_validity": ("trait_validity",),
    "site_effects": ("site_effects",),
    "hti": ("slide_cartography",),
    "hti_stats": ("slide_cartography",),
    "hti_combinations": ("slide_cartography",),
    "survival": ("survival_analysis",),
}

#: the asset that trains: it and every asset downstream of it compute from a trained model's weights
TRAINING_ASSET = "trait_model"

#: CPU features (``/proc/cpuinfo`` flags on x86, Features on arm) that choose another kernel, so another order of
#: float sums, in a library that trains: oneDNN in TensorFlow dispatches on avx/avx2+fma (``avx2``), avx_vnni and
#: avx_ne_convert (``avx2_vnni*``), avx512f/cd/bw/dq/vl (``avx512_core``), avx512_vnni, avx512_bf16, avx512_fp16 and
#: amx_* (``avx512_core_amx*``), sve on arm; numpy's SIMD loops and OpenBLAS's kernels add sse4_x, f16c,
#: avx512ifma/vbmi/vbmi2/bitalg/vpopcntdq (numpy's AVX512_ICL target).  Features that do no float arithmetic (aes,
#: sha_ni, rdrand, ...) are left out: they change no result.
NUMERIC_FLAGS = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx_ne_convert",
    "avx512f",
    "avx512cd",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_bitalg",
    "avx512_vpopcntdq",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "asimd",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
)

#: libraries that train (TensorFlow with its oneDNN and Eigen, Keras, numpy feeding the batches): another version
#: may round training differently, which training amplifies
TRAINING_LIBRARIES = ("tensorflow-cpu", "tensorflow", "keras", "numpy", "ml-dtypes")

#: environment variables that change how TensorFlow computes on a CPU (oneDNN on/off, its ISA, its float math mode,
#: thread counts); recorded when set
NUMERIC_ENV = (
    "TF_ENABLE_ONEDNN_OPTS",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_DEFAULT_FPMATH_MODE",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_NUM_THREADS",
)

#: libraries whose version can change results; recorded so a difference can be read against them
LIBRARIES = (
    "tensorflow-cpu",
    "tensorflow",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "lifelines",
    "matplotlib",
    "dagster",
)

#: between two signatures, how far the mean of a numeric column of a training-derived table may move:
#: ``|new - old| <= MEAN_TOLERANCE * max(|old|, MEAN_SCALE)`` (``MEAN_SCALE`` keeps a mean near 0 from asking
#: for digits it does not have).  Measured and argued in docs/demo-digest.md.
MEAN_TOLERANCE = 0.1
MEAN_SCALE = 0.1

#: between two signatures, how far each AUC of a table stored whole may move (absolute; an AUC is in [0, 1])
AUC_TOLERANCE = 0.1

#: columns whose mean is not compared between two signatures: p-values span orders of magnitude (1e-53 to 0.9)
#: and a small one is an event, not an amount; their structure (finite where finite) still is
NO_MEAN = ("p_value", "fdr", "logrank_p", "site_from_scores_p", "site_from_stain_p", "p_spatial")

_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# --------------------------------------------------------------------------- canonical values
def canonical(value):
    """``value`` as a JSON value: floats at ``SIGNIFICANT`` digits, NaN/NA as ``None``, numpy scalars unwrapped."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        rounded = float(f"{value:.{SIGNIFICANT}g}")
        return 0.0 if rounded == 0 else rounded  # -0.0 and 0.0 are one value
    return str(value)


def _hash(rows: list[str], length: int = 12) -> str:
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:length]


def _row(values) -> str:
    return json.dumps([canonical(v) for v in values], separators=(",", ":"))


def read_table(tables_dir: Path, table: str) -> pd.DataFrame:
    """Every partition file of ``table`` (not the empty ``_schema`` file), in one frame."""
    files = sorted(p for p in (tables_dir / table).glob("*.parquet") if p.name != "_schema.parquet")
    frames = [pd.read_parquet(p) for p in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(SCHEMAS[table]))
    return pd.concat(frames, ignore_index=True)


def table_digest(df: pd.DataFrame, table: str, root: str | None = None) -> dict:
    """The digest of one table (see the module docstring); ``root`` in strings is replaced by ``<root>``."""
    drop = [c for c in RUN_SPECIFIC.get(table, {}) if c in df.columns]
    df = df.drop(columns=drop)
    columns = list(df.columns)
    if root:
        for c in columns:
            if df[c].dtype == object or str(df[c].dtype) == "string":
                df[c] = df[c].map(lambda v: v.replace(root, "<root>") if isinstance(v, str) else v)
    keys = [k for k in KEYS.get(table, ()) if k in columns]
    group = [g for g in GROUPS.get(table, tuple(keys[:-1]) or tuple(keys)) if g in columns]
    rows = [_row(r) for r in df.itertuples(index=False, name=None)]
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    groups: dict[str, list[str]] = {}
    for i in order:
        name = "/".join(str(canonical(df[g].iat[i])) for g in group) or "all"
        groups.setdefault(name, []).append(rows[i])
    summary, finite = {}, {}
    for c in columns:
        if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
            values = pd.to_numeric(df[c], errors="coerce").astype(float)
            values = values[values.notna() & ~values.isin([math.inf, -math.inf])]
            finite[c] = len(values)
            if len(values):
                summary[c] = [canonical(values.min()), canonical(values.mean()), canonical(values.max())]
    out = {
        "columns": columns,
        "keys": keys,
        "n_rows": len(rows),
        "rows_hash": _hash([rows[i] for i in order]),
        "column_hashes": {c: _hash([json.dumps(canonical(df[c].iat[i])) for i in order]) for c in columns},
        "summary": summary,
        "finite": finite,
    }
    if len(rows) <= FULL_ROWS:
        out["rows"] = [json.loads(rows[i]) for i in order]
    else:  # 8 hex digits tell a group from its other versions; the rows hash checks the whole table
        out["group_by"] = group
        out["groups"] = {name: _hash(members, 8) for name, members in sorted(groups.items())}
    return out


# --------------------------------------------------------------------------- figures
def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header (no decoding, no image library)."""
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def figure_name(rel: str) -> str:
    """``rel`` with a run id replaced by ``<run id>`` (the maps gallery is named after the run that drew it)."""
    return _RUN_ID.sub("<run id>", rel)


def figure_kind(name: str) -> str | None:
    """The ``FIGURE_DATA`` pattern ``name`` matches (``*`` matches within one path part), or None."""
    for pattern in FIGURE_DATA:
        regex = "/".join(".*".join(re.escape(s) for s in part.split("*")) for part in pattern.split("/"))
        if re.fullmatch(regex.replace(".*", "[^/]*"), name):
            return pattern
    return None


def figures(data_dir: Path) -> dict[str, list[int]]:
    """Every PNG under ``data_dir`` (the Dagster instance aside), by normalised path, with its pixel size."""
    out: dict[str, list[int]] = {}
    for path in sorted(data_dir.rglob("*.png")):
        rel = path.relative_to(data_dir).as_posix()
        if rel.startswith("dagster_home/"):
            continue
        name = figure_name(rel)
        if name not in out:  # each run of slide_cartography draws a gallery: the first stands for them
            out[name] = list(png_size(path))
    return out


def histories(data_dir: Path) -> dict[str, str]:
    """The hash of each model's training history (what its training curve draws)."""
    out = {}
    for path in sorted((data_dir / "models").glob("*/*/*/history.csv")):
        df = pd.read_csv(path)
        rows = [",".join(df.columns)] + [_row(r) for r in df.itertuples(index=False, name=None)]
        out[path.relative_to(data_dir).as_posix()] = _hash(rows)
    return out


# --------------------------------------------------------------------------- what training depends on
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, str]:
    """The CPU's model name and its ``NUMERIC_FLAGS``, space-separated (empty where ``cpuinfo`` is missing)."""
    model, flags = "", set()
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor(), ""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in ("flags", "features") and not flags:
            flags = set(value.split())
        elif name == "model name" and not model:
            model = value.strip()
    return model, " ".join(f for f in NUMERIC_FLAGS if f in flags)


def signature() -> dict:
    """What decides how training rounds on this machine: two demos of one signature agree bit for bit.

    ``cpu_flags`` (``NUMERIC_FLAGS``) choose oneDNN's, numpy's and OpenBLAS's kernels; ``cpu_model`` too (oneDNN
    sizes its blocks, so the order of its sums, from the caches; OpenBLAS picks its kernel by model); ``cpus``
    splits TensorFlow's sums over threads (measured 2026-12-05: 1 and 2 threads train other weights);
    ``libraries`` (``TRAINING_LIBRARIES``) and ``env`` (``NUMERIC_ENV``) are the code that trains.  Read where the
    digest is made: the demo ran on this machine (``make demo`` then ``make test``, as CI does).
    """
    model, flags = cpu_flags()
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return {
        "machine": platform.machine(),
        "cpu_model": model,
        "cpu_flags": flags,
        "cpus": cpus,
        "libraries": {lib: _version(lib) for lib in TRAINING_LIBRARIES},
        "env": {k: os.environ[k] for k in NUMERIC_ENV if k in os.environ},
    }


def training_derived() -> list[str]:
    """The tables ``TRAINING_ASSET`` or an asset downstream of it in the demo's asset graph writes (``WRITTEN_BY``;
    assets by name, in any cohort)."""
    import dagster as dg

    from pathomch_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    assets = {k.path[-1] for k in keys}  # an asset's name: its key is ``<cohort>/<name>``, one per cohort
    unknown = {a for names in WRITTEN_BY.values() for a in names} - assets
    missing = set(SCHEMAS) - set(WRITTEN_BY)
    if unknown or missing:
        raise ValueError(
            f"demo_digest.WRITTEN_BY: tables {sorted(missing)} have no writer, assets {sorted(unknown)} are not in "
            "the definitions; say which asset writes each table of tables.SCHEMAS"
        )
    training = [k for k in keys if k.path[-1] == TRAINING_ASSET]
    trained = {k.path[-1] for k in dg.AssetSelection.assets(*training).downstream().resolve(graph)}
    return sorted(t for t, names in WRITTEN_BY.items() if set(names) & trained)


# --------------------------------------------------------------------------- the digest
def digest(cfg=None) -> dict:
    """The digest of the results of ``cfg`` (the demo's configuration by default)."""
    cfg = cfg or load_config(DEMO_CONFIG, check_files=False)
    data_dir, tables_dir = Path(cfg.data_dir), Path(cfg.tables_dir)
    root = str(data_dir.resolve().parent.parent)  # the checkout holding data/output: paths name it
    tables = {t: table_digest(read_table(tables_dir, t), t, root) for t in sorted(SCHEMAS)}
    hist = histories(data_dir)
    figs = figures(data_dir)
    sources = {**{t: d["rows_hash"] for t, d in tables.items()}, "histories": _hash(sorted(hist.values()))}
    return {
        "about": "python -m pathomch_assets_tests.demo_digest --write; see its docstring",
        "significant_digits": SIGNIFICANT,
        "run_specific_columns": RUN_SPECIFIC,
        "versions": {lib: _version(lib) for lib in LIBRARIES},
        "signature": signature(),
        "training_derived": training_derived(),
        "tables": tables,
        "histories": hist,
        "figures": figs,
        "figure_data": {
            kind: {"draws": list(data), "hash": _hash([f"{d}:{sources[d]}" for d in data])}
            for kind, data in FIGURE_DATA.items()
        },
    }


def _version(lib: str) -> str | None:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- differences
def _how_much(a, b) -> str:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        delta = b - a
        rel = f", {delta / abs(a):+.2%}" if a else ""
        return f"{a} -> {b} ({delta:+.6g}{rel})"
    return f"{a!r} -> {b!r}"


def table_differences(table: str, old: dict, new: dict, limit: int = 10) -> list[str]:
    """Readable lines saying how ``new`` differs from ``old`` (two ``table_digest`` results)."""
    if old["rows_hash"] == new["rows_hash"] and old["columns"] == new["columns"]:
        return []
    out = [f"table {table}:"]
    if old["columns"] != new["columns"]:
        gone = [c for c in old["columns"] if c not in new["columns"]]
        added = [c for c in new["columns"] if c not in old["columns"]]
        out.append(f"  columns: removed {gone}, added {added}" if gone or added else "  columns reordered")
    if old["n_rows"] != new["n_rows"]:
        out.append(f"  rows: {old['n_rows']} -> {new['n_rows']}")
    changed = [c for c in old["columns"] if c in new["columns"] and old["column_hashes"][c] != new["column_hashes"][c]]
    if changed:
        out.append(f"  columns with other values: {changed}")
    for c in changed:
        if c in old["summary"] and c in new["summary"] and old["summary"][c] != new["summary"][c]:
            out.append(f"    {c} min/mean/max: {old['summary'][c]} -> {new['summary'][c]}")
    if "rows" in old and "rows" in new:
        out += _row_differences(old, new, limit)
    else:
        og, ng = old["groups"], new["groups"]
        differ = sorted(k for k in og.keys() | ng.keys() if og.get(k) != ng.get(k))
        label = "/".join(new["group_by"]) or "all"
        shown = ", ".join(differ[:limit]) + (f" (and {len(differ) - limit} more)" if len(differ) > limit else "")
        out.append(f"  {len(differ)} of {len(og)} groups ({label}) differ: {shown}")
    return out


def _row_differences(old: dict, new: dict, limit: int) -> list[str]:
    oc, nc = old["columns"], new["columns"]
    keys = [k for k in new["keys"] if k in oc]

    def by_key(rows, cols):
        return {tuple(r[cols.index(k)] for k in keys): dict(zip(cols, r)) for r in rows}

    o, n = by_key(old["rows"], oc), by_key(new["rows"], nc)
    out = []
    for key in sorted(o.keys() - n.keys(), key=str)[:limit]:
        out.append(f"  row {'/'.join(map(str, key))}: gone")
    for key in sorted(n.keys() - o.keys(), key=str)[:limit]:
        out.append(f"  row {'/'.join(map(str, key))}: new")
    shown = 0
    for key in sorted(o.keys() & n.keys(), key=str):
        diffs = [f"{c} {_how_much(o[key][c], n[key].get(c))}" for c in oc if c in nc and o[key][c] != n[key][c]]
        if diffs and shown < limit:
            out.append(f"  row {'/'.join(map(str, key))}: " + "; ".join(diffs))
            shown += 1
        elif diffs:
            shown += 1
    if shown > limit:
        out.append(f"  (and {shown - limit} more rows)")
    return out


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_auc(column: str) -> bool:
    return column.startswith("auc")


def tolerant_table_differences(table: str, old: dict, new: dict, limit: int = 10) -> list[str]:
    """How ``new`` differs from ``old`` beyond what another machine's rounding of training explains: other columns,
    rows (keys) or groups, a value finite in one and not the other, an AUC beyond ``AUC_TOLERANCE``, a column mean
    beyond ``MEAN_TOLERANCE`` (p-values, ``NO_MEAN``, aside)."""
    out = []
    if old["columns"] != new["columns"]:
        out.append(f"  columns: {old['columns']} -> {new['columns']}")
    if old["n_rows"] != new["n_rows"]:
        out.append(f"  rows: {old['n_rows']} -> {new['n_rows']}")
    if "rows" in old and "rows" in new:
        oc, nc = old["columns"], new["columns"]
        keys = [k for k in new["keys"] if k in oc and k in nc]
        o = {tuple(r[oc.index(k)] for k in keys): dict(zip(oc, r)) for r in old["rows"]}
        n = {tuple(r[nc.index(k)] for k in keys): dict(zip(nc, r)) for r in new["rows"]}
        for key in sorted(o.keys() - n.keys(), key=str)[:limit]:
            out.append(f"  row {'/'.join(map(str, key))}: gone")
        for key in sorted(n.keys() - o.keys(), key=str)[:limit]:
            out.append(f"  row {'/'.join(map(str, key))}: new")
        numeric = [c for c in old.get("finite", {}) if c in nc]
        rows = []
        for key in sorted(o.keys() & n.keys(), key=str):
            a, b = o[key], n[key]
            diffs = [f"{c} {a[c]!r} -> {b[c]!r}" for c in numeric if _finite(a[c]) != _finite(b[c])]
            diffs += [
                f"AUC {c} {_how_much(a[c], b[c])} beyond {AUC_TOLERANCE}"
                for c in numeric
                if _is_auc(c) and _finite(a[c]) and _finite(b[c]) and abs(b[c] - a[c]) > AUC_TOLERANCE
            ]
            if diffs:
                rows.append(f"  row {'/'.join(map(str, key))}: " + "; ".join(diffs))
        out += rows[:limit] + ([f"  (and {len(rows) - limit} more rows)"] if len(rows) > limit else [])
    elif "groups" in old and "groups" in new:
        gone, added = sorted(old["groups"].keys() - new["groups"].keys()), sorted(new["groups"].keys() - old["groups"])
        if gone or added:
            out.append(f"  groups ({'/'.join(new['group_by'])}) gone: {gone[:limit]}, new: {added[:limit]}")
    for c, count in old.get("finite", {}).items():
        if c in new.get("finite", {}) and new["finite"][c] != count:
            out.append(f"  {c}: {count} -> {new['finite'][c]} finite values")
    for c in [c for c in old["summary"] if c in new["summary"] and c not in NO_MEAN]:
        a, b = old["summary"][c][1], new["summary"][c][1]
        if abs(b - a) > MEAN_TOLERANCE * max(abs(a), MEAN_SCALE):
            out.append(f"  {c} mean {_how_much(a, b)}, beyond {MEAN_TOLERANCE:.0%} (of at least {MEAN_SCALE})")
    return [f"table {table} (training-derived):", *out] if out else []


def signature_differences(old: dict | None, new: dict | None) -> list[str]:
    """How machine signature ``new`` differs from ``old`` (``signature()``), one line per field; empty when equal."""
    if old == new:
        return []
    if old is None or new is None:
        return [f"{'the stored digest' if old is None else 'this digest'} records no machine signature"]
    out = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if name == "cpu_flags":
            fa, fb = set((a or "").split()), set((b or "").split())
            out.append(f"cpu_flags: only stored {sorted(fa - fb)}, only here {sorted(fb - fa)}")
        elif isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            out += [f"{name} {k}: {a.get(k)} -> {b.get(k)}" for k in keys]
        else:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


@dataclass
class Comparison:
    """The outcome of :func:`compare`: its ``mode``, why (``reasons``), what fails (``lines``) and what moved within
    the tolerances (``tolerated``)."""

    mode: str
    reasons: list[str]
    lines: list[str]
    tolerated: list[str] = field(default_factory=list)

    def header(self) -> str:
        """One paragraph naming the mode and why it ran."""
        if self.mode == "exact":
            return "demo digest: exact comparison (this machine's signature is the stored digest's)"
        return (
            "demo digest: comparison across machines, because the machine signature differs from the stored "
            f"digest's: {'; '.join(self.reasons)}.  Tables written before training compared exactly; training-derived "
            f"tables, histories and figure data by structure, column means within {MEAN_TOLERANCE:.0%}, AUCs within "
            f"{AUC_TOLERANCE}" + (f".  Within tolerance: {', '.join(self.tolerated)}" if self.tolerated else "")
        )


def compare(old: dict, new: dict, limit: int = 10) -> Comparison:
    """Compare digest ``new`` with ``old``: exactly when their machine signatures are equal, else the tables written
    before training exactly and the training-derived ones (``new["training_derived"]``) with
    :func:`tolerant_table_differences`."""
    reasons = signature_differences(old.get("signature"), new.get("signature"))
    trained = set(new.get("training_derived", ())) if reasons else set()
    out: list[str] = []
    tolerated: list[str] = []
    if old["significant_digits"] != new["significant_digits"]:
        out.append(f"digests at {old['significant_digits']} and {new['significant_digits']} digits: rewrite one")
    for table in sorted(old["tables"].keys() | new["tables"].keys()):
        if table not in new["tables"] or table not in old["tables"]:
            out.append(f"table {table}: {'gone' if table not in new['tables'] else 'new'}")
            continue
        exact = table_differences(table, old["tables"][table], new["tables"][table], limit)
        if table in trained:
            out += tolerant_table_differences(table, old["tables"][table], new["tables"][table], limit)
            tolerated += [table] if exact else []
        else:
            out += exact
    oh, nh = old["histories"], new["histories"]
    if trained:
        differ = sorted(oh.keys() ^ nh.keys())
        tolerated += ["training histories"] if oh != nh else []
    else:
        differ = sorted(k for k in oh.keys() | nh.keys() if oh.get(k) != nh.get(k))
    if differ:
        out.append(f"training histories differ ({len(differ)}): {', '.join(differ[:limit])}")
    of, nf = old["figures"], new["figures"]
    for name in sorted(of.keys() - nf.keys())[:limit]:
        out.append(f"figure {name}: gone")
    for name in sorted(nf.keys() - of.keys())[:limit]:
        out.append(f"figure {name}: new")
    for name in sorted(of.keys() & nf.keys()):
        (w0, h0), (w1, h1) = of[name], nf[name]
        if abs(w1 - w0) > SIZE_TOLERANCE * w0 or abs(h1 - h0) > SIZE_TOLERANCE * h0:
            out.append(f"figure {name}: {w0}x{h0} px -> {w1}x{h1} px")
    for name in sorted(nf):
        if figure_kind(name) is None:
            out.append(f"figure {name}: no FIGURE_DATA entry says what it draws")
    for kind in sorted(old["figure_data"].keys() | new["figure_data"].keys()):
        a, b = old["figure_data"].get(kind), new["figure_data"].get(kind)
        from_training = trained and a and b and a["draws"] == b["draws"] and set(a["draws"]) & (trained | {"histories"})
        if a != b and not from_training:  # data drawn from training is compared in its tables above
            out.append(f"figures {kind}: the data they draw ({', '.join((b or a)['draws'])}) changed")
    if out:
        ov, nv = old["versions"], new["versions"]
        bumped = [f"{k} {ov.get(k)} -> {nv.get(k)}" for k in sorted(ov.keys() | nv.keys()) if ov.get(k) != nv.get(k)]
        if bumped:
            out.append("libraries differ from the stored digest's: " + ", ".join(bumped))
    return Comparison("across machines" if reasons else "exact", reasons, out, tolerated)


def differences(old: dict, new: dict, limit: int = 10) -> list[str]:
    """Readable lines saying how digest ``new`` differs from ``old``; empty when the results are the same
    (:func:`compare`'s ``lines``)."""
    return compare(old, new, limit).lines


def load(path: Path = STORED) -> dict:
    return json.loads(path.read_text())


def write(d: dict, path: Path = STORED) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(d, indent=1)
    # a list of plain values on one line: a table row, a figure's size (JSON strings hold no raw newline)
    text = re.sub(r"\[[^\[\]{}]*\]", lambda m: re.sub(r"\n\s*", "", re.sub(r",\n\s*", ", ", m.group())), text)
    path.write_text(text + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"store the demo's digest in {STORED}")
    parser.add_argument("--config", help="another deployment's configuration (default: the demo's)")
    parser.add_argument("--against", type=Path, default=STORED, help="the stored digest to compare with")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, check_files=False) if args.config else None
    new = digest(cfg)
    if args.write:
        write(new)
        print(f"wrote {STORED}")
        return 0
    result = compare(load(args.against), new)
    print(result.header())
    print("\n".join(result.lines) if result.lines else f"the demo's results are those of {args.against}")
    return 1 if result.lines else 0


if __name__ == "__main__":
    sys.exit(main())
