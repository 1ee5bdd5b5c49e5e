"""The recipe of `synthface export`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthface.config.base import Section


class ExportRecipe(Section):
    seed: int = 0
    format: Literal["imagefolder", "webdataset", "recordio"] = "imagefolder"
    shard_size: int = Field(10000, ge=1, description="samples per WebDataset tar")
