"""The recipe of `synthface train` (and `synthface train-head`): the native model, its training and its data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from synthface.config.base import DEFAULT_EMBEDDER, Section


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
