"""The recipe of `synthface evaluate`: the recognizer, its training and the benchmarks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthface.config.base import Section


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
