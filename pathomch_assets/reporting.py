"""Helpers that turn frames and figures into Dagster metadata a person reads in the UI."""

from __future__ import annotations

import base64
import io

import dagster as dg
import pandas as pd


def md_table(df: pd.DataFrame, max_rows: int = 30, floatfmt: str = ".3f") -> dg.MetadataValue:
    shown = df.head(max_rows)
    text = shown.to_markdown(index=False, floatfmt=floatfmt)
    if len(df) > max_rows:
        text += f"\n\n({len(df) - max_rows} more rows)"
    return dg.MetadataValue.md(text)


def png_md(fig, name: str = "figure", dpi: int = 90) -> dg.MetadataValue:
    """A matplotlib figure as an inline image (Dagster's quickstart way); closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return dg.MetadataValue.md(f"![{name}](data:image/png;base64,{data})")
