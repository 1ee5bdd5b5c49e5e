"""The recipe of `synthface verify`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthface.config.base import DEFAULT_EMBEDDER, Section


class VerifyRecipe(Section):
    seed: int = 0
    embedder: str = DEFAULT_EMBEDDER
    weights: str | None = None
    folds: int = Field(10, ge=2)
    far: float = Field(1e-3, gt=0.0, lt=1.0)
    pairs_per_fold: int | None = Field(
        None,
        ge=1,
        description="a folder of people: same (and as many different) pairs drawn per fold; null: as many "
        "as the poorest fold allows, at most 300",
    )
    flip: bool = True
    batch_size: int = Field(32, ge=1)
    aligned: bool | None = Field(None, description="inputs are template crops; default: true for .bin files")
    select: Literal["largest", "center"] = Field("center", description="face to keep when several are found")
    device: str = "auto"
