"""The recipe reference (docs/recipes.md), rendered from the recipe models in :mod:`synthface.config`.

Every key of every command's recipe, with its type, default, allowed range and description, in the
dotted form ``--set`` takes. tests/test_recipe_reference.py fails when docs/recipes.md differs
from :func:`render`; regenerate it with::

    python -c "from synthface.recipe_reference import write; write('docs/recipes.md')"
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Literal

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from synthface.config import RECIPES

_BOUNDS = ((at.Ge, ">="), (at.Gt, ">"), (at.Le, "<="), (at.Lt, "<"))

HEADER = """# Recipe reference

Every command reads a YAML recipe (`--recipe FILE`) and `--set key=value` overrides; a key not
listed here is an error, and so is a value outside its range. Nested keys are written with dots
(`--set filter.threshold=0.4`). The shipped recipes in `recipes/` are worked examples.
This page is generated from the recipe models (`synthface/config.py`); do not edit it by hand.
"""


def _type_name(annotation: Any) -> str:
    if getattr(annotation, "__origin__", None) is Literal:
        return "one of " + ", ".join(str(a) for a in annotation.__args__)
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation)
    text = text.replace("typing.", "").replace("NoneType", "None")
    return re.sub(r"synthface\.config\.", "", text)


def _range(info: FieldInfo) -> str:
    parts = [
        f"{sign} {getattr(m, type(m).__name__.lower())}" for m in info.metadata for cls, sign in _BOUNDS if isinstance(m, cls)
    ]
    return ", ".join(parts)


def _default(value: Any) -> str:
    if isinstance(value, BaseModel):
        return ""
    return json.dumps(value) if value is not None else "null"


def _rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str, str]]:
    for name, info in model.model_fields.items():
        key = prefix + name
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _rows(annotation, key + ".")
            continue
        description = (info.description or "").replace("|", "\\|")
        yield (
            key,
            _type_name(annotation).replace("|", "\\|"),
            _default(info.default).replace("|", "\\|"),
            _range(info),
            description,
        )


def render() -> str:
    """docs/recipes.md: one table per command."""
    lines = [HEADER]
    for command, model in RECIPES.items():
        lines += [f"## `synthface {command}`", "", "| key | type | default | range | what |", "| --- | --- | --- | --- | --- |"]
        lines += [
            f"| `{k}` | `{t}` | `{d}` | {r} | {w} |" if d else f"| `{k}` | `{t}` | | {r} | {w} |"
            for k, t, d, r, w in _rows(model)
        ]
        lines.append("")
    return "\n".join(lines)


def write(path: str | Path) -> Path:
    """Write :func:`render` to ``path``."""
    path = Path(path)
    path.write_text(render(), encoding="utf-8")
    return path
