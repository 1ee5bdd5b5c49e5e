"""Recipe models for every command, YAML loading, ``--set`` overrides and a stable config hash.

Longer than most modules on purpose: every recipe key of every command is declared here, in one
place, so docs/recipes.md can be generated from it (synthface/recipe_reference.py).
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from .errors import ConfigError


# The embedder every command uses unless told otherwise: its weights ship with the install
# (`pip install 'synthface[dlib]'`), so each default works offline.
DEFAULT_EMBEDDER = "dlib"


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are validated on assignment.

    Strict: a value must already have its key's type (``count: true`` or ``steps: "3"`` is an error,
    not 1 or 3; an integer is accepted for a float), and every float must be finite (no inf, nan,
    or 1e400).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), strict=True, allow_inf_nan=False)

    # keys added after recipes were written: left out of the dumped recipe (its config.yaml and its
    # hash) while they hold their defaults, so runs started before they existed keep their hash and resume
    omit_when_default: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: Any) -> Any:
        data = handler(self)
        fields = type(self).model_fields
        for name in self.omit_when_default:
            if isinstance(data, dict) and getattr(self, name) == fields[name].get_default(call_default_factory=True):
                data.pop(name, None)
        return data


def one_file(value: str | None) -> str | None:
    """A path with glob characters (``runs/gen/cache/faces-*.parquet``) that names no existing file is
    expanded here, relative to the working directory: it must match exactly one path."""
    if not value or not any(c in value for c in "*?[") or Path(value).expanduser().exists():
        return value
    matches = sorted(glob.glob(str(Path(value).expanduser())))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(f"no file matches {value}")
    raise ValueError(
        f"{value} matches {len(matches)} files ({', '.join(matches[:3])}{', ...' if len(matches) > 3 else ''}): name one"
    )


# A file or folder key that accepts a glob matching exactly one path (see one_file).
GlobPath = Annotated[str | None, AfterValidator(one_file)]


# --------------------------------------------------------------------------- align / embed / verify


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


class EmbedRecipe(Section):
    seed: int = 0
    embedder: str = DEFAULT_EMBEDDER
    weights: str | None = None
    batch_size: int = Field(32, ge=1)
    aligned: bool = Field(False, description="inputs are already 112x112 ArcFace-template crops")
    select: Literal["largest", "center"] = Field("center", description="face to keep when several are found")
    device: str = "auto"


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


# --------------------------------------------------------------------------- generate


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


# --------------------------------------------------------------------------- train (generator)


class NativeModelSection(Section):
    image_size: int = Field(64, ge=8)
    latent: bool = False
    vae: str | None = None
    block_out_channels: list[int] = [64, 128, 256]
    id_tokens: int = Field(4, ge=1)
    crop: Literal["tight", "loose"] = Field(
        "loose", description="what the model outputs: loose (context) or tight 112 template crops"
    )
    template_scale: float = Field(0.6, gt=0.0, le=1.0, description="ArcFace points scale of loose crops")
    layers_per_block: int = Field(2, ge=1)
    attention_head_dim: int = Field(8, ge=1)
    token_dim: int | None = Field(None, ge=8, description="identity token width; null: the last block's channels")
    norm_num_groups: int = Field(32, ge=1)
    class_embedding: bool = Field(
        False, description="also add the identity to the UNet's time embedding (diffusers projection class embedding)"
    )
    center_condition: bool = Field(
        False, description="centre conditioning embeddings on the training mean (stored with the model, applied at sampling)"
    )
    prediction_type: Literal["epsilon", "v_prediction"] = Field("epsilon", description="what the UNet predicts")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] | None = Field(
        None, description="noise schedule; null: scaled_linear for latent models, squaredcos_cap_v2 in pixel space"
    )
    zero_terminal_snr: bool = Field(False, description="rescale betas so the last timestep is pure noise (needs v_prediction)")
    timestep_spacing: Literal["leading", "trailing", "linspace"] = Field(
        "leading", description="how samplers pick their timesteps (trailing starts at the last, pure-noise one)"
    )
    latent_scaling: Literal["vae", "auto"] = Field(
        "vae", description="latent scale: the VAE's own scaling_factor, or auto = 1/std of the training latents"
    )


class IdentityLossSection(Section):
    """An identity-preserving term: 1 - cos(embedding of the one-step estimate x0_hat, the condition)."""

    weight: float = Field(0.0, ge=0.0, description="weight of the identity term beside the denoising loss; 0: off")
    through: Literal["decode", "head"] = Field(
        "decode",
        description="decode: x0_hat -> the frozen VAE decoder -> the conditioning embedder's differentiable module; "
        "head: x0_hat -> the run's noise-aware latent identity head (`synthface train-head`)",
    )
    timesteps: list[int] = Field(
        [0, 600],
        min_length=2,
        max_length=2,
        description="[low, high]: only samples noised to a timestep in this range (where x0_hat still shows a face)",
    )
    fraction: float = Field(0.25, gt=0.0, le=1.0, description="share of each micro-batch the term is computed on")
    head: str | None = Field(None, description="through head: the head folder; null: RUN_DIR/identity_head")

    @model_validator(mode="after")
    def _range(self) -> "IdentityLossSection":
        lo, hi = self.timesteps
        if not 0 <= lo <= hi:
            raise ValueError(f"timesteps must be [low, high] with 0 <= low <= high, got [{lo}, {hi}]")
        return self


class IdentityHeadSection(Section):
    """`synthface train-head`: a small latent + timestep -> embedding network distilled from the cached embeddings."""

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1.0e-3, gt=0)
    width: int = Field(64, ge=8, description="channels of the first level (doubled twice below it)")
    levels: int = Field(3, ge=1, le=5, description="resolution levels (stride-2 steps between them)")
    holdout: float = Field(0.1, ge=0.0, lt=1.0, description="share of identities held out to measure its accuracy")
    eval_timesteps: int = Field(10, ge=1, description="noise levels its held-out accuracy is reported at")
    log_every: int = Field(50, ge=1)


class GeneratorTrainSection(Section):
    max_steps: int = Field(20000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1.0e-4, gt=0)
    cond_dropout: float = Field(0.1, ge=0.0, le=1.0)
    ema_decay: float = Field(0.999, ge=0.0, le=1.0)
    checkpoint_every: int = Field(1000, ge=1)
    sample_every: int = Field(1000, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    warmup_steps: int = Field(500, ge=0)
    weight_decay: float = Field(0.01, ge=0.0)
    clip_grad_norm: float | None = Field(1.0, gt=0.0)
    ema_warmup: bool = Field(True, description="EMA decay ramps up as 1 - (1 + step) ** -ema_power")
    ema_power: float = Field(0.6667, gt=0.0, le=1.0)
    snr_gamma: float | None = Field(None, gt=0.0, description="min-SNR-gamma loss weighting (Hang et al. 2023); null: plain MSE")
    augment: list[Literal["flip", "color_jitter"]] = ["flip", "color_jitter"]
    jitter: float = Field(0.05, ge=0.0, le=0.5, description="max brightness/contrast/saturation change")
    log_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    sample_identities: int = Field(8, ge=1)
    sample_seeds: int = Field(4, ge=1)
    sample_steps: int = Field(25, ge=1)
    sample_scheduler: Literal["ddpm", "ddim", "dpmsolver++"] = "dpmsolver++"
    guidance_scale: float = Field(3.0, ge=0.0, description="CFG scale of the sample grids; <= 1: the conditional branch alone")
    device: str = "auto"
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; null: torch's default")
    max_minutes: float | None = Field(None, gt=0, description="stop (checkpoint + export) after this much training time")
    max_cpu_minutes: float | None = Field(
        None,
        gt=0,
        description="stop (checkpoint + export) after this much CPU time of the training process (all its threads, "
        "summed over resumes): equal compute on a shared machine",
    )
    init_from: str | None = Field(
        None,
        description="a native model folder (`synthface train` output or a shipped model) whose UNet and projector "
        "start the run (fine-tuning); same architecture as `model`; null: fresh weights",
    )
    identity_loss: IdentityLossSection = IdentityLossSection()
    identity_head: IdentityHeadSection = IdentityHeadSection()

    omit_when_default = ("identity_loss", "identity_head")


class TrainDataSection(Section):
    form: Literal["auto", "tight", "loose", "photos"] = Field(
        "auto", description="tight/loose aligned crops, or photos to detect and align; auto: square 112 px = tight"
    )
    template_scale: float = Field(0.6, gt=0.0, le=1.0, description="ArcFace points scale of loose input crops")
    people: str | None = Field(None, description="people list: text file or FILE.json:KEY (folders only)")
    min_images: int = Field(1, ge=1)
    condition: Literal["identity", "image"] = Field("identity", description="mean embedding of the identity, or each image's own")
    embed_per_identity: int | None = Field(
        None, ge=1, description="embed only this many images per identity (their mean conditions all of them); null: all"
    )
    cache: str | None = Field(None, description="cache folder for embeddings/crops/latents; null: RUN_DIR/cache")
    workers: int = Field(2, ge=0)
    batch_size: int = Field(32, ge=1, description="embedding / VAE encoding batch")


class TrainRecipe(Section):
    seed: int = 0
    embedder: str = DEFAULT_EMBEDDER
    model: NativeModelSection = NativeModelSection()
    train: GeneratorTrainSection = GeneratorTrainSection()
    data: TrainDataSection = TrainDataSection()


# --------------------------------------------------------------------------- evaluate (recognizer)


class RecognizerSection(Section):
    backbone: str = "iresnet50"
    embedding_dim: int = Field(512, ge=8)
    loss: Literal["arcface", "cosface", "combined", "adaface"] = "arcface"
    margin: float = 0.5
    scale: float = Field(64.0, gt=0)
    input_size: int | None = Field(None, ge=16, le=1024, description="input side in px; null: the backbone's own (112)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the embedding FC")
    combined_margins: list[float] = Field([1.0, 0.3, 0.2], min_length=3, max_length=3, description="m1, m2, m3")
    adaface_h: float = Field(0.333, gt=0.0)
    adaface_t_alpha: float = Field(0.01, gt=0.0, le=1.0)


class RecognizerTrainSection(Section):
    epochs: int = Field(26, ge=1)
    max_steps: int | None = None
    batch_size: int = Field(128, ge=2)
    lr: float = Field(0.1, gt=0)
    augment: list[Literal["flip", "randaugment", "random_erasing"]] = ["flip", "random_erasing"]
    randaugment_ops: int = Field(2, ge=1)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    random_erasing_p: float = Field(0.25, ge=0.0, le=1.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5.0e-4, ge=0.0)
    warmup_epochs: float = Field(0.0, ge=0.0)
    schedule: Literal["step", "poly", "constant"] = "step"
    milestones: list[float] = Field([10, 18, 22], description="epochs where the step schedule multiplies lr by lr_decay")
    lr_decay: float = Field(0.1, gt=0.0, le=1.0)
    poly_power: float = Field(2.0, gt=0.0)
    clip_grad_norm: float | None = Field(5.0, gt=0.0)
    min_images: int = Field(1, ge=1, description="drop identities with fewer images")
    workers: int = Field(2, ge=0, description="DataLoader decoding processes (when not pre-decoded)")
    predecode_max_mb: int = Field(2048, ge=0, description="pre-decode the set to a uint8 tensor when it fits")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    device: str = "auto"
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; null: torch's default")
    checkpoint_every: int = Field(1000, ge=1, description="steps between resumable checkpoints")
    log_every: int = Field(10, ge=1, description="steps between training-curve points")


class EvaluateBenchSection(Section):
    aligned: bool | Literal["auto"] = Field(
        "auto", description="benchmark images are 112x112 template crops; auto: yes when every image is 112x112"
    )
    batch_size: int = Field(64, ge=1)
    flip: bool = True
    folds: int = Field(10, ge=2)
    pairs_per_fold: int | None = Field(
        None,
        ge=1,
        description="a folder of people: same (and as many different) pairs drawn per fold; null: as many "
        "as the poorest fold allows, at most 300",
    )
    far: float = Field(1e-3, gt=0.0, lt=1.0)


class EvaluateRecipe(Section):
    seed: int = 0
    recognizer: RecognizerSection = RecognizerSection()
    train: RecognizerTrainSection = RecognizerTrainSection()
    bench: EvaluateBenchSection = EvaluateBenchSection()


# --------------------------------------------------------------------------- inspect / export


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


class ExportRecipe(Section):
    seed: int = 0
    format: Literal["imagefolder", "webdataset", "recordio"] = "imagefolder"
    shard_size: int = Field(10000, ge=1, description="samples per WebDataset tar")


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

R = TypeVar("R", bound=Section)


# --------------------------------------------------------------------------- loading and overrides


class RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader that also reads ``1e-4`` and ``5E+3`` as floats (YAML 1.2; PyYAML's 1.1
    rules need a dot, so strict recipe types would refuse them as strings)."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path} (pass an existing YAML file to --recipe)")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"recipe {path} is not UTF-8 text: save it as UTF-8 YAML and retry") from None
    except RecursionError:
        raise ConfigError(f"recipe {path} is nested too deeply to be a recipe: check the file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"recipe {path} is not valid YAML{where}: fix the syntax and retry") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping of keys to values, not {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value) with the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r} is not of the form key.sub=value (example: --set identities.count=6)")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], model: type[Section], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw recipe dict, rejecting keys the recipe does not have."""
    for text in overrides:
        path, value = parse_override(text)
        cls: Any = model
        node = data
        for depth, part in enumerate(path):
            fields = getattr(cls, "model_fields", None)
            if fields is None or part not in fields:
                known = ", ".join(sorted(fields)) if fields else "none (it is a plain value)"
                dotted = ".".join(path[: depth + 1])
                raise ConfigError(f"unknown recipe key '{dotted}' in --set {text!r}; keys here: {known}")
            if depth == len(path) - 1:
                node[part] = value
            else:
                annotation = fields[part].annotation
                cls = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return data


def _format_validation(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
    if err.get("type") == "extra_forbidden":
        return f"unknown recipe key '{key}' in {source}: remove it or check its spelling"
    msg = err.get("msg", "invalid value")
    if err.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
        if key == "(root)":  # a rule across sections (GenerateRecipe's validator) names its keys itself
            return f"{msg} (in {source})"
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"recipe key '{key}' in {source}: {msg}{shown}"


def load_recipe(model: type[R], recipe: str | Path | None = None, overrides: list[str] | None = None) -> R:
    """Load a recipe of type ``model`` from an optional YAML file plus ``--set`` overrides."""
    data: dict[str, Any] = _read_yaml(Path(recipe)) if recipe else {}
    overrides = list(overrides or [])
    source = f"recipe {recipe}" if recipe else "the defaults"
    if overrides:
        source += " with --set overrides"
    try:
        model.model_validate(data)  # name errors in the file itself before overrides land
    except ValidationError as exc:
        if not overrides:
            raise ConfigError(_format_validation(exc, source)) from None
    data = apply_overrides(data, model, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source)) from None


def config_dict(config: BaseModel) -> dict[str, Any]:
    return config.model_dump(mode="json")


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    """A stable sha256 of the resolved config (key order and float formatting independent)."""
    data = config_dict(config) if isinstance(config, BaseModel) else config
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff_keys(va, vb, dotted + "."))
        elif va != vb:
            out.append(dotted)
    return out


# settings of a generate recipe that cannot change an image: a resumed run may change them
RESUME_FREE_KEYS = ("sampling.batch_size", "sampling.overlap")


def resume_guard(config: dict[str, Any]) -> dict[str, Any]:
    """The config minus the keys a resumed run may change (they cannot change an image), and minus the
    variation section while it holds its defaults (so runs started before it existed still resume)."""
    guard = copy.deepcopy(config)
    if guard.get("variation") == VariationSection().model_dump(mode="json"):
        guard.pop("variation")
    for dotted in RESUME_FREE_KEYS:
        node = guard
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return guard


RESOLVED_HEADER = "# synthface resolved config"


def write_resolved(config: BaseModel, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config (with its hash) next to a command's output."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    data = config_dict(config)
    text = f"{RESOLVED_HEADER}, hash {config_hash(data)}\n" + yaml.safe_dump(data, sort_keys=False)
    from synthface.atomic import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def read_resolved(path: str | Path) -> dict[str, Any]:
    data = parse_yaml(Path(path).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}
