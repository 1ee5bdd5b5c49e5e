"""Recipe models for every command, YAML loading, ``--set`` overrides and a stable config hash.

One module per command's recipe (``align``, ``embed``, ``verify``, ``generate``, ``train``,
``evaluate``, ``inspect``, ``export``) on a shared :mod:`~synthface.config.base`, and
:mod:`~synthface.config.loading` for recipe files. Every recipe key of every command is declared in
this package, each default once, so docs/recipes.md can be generated from it
(synthface/recipe_reference.py). Every name is importable from ``synthface.config`` itself.
"""

from __future__ import annotations

from synthface.config.align import AlignRecipe
from synthface.config.base import DEFAULT_EMBEDDER, GlobPath, Section, one_file
from synthface.config.embed import EmbedRecipe
from synthface.config.evaluate import EvaluateBenchSection, EvaluateRecipe, RecognizerSection, RecognizerTrainSection
from synthface.config.export import ExportRecipe
from synthface.config.generate import (
    GUIDANCE_LIMIT,
    Arc2FaceSection,
    FilterSection,
    GenerateRecipe,
    IdentitiesSection,
    OutputSection,
    SamplingSection,
    VariationSection,
)
from synthface.config.inspect import InspectRecipe
from synthface.config.loading import (
    RESOLVED_HEADER,
    RESUME_FREE_KEYS,
    R,
    RecipeLoader,
    apply_overrides,
    config_dict,
    config_hash,
    diff_keys,
    load_recipe,
    parse_override,
    parse_yaml,
    read_resolved,
    resume_guard,
    write_resolved,
)
from synthface.config.train import (
    GeneratorTrainSection,
    IdentityHeadSection,
    IdentityLossSection,
    NativeModelSection,
    TrainDataSection,
    TrainRecipe,
)
from synthface.config.verify import VerifyRecipe

RECIPES: dict[str, type[Section]] = {
    "align": AlignRecipe,
    "embed": EmbedRecipe,
    "verify": VerifyRecipe,
    "generate": GenerateRecipe,
    "train": TrainRecipe,
    "evaluate": EvaluateRecipe,
    "inspect": InspectRecipe,
    "export": ExportRecipe,
}

__all__ = [
    "DEFAULT_EMBEDDER",
    "GUIDANCE_LIMIT",
    "RECIPES",
    "RESOLVED_HEADER",
    "RESUME_FREE_KEYS",
    "AlignRecipe",
    "Arc2FaceSection",
    "EmbedRecipe",
    "EvaluateBenchSection",
    "EvaluateRecipe",
    "ExportRecipe",
    "FilterSection",
    "GenerateRecipe",
    "GeneratorTrainSection",
    "GlobPath",
    "IdentitiesSection",
    "IdentityHeadSection",
    "IdentityLossSection",
    "InspectRecipe",
    "NativeModelSection",
    "OutputSection",
    "R",
    "RecipeLoader",
    "RecognizerSection",
    "RecognizerTrainSection",
    "SamplingSection",
    "Section",
    "TrainDataSection",
    "TrainRecipe",
    "VariationSection",
    "VerifyRecipe",
    "apply_overrides",
    "config_dict",
    "config_hash",
    "diff_keys",
    "load_recipe",
    "one_file",
    "parse_override",
    "parse_yaml",
    "read_resolved",
    "resume_guard",
    "write_resolved",
]
