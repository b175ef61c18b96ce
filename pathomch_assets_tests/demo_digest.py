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
  ``SIZE_TOLERANCE``) catches a panel added or lost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import struct
import sys
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
    summary = {}
    for c in columns:
        if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
            values = pd.to_numeric(df[c], errors="coerce").astype(float)
            values = values[values.notna() & ~values.isin([math.inf, -math.inf])]
            if len(values):
                summary[c] = [canonical(values.min()), canonical(values.mean()), canonical(values.max())]
    out = {
        "columns": columns,
        "keys": keys,
        "n_rows": len(rows),
        "rows_hash": _hash([rows[i] for i in order]),
        "column_hashes": {c: _hash([json.dumps(canonical(df[c].iat[i])) for i in order]) for c in columns},
        "summary": summary,
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


def differences(old: dict, new: dict, limit: int = 10) -> list[str]:
    """Readable lines saying how digest ``new`` differs from ``old``; empty when the results are the same."""
    out: list[str] = []
    if old["significant_digits"] != new["significant_digits"]:
        out.append(f"digests at {old['significant_digits']} and {new['significant_digits']} digits: rewrite one")
    for table in sorted(old["tables"].keys() | new["tables"].keys()):
        if table not in new["tables"] or table not in old["tables"]:
            out.append(f"table {table}: {'gone' if table not in new['tables'] else 'new'}")
            continue
        out += table_differences(table, old["tables"][table], new["tables"][table], limit)
    oh, nh = old["histories"], new["histories"]
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
        if a != b:
            out.append(f"figures {kind}: the data they draw ({', '.join((b or a)['draws'])}) changed")
    if out:
        ov, nv = old["versions"], new["versions"]
        bumped = [f"{k} {ov.get(k)} -> {nv.get(k)}" for k in sorted(ov.keys() | nv.keys()) if ov.get(k) != nv.get(k)]
        if bumped:
            out.append("libraries differ from the stored digest's: " + ", ".join(bumped))
    return out


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
    lines = differences(load(args.against), new)
    print("\n".join(lines) if lines else f"the demo's results are those of {args.against}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
