"""The recipe of `synthface embed`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthface.config.base import DEFAULT_EMBEDDER, Section


class EmbedRecipe(Section):
    seed: int = 0
    embedder: str = DEFAULT_EMBEDDER
    weights: str | None = None
    batch_size: int = Field(32, ge=1)
    aligned: bool = Field(False, description="inputs are already 112x112 ArcFace-template crops")
    select: Literal["largest", "center"] = Field("center", description="face to keep when several are found")
    device: str = "auto"
