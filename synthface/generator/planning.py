"""The identities a ``generate`` run renders: its identity plan and the identity-guidance module.

The plan is reused from identities.parquet when it belongs to this config, else planned with the
model's conditioning embedder (and the gallery a trained native model carries, when the recipe
names none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from synthface.config import GenerateRecipe
from synthface.errors import ConfigError
from synthface.dataset.layout import IDENTITIES_FILE
from synthface.generator.model import GeneratorModel
from synthface.generator.pipeline import generate
from synthface.gallery import FaceEmbedding
from synthface.identities import IdentityPlan, plan_identities, read_plan, read_plan_metadata


def with_model_gallery(cfg: Any, model: GeneratorModel) -> Any:
    """The gallery strategy without a named gallery uses the one a trained native model carries."""
    from synthface.generator.native import GALLERY_FILE

    own = Path(model.source) / GALLERY_FILE if model.source else None
    if cfg.strategy == "gallery" and not cfg.gallery and own is not None and own.is_file():
        return cfg.model_copy(update={"gallery": str(own)})
    return cfg


def with_model_leakage_gallery(recipe: GenerateRecipe, model: GeneratorModel) -> GenerateRecipe:
    """The filter's leakage check against the gallery a native model carries, when identities come from it.

    Only when the filter embeds with the model's conditioning embedder (the gallery's space); with
    another filter embedder, ``filter.gallery`` names a gallery in that embedder's space.
    """
    identities = with_model_gallery(recipe.identities, model)
    if identities is recipe.identities or recipe.filter.gallery or recipe.filter.embedder != model.embedder:
        return recipe
    return recipe.model_copy(update={"identities": identities})


def identity_plan(
    recipe: GenerateRecipe, model: GeneratorModel, out: Path, guard_hash: str, device: Any, reuse: bool = True
) -> IdentityPlan:
    """Process 0: reuse identities.parquet of this config when ``reuse`` and it is intact, else plan.
    Writes nothing (the plan is written once the output folder is prepared)."""
    path = out / IDENTITIES_FILE
    if reuse and path.is_file() and read_plan_metadata(path).get("config_hash") == guard_hash:
        stored = read_plan(path)
        if stored is not None:
            return stored
        # damaged or edited: plan again; resuming then compares the new plan's digest with inputs.json

    def image_embed() -> Any:
        from synthface.faces.align import FaceDetector
        from synthface.faces.embedders import get_embedder

        return FaceEmbedding(get_embedder(model.embedder, device=str(device)), detector=FaceDetector(device=str(device)))

    def generated_embed() -> Any:
        if model.template_scale is None:
            return image_embed()
        from synthface.faces.embedders import get_embedder

        return FaceEmbedding(get_embedder(model.embedder, device=str(device)), template_scale=model.template_scale)

    s = recipe.sampling

    def render_unconditional(seeds: np.ndarray) -> Sequence[np.ndarray]:
        return list(generate(model, None, seeds, batch_size=s.batch_size, scheduler=s.scheduler, steps=s.steps,
                             guidance_scale=1.0, unconditional=True))  # fmt: skip

    return plan_identities(
        with_model_gallery(recipe.identities, model),
        recipe.seed,
        model.embedding_dim,
        embedder=model.embedder,
        image_embed=image_embed,
        generated_embed=generated_embed,
        render_unconditional=render_unconditional,
    )


def identity_guide_for(model: GeneratorModel, device: Any, kind: str = "pixel", embedder: Any = None) -> Any:
    """The differentiable module identity guidance (and the training loop's identity term) needs.

    ``pixel``: the conditioning embedder's ``differentiable()`` at the model's crop geometry
    (``embedder``, or the registry's instance of ``model.embedder``); ``head``: the model's
    noise-aware identity head (``MODEL/identity_head``).
    """
    if kind == "head":
        from synthface.generator.identity_head import identity_head_for

        return identity_head_for(model, device)
    if embedder is None:
        from synthface.faces.embedders import get_embedder

        embedder = get_embedder(model.embedder, device=str(device))
    make = getattr(embedder, "differentiable", None)
    if make is None:
        raise ConfigError(
            f"identity guidance and the identity loss need a differentiable '{model.embedder}' embedder and this one is "
            "not: set sampling.identity_scale=0 (or train.identity_loss.weight=0), or use sface"
        )
    import inspect

    # embedders whose guide warps the generated crop to their own template (sface) take its geometry
    params = inspect.signature(make).parameters
    if model.template_scale is not None and "template_scale" in params and "image_size" in params:
        return make(image_size=model.image_size, template_scale=model.template_scale)
    return make()
