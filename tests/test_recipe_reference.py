"""docs/recipes.md is the recipe models rendered: it cannot drift from synthface/config.py."""

from __future__ import annotations

from pathlib import Path

from synthface.config import RECIPES
from synthface.recipe_reference import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def test_reference_is_current():
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/recipes.md is stale: python -c \"from synthface.recipe_reference import write; write('docs/recipes.md')\""
    )


def test_reference_lists_nested_keys_with_ranges():
    text = render()
    for command in RECIPES:
        assert f"## `synthface {command}`" in text
    assert "| `filter.threshold` |" in text and "| `sampling.guidance_scale` |" in text
    assert "| `image_size` | `int` | `112` | >= 32, <= 1024 |" in text
    assert "one of png, jpeg" in text
