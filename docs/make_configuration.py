"""Writes docs/configuration.md from the settings in pathomch_assets/config.py (their source of truth).

Run from the repository root: ``python docs/make_configuration.py > docs/configuration.md``.
"""

from __future__ import annotations

import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pathomch_assets.config import CohortConfig, PathomchConfig


def bounds(field) -> str:
    out = []
    for m in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >=")):
            if getattr(m, attr, None) is not None:
                out.append(f"{sign} {getattr(m, attr)}")
    return ", ".join(out)


def default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    return f"`{value!r}`" if not isinstance(value, BaseModel) else ""


def kind(annotation) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("<class '", "").replace("'>", "")
    return text.replace("|", "or")


def rows(model: type[BaseModel], prefix: str):
    for name, field in model.model_fields.items():
        if name == "source":
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from rows(ann, f"{prefix}{name}.")
            continue
        if typing.get_origin(ann) is dict and name == "cohorts":
            yield from rows(CohortConfig, f"{prefix}cohorts.<name>.")
            continue
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        yield f"| `{prefix}{name}` | {kind(ann)} | {default(field)} | {bounds(field)} | {desc} |"


print("""# Configuration reference

One YAML file per deployment, chosen by `--config` or `PATHOMCH_CONFIG` (default: the demo's,
`pathomch_assets/configs/demo.yaml`). Relative paths are taken from the YAML file's folder. Unknown keys,
duplicate keys, values out of bounds (`.inf`, `.nan` included) and missing files are errors that name the
file, the line and the key. Defaults are the paper's settings; [conformance.md](conformance.md) says where
each comes from. The paper-scale file is `deploy/pathomch.tcga.yaml`.

This page is generated from `pathomch_assets/config.py`, the source of truth:
`python docs/make_configuration.py > docs/configuration.md`.

| key | type | default | bounds | what it does |
| --- | --- | --- | --- | --- |""")
for row in rows(PathomchConfig, ""):
    print(row)
