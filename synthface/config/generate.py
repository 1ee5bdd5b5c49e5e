"""The recipe of `synthface generate`: identities, sampling, variation, filter, output, arc2face."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from synthface.config.base import DEFAULT_EMBEDDER, GlobPath, Section


class IdentitiesSection(Section):
    count: int = Field(10000, ge=1, le=100_000_000)
    strategy: Literal["uniform", "gallery", "images", "unconditional"] = "uniform"
    separation: float = Field(0.3, ge=-1.0, le=1.0, description="max cosine allowed between two identities")
    gallery: GlobPath = Field(None, description="real faces: `synthface embed` Parquet or folder; a glob matching one file")
    leakage: float = Field(0.4, ge=-1.0, le=1.0, description="max cosine allowed to any real person")
    images: str | None = Field(None, description="folder of reference faces for the `images` strategy")
    embedder: str | None = Field(None, description="conditioning embedder the model must use; null = the model's")


class SamplingSection(Section):
    scheduler: Literal["ddpm", "ddim", "dpmsolver++", "lcm"] = "dpmsolver++"
    steps: int = Field(25, ge=1, le=1000)
    guidance_scale: float = Field(
        3.0, ge=0.0, description="classifier-free guidance scale; <= 1: the conditional branch alone (as diffusers)"
    )
    identity_scale: float = Field(0.0, ge=0.0, description="classifier guidance towards the identity (0: off)")
    identity_guide: Literal["pixel", "head"] = Field(
        "pixel",
        description="what identity_scale differentiates: pixel = the conditioning embedder on the decoded x0 estimate; "
        "head = the model's noise-aware latent identity head (MODEL/identity_head, `synthface train-head`) on x_t",
    )
    batch_size: int = Field(32, ge=1)
    dtype: Literal["fp32", "fp16", "bf16"] = "bf16"
    channels_last: bool = Field(False, description="UNet and VAE in channels-last memory format (faster convolutions on GPUs)")
    compile: bool = Field(False, description="torch.compile the UNet; the first batch pays the compilation (a GPU option)")
    vae_tiling: bool = Field(False, description="decode in tiles: large images on small memory (AutoencoderKL models)")
    overlap: bool = Field(
        True,
        description="sample the next batch while a worker thread filters, encodes and writes the last one (same bytes as false)",
    )

    omit_when_default = ("identity_guide",)


class VariationSection(Section):
    """Per-image variation: each draw is a pure function of the sample's seed, recorded in the shard."""

    identity_cosine: list[float] = Field(
        [1.0, 1.0],
        min_length=2,
        max_length=2,
        description="each image's conditioning vector sits at a cosine drawn from [low, high] to its identity "
        "(moved on the sphere in a random direction); [1, 1]: the identity itself",
    )
    guidance_scale: list[float] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="each image's CFG scale drawn from [low, high] (lower: more variation; <= 1: no CFG); "
        "null: sampling.guidance_scale",
    )
    style_bank: GlobPath = Field(
        None,
        description="folder of face images framed like the model's renders: each image starts from a partially "
        "noised one of them (SDEdit), so pose and lighting come from the bank; null: from pure noise",
    )
    style_strength: float = Field(
        0.85,
        gt=0.0,
        le=1.0,
        description="fraction of the noise schedule run from a style image (1: pure noise; at 0.7 the style person shows through)",
    )

    @property
    def active(self) -> bool:
        """True when a control is on (the shards then carry the variation columns)."""
        return list(self.identity_cosine) != [1.0, 1.0] or self.guidance_scale is not None or bool(self.style_bank)

    @model_validator(mode="after")
    def _ranges(self) -> "VariationSection":
        lo, hi = self.identity_cosine
        if not -1.0 < lo <= hi <= 1.0:
            raise ValueError(f"identity_cosine must be [low, high] with -1 < low <= high <= 1, got [{lo}, {hi}]")
        if self.guidance_scale is not None:
            lo, hi = self.guidance_scale
            if not 0.0 <= lo <= hi:
                raise ValueError(f"guidance_scale must be [low, high] with 0 <= low <= high, got [{lo}, {hi}]")
        return self


class FilterSection(Section):
    enabled: bool = True
    embedder: str = DEFAULT_EMBEDDER
    threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="min cosine to the identity anchor; null: the filter embedder's measured default"
    )
    detector_threshold: float = Field(0.9, ge=0.0, le=1.0)
    oversample: float = Field(1.5, ge=1.0)
    min_images: int = Field(40, ge=1)
    anchor: Literal["auto", "identity", "centre"] = Field(
        "auto",
        description="identity: the conditioning embedding; centre: robust centre of the samples; auto: identity "
        "when the filter embedder is the conditioning embedder",
    )
    merge_threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="max cosine between two kept identity centres; null: the threshold"
    )
    leakage: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="max cosine of an identity centre to a real person; null: identities.leakage "
        "when the filter embedder is the conditioning embedder, else the threshold",
    )
    gallery: GlobPath = Field(
        None, description="real faces/embeddings for the leakage check (a glob matching one file); null: identities.gallery"
    )
    batch_size: int = Field(64, ge=1, description="faces per embedder call")


class OutputSection(Section):
    image_format: Literal["jpeg", "png", "webp"] = "jpeg"
    image_size: int = Field(112, ge=16, le=1024)
    store_full_resolution: bool = Field(
        False, description="also store each generated image as rendered (before alignment) in an image_full column"
    )


class Arc2FaceSection(Section):
    """Options of the Arc2Face family (used only when the model is an Arc2Face model)."""

    base_model: str | None = Field(
        None, description="SD 1.5 repo id or directory for VAE/tokenizer/scheduler; null: the model dir, else the Hub's"
    )
    lcm_lora: str | None = Field(
        None, description="LoRA merged into the UNet: latent-consistency/lcm-lora-sdv1-5 (with sampling.scheduler=lcm)"
    )
    arcface: str | None = Field(None, description="conditioning ArcFace ONNX file; null: the model's arcface.onnx")


# The largest guidance scale each sampling dtype carries: the guided prediction is scale x (cond -
# uncond), and the UNet's attention multiplies two activations of that size, so the scale's square
# must stay representable (fp16: 255; bf16 and fp32: 1.8e19). A larger one is finite but renders
# every image black.
GUIDANCE_LIMIT = {"fp16": 255.0, "bf16": 1.8e19, "fp32": 1.8e19}


class GenerateRecipe(Section):
    seed: int = 0
    model: str = "FoivosPar/Arc2Face"
    identities: IdentitiesSection = IdentitiesSection()
    images_per_identity: int = Field(50, ge=1)
    shard_identities: int = Field(100, ge=1)
    sampling: SamplingSection = SamplingSection()
    variation: VariationSection = VariationSection()
    filter: FilterSection = FilterSection()
    output: OutputSection = OutputSection()
    arc2face: Arc2FaceSection = Arc2FaceSection()

    @model_validator(mode="after")
    def _guidance_fits_dtype(self) -> "GenerateRecipe":
        dtype = self.sampling.dtype
        limit = GUIDANCE_LIMIT[dtype]
        scales = {"sampling.guidance_scale": [self.sampling.guidance_scale]}
        scales["variation.guidance_scale"] = list(self.variation.guidance_scale or [])
        for key, values in scales.items():
            for value in values:
                if value > limit:
                    raise ValueError(
                        f"{key} {value:g} overflows {dtype} sampling (at most {limit:g}; every image would be black): "
                        "use a scale like 3"
                    )
        steps, strength = self.sampling.steps, self.variation.style_strength
        if self.variation.style_bank and int(steps * strength) < 1:
            raise ValueError(
                f"variation.style_strength {strength:g} leaves no step of sampling.steps {steps} to run from a style "
                f"image: raise it to at least {1 / steps:.3g}"
            )
        return self
