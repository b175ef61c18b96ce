"""Helpers that turn frames and figures into Dagster metadata a person reads in the UI."""

from __future__ import annotations

import dagster as dg
import pandas as pd


def md_table(df: pd.DataFrame, max_rows: int = 30, floatfmt: str = ".3f") -> dg.MetadataValue:
    shown = df.head(max_rows)
    text = shown.to_markdown(index=False, floatfmt=floatfmt)
    if len(df) > max_rows:
        text += f"\n\n({len(df) - max_rows} more rows)"
    return dg.MetadataValue.md(text)


def figure_file(fig, path, label: str, root=None, dpi: int = 90) -> dict[str, dg.MetadataValue]:
    """Save a matplotlib figure as a PNG file (atomically) and return its metadata; closes the figure.

    The event log keeps the file's path, not the image: an event stays a few hundred bytes however
    many slides and figures a deployment makes.  Where the files are also served over HTTP (a bucket's
    web endpoint, or ``python -m http.server`` over ``data_dir``), set ``PATHOMCH_FIGURES_URL`` to
    that address: the metadata then holds a short markdown image, shown inline on the asset page.
    """
    import os

    from .files import as_path, atomic_path
    from .plots import pyplot

    plt = pyplot()

    path = as_path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    meta: dict[str, dg.MetadataValue] = {label: dg.MetadataValue.path(str(path))}
    base = os.environ.get("PATHOMCH_FIGURES_URL")
    if base and root is not None:
        rel = str(path).removeprefix(str(root)).lstrip("/")
        meta[f"{label}_image"] = dg.MetadataValue.md(f"![{label}]({base.rstrip('/')}/{rel})")
    return meta
