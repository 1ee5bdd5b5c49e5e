"""The recipe of `synthface inspect`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthface.config.base import DEFAULT_EMBEDDER, GlobPath, Section


class InspectRecipe(Section):
    seed: int = 0
    embedder: str | None = Field(
        None,
        description="embedder of the similarity histograms; null: the dataset's filter "
        f"embedder when its filter ran, else {DEFAULT_EMBEDDER}; none: skip them",
    )
    max_identities: int = Field(100, ge=1, description="identities embedded for the similarity histograms")
    sheet_identities: int = Field(16, ge=1, description="contact sheet rows (one identity each)")
    sheet_images: int = Field(8, ge=1, description="contact sheet columns (images per identity)")
    gallery: GlobPath = Field(
        None, description="`synthface embed` Parquet of real people for a leakage report (a glob matching one file)"
    )
    reference: GlobPath = Field(
        None,
        description="real aligned faces (a folder with one sub-folder per person, shards or "
        "a RecordIO file) for the Frechet distance and k-NN precision/recall in embedding space",
    )
    reference_images: int = Field(2000, ge=2, description="reference images embedded at most (people in a seeded order)")
    k: int = Field(3, ge=1, description="k of the k-NN precision/recall")
    detector: Literal["mtcnn", "none"] = Field(
        "mtcnn", description="face detector of the detection rate and the pose figures, run on the stored crops; none: skip them"
    )
    card: bool = Field(
        True, description="also write the quality figures into the dataset card (SRC/README.md, when synthface wrote it)"
    )
    device: str = "auto"
