"""Helpers that turn frames and figures into Dagster metadata a person reads in the UI."""

from __future__ import annotations

import base64
import io

import dagster as dg
import pandas as pd

#: largest PNG put inline in an event (bytes before base64); a figure that does not fit at any of
#: ``EMBED_DPIS`` keeps its path only
EMBED_MAX_BYTES = 64_000
#: resolutions tried for the inline copy, sharpest first (the file itself keeps the caller's dpi)
EMBED_DPIS = (72, 56, 40)


def md_table(df: pd.DataFrame, max_rows: int = 30, floatfmt: str = ".3f") -> dg.MetadataValue:
    shown = df.head(max_rows)
    text = shown.to_markdown(index=False, floatfmt=floatfmt)
    if len(df) > max_rows:
        text += f"\n\n({len(df) - max_rows} more rows)"
    return dg.MetadataValue.md(text)


def md_image(fig, label: str, max_bytes: int = EMBED_MAX_BYTES) -> dg.MetadataValue | None:
    """The figure as an inline markdown image (a base64 PNG, as Dagster's quickstart attaches plots).

    Rendered at the sharpest of ``EMBED_DPIS`` whose PNG fits ``max_bytes``; ``None`` when none fits.
    The figure is left open.
    """
    for dpi in EMBED_DPIS:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        png = buf.getvalue()
        if len(png) <= max_bytes:
            return dg.MetadataValue.md(f"![{label}](data:image/png;base64,{base64.b64encode(png).decode()})")
    return None


def one_bounded_event() -> bool:
    """Whether the metadata of the asset being materialized lands in one event of a partition set the
    configuration bounds (a cohort, a model, an unpartitioned asset), so that an inline image costs one
    copy, not one per slide.

    False for per-slide assets (dynamic partitions: thousands of events at TCGA scale) and for range runs
    (Dagster repeats a range's metadata in every partition's event).  Outside a run (an asset called
    directly) there is one result: True.
    """
    try:
        ctx = dg.OpExecutionContext.get()
    except dg.DagsterInvariantViolationError:
        return True
    try:
        parts = ctx.assets_def.partitions_def
    except dg.DagsterInvariantViolationError:  # an op, not an asset
        return True
    if parts is None:
        return True
    dims = (
        [d.partitions_def for d in parts.partitions_defs]
        if isinstance(parts, dg.MultiPartitionsDefinition)
        else [parts]
    )
    if any(isinstance(d, dg.DynamicPartitionsDefinition) for d in dims):
        return False
    return not ctx.has_partition_key_range or len(ctx.partition_keys) == 1


def figure_file(fig, path, label: str, root=None, dpi: int = 90) -> dict[str, dg.MetadataValue]:
    """Save a matplotlib figure as a PNG file (atomically) and return its metadata; closes the figure.

    The metadata holds the file's path under ``label`` and, under ``<label>_image``, the figure itself
    for the asset page:

    - where the files are served over HTTP (``make demo``/``make ui`` serve the demo's ``data_dir``; a
      bucket's web endpoint) and ``PATHOMCH_FIGURES_URL`` names that address under ``root``: a markdown link
      to the file, a few hundred bytes, which the UI draws on the asset page itself;
    - when the event is one of a bounded set (:func:`one_bounded_event`: cohort figures, training curves):
      the figure inline as a small base64 PNG (:func:`md_image`, at most ``EMBED_MAX_BYTES``), which shows
      without a server, behind the UI's "Show Markdown" (Dagster draws only markdown under 1,000 characters
      in place); beside a link it is kept as ``<label>_embedded``;
    - else the path only, so an event stays a few KB however many slides a deployment has.
    """
    import os

    from .files import as_path, atomic_path
    from .plots import pyplot

    plt = pyplot()

    path = as_path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    meta: dict[str, dg.MetadataValue] = {label: dg.MetadataValue.path(str(path))}
    embedded = md_image(fig, label) if one_bounded_event() else None
    base = os.environ.get("PATHOMCH_FIGURES_URL")
    if base and root is not None:
        rel = str(path).removeprefix(str(root)).lstrip("/")
        meta[f"{label}_image"] = dg.MetadataValue.md(f"![{label}]({base.rstrip('/')}/{rel})")
        if embedded is not None:
            meta[f"{label}_embedded"] = embedded
    elif embedded is not None:
        meta[f"{label}_image"] = embedded
    plt.close(fig)
    return meta
