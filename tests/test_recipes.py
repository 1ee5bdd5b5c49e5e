"""Every shipped recipe loads through its command's schema (a typo in a key or a value fails here, not in a user's run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from synthface.config import EvaluateRecipe, GenerateRecipe, TrainRecipe, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

SCHEMA = {  # recipe file -> the command that reads it
    "arc2face-10k-x-50.yaml": GenerateRecipe,
    "arc2face-lcm-quickstart.yaml": GenerateRecipe,
    "arc2face-quickstart.yaml": GenerateRecipe,
    "generate-10k-x-50.yaml": GenerateRecipe,
    "native-generate-dlib.yaml": GenerateRecipe,
    "native-generate-sface.yaml": GenerateRecipe,
    "quickstart-native.yaml": GenerateRecipe,
    "quickstart.yaml": GenerateRecipe,
    "native-cpu-latent.yaml": TrainRecipe,
    "native-cpu-small.yaml": TrainRecipe,
    "native-gpu-128.yaml": TrainRecipe,
    "native-gpu-latent.yaml": TrainRecipe,
    "evaluate-casia-scale.yaml": EvaluateRecipe,
    "evaluate-cpu-small.yaml": EvaluateRecipe,
    "protocol-lfw-cpu.yaml": None,  # bench/protocol_lfw.py's own config: each section names a recipe above
    "protocol-lfw-latent.yaml": None,
    "protocol-lfw-scale.yaml": None,
}


def test_every_recipe_has_a_schema():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == sorted(SCHEMA)


@pytest.mark.parametrize("name", sorted(n for n, s in SCHEMA.items() if s is not None))
def test_recipe_loads(name):
    load_recipe(SCHEMA[name], str(RECIPES / name), [])


@pytest.mark.parametrize("name", ["protocol-lfw-cpu.yaml", "protocol-lfw-latent.yaml", "protocol-lfw-scale.yaml"])
def test_protocol_sections_name_existing_recipes(name):
    cfg = yaml.safe_load((RECIPES / name).read_text())
    named = [s["recipe"] for s in cfg.values() if isinstance(s, dict) and s.get("recipe")]
    assert named and all((RECIPES.parent / r).is_file() for r in named)
