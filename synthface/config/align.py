"""The recipe of `synthface align`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthface.config.base import Section


class AlignRecipe(Section):
    seed: int = 0
    image_size: int = Field(112, ge=32, le=1024, description="output side in pixels (112 = ArcFace template)")
    template_scale: float = Field(
        1.0,
        gt=0.1,
        le=1.0,
        description="ArcFace points scaled by this around the centre: 1 = tight template, 0.6 = loose crop with context",
    )
    image_format: Literal["png", "jpeg"] = "png"
    select: Literal["largest", "center"] = Field("center", description="face to keep when several are found")
    min_face_size: int = Field(20, ge=8)
    detector_threshold: float = Field(0.9, ge=0.0, le=1.0)
    batch_size: int = Field(32, ge=1)
    workers: int = Field(2, ge=0, description="image decoding threads")
    device: str = "auto"
