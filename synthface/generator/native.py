"""synthface's own generator: identity projector (embedding -> K tokens) + diffusers UNet (+ optional VAE).

On disk (diffusers layout)::

    MODEL/synthface.json     format, family "native", conditioning embedder + dim, image size, latent flag
    MODEL/unet/              UNet2DConditionModel.save_pretrained (safetensors)
    MODEL/projector/         IdentityProjector.save_pretrained (safetensors)
    MODEL/vae/               AutoencoderKL or TinyAutoencoder (TAEF2) .save_pretrained (latent models only)
    MODEL/scheduler/         the training noise scheduler's config
    MODEL/gallery.parquet    the training faces' conditioning embeddings (written by `synthface train`):
                             `identities.strategy: gallery` draws new identities from their statistics
                             and keeps them away from these real people when no gallery is named

synthface.json's ``files`` lists every other file of the folder with its size and sha256 (written
last, by :func:`seal`); loading checks them, so a changed or damaged file is an error, never a
silently different model. Folders written before the manifest existed load without the check.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from synthface.atomic import atomic_write_text
from synthface.config import NativeModelSection
from synthface.errors import ConfigError, InputError
from synthface.fingerprint import file_sha256, regular_files
from synthface.generator.families import Family, register_family
from synthface.generator.model import GeneratorModel
from synthface.generator.taef2 import vae_class, vae_downscale_factor

FORMAT = "synthface-native"
FORMAT_VERSION = 1
META_FILE = "synthface.json"
GALLERY_FILE = "gallery.parquet"


class IdentityProjector(ModelMixin, ConfigMixin):
    """Identity embedding (B, D) -> K cross-attention tokens (B, K, C): MLP + LayerNorm.

    A learned set of null tokens stands in for the identity on the unconditional branch; training
    swaps them in where ``drop_mask`` is true (condition dropout), which is what makes CFG work.
    """

    @register_to_config
    def __init__(self, embedding_dim: int = 512, num_tokens: int = 4, token_dim: int = 256, hidden_dim: int = 0):
        super().__init__()
        hidden = hidden_dim or max(embedding_dim, token_dim)
        self.mlp = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.GELU(), nn.Linear(hidden, num_tokens * token_dim))
        self.norm = nn.LayerNorm(token_dim)
        self.null_tokens = nn.Parameter(torch.randn(num_tokens, token_dim))

    def forward(self, embeddings: torch.Tensor, drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        b = embeddings.shape[0]
        k, c = self.config.num_tokens, self.config.token_dim
        x = embeddings.to(self.mlp[0].weight.dtype)
        tokens = self.norm(self.mlp(x).view(b, k, c))
        if drop_mask is not None:
            mask = drop_mask.to(device=tokens.device, dtype=torch.bool).view(b, 1, 1)
            tokens = torch.where(mask, self.null_tokens.to(tokens.dtype).expand(b, k, c), tokens)
        return tokens

    def null(self, batch: int) -> torch.Tensor:
        return self.null_tokens.unsqueeze(0).expand(batch, -1, -1)


@dataclass
class NativeMeta:
    """The contents of synthface.json."""

    embedder: str
    embedding_dim: int
    image_size: int
    latent: bool = False
    id_tokens: int = 4
    template_scale: float | None = 0.6
    family: str = "native"
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    # mean of the training conditioning embeddings: subtracted (then re-normalised) at training and sampling
    condition_mean: list[float] | None = None
    # relative path -> {"bytes": int, "sha256": str} of every other file in the folder (see seal())
    files: dict[str, dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "NativeMeta":
        file = path / META_FILE
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path} has no {META_FILE}: not a synthface native model") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {file}: {type(exc).__name__}; re-save the model") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{file} is not a synthface native model description (format != {FORMAT})")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise InputError(
                f"{file} has format_version {version!r}; this synthface reads <= {FORMAT_VERSION}: upgrade synthface"
            )
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        import typing

        from pydantic import TypeAdapter, ValidationError

        types = typing.get_type_hints(cls)
        values = {k: v for k, v in data.items() if k in known}
        for key, value in values.items():
            try:  # strict: "latent": "no" or "image_size": "64" is an error, not a truthy string or a cast
                TypeAdapter(types[key]).validate_python(value, strict=True)
            except ValidationError as exc:
                raise InputError(
                    f"{file}: key '{key}': {exc.errors()[0].get('msg')} (got {value!r}); fix it or re-save the model"
                ) from None
        try:
            meta = cls(**values)
        except TypeError as exc:
            raise InputError(f"{file} is missing a key ({exc}); re-save the model") from None
        meta.extra = {k: v for k, v in data.items() if k not in known}
        return meta

    def write(self, path: Path) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "extra"} | dict(self.extra)
        atomic_write_text(path / META_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")


def prepare_condition(embeddings: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """What the projector and the UNet's class embedding see: the embedding centred on the training mean.

    ``(e - mean) / |e - mean| * sqrt(D)``: centring removes the direction every face shares (so two
    people differ in most of the vector, not a small part of it) and the scale gives unit-variance
    entries. Without a stored mean (older models) the embedding passes through unchanged.
    """
    if mean is None:
        return embeddings
    x = embeddings.float() - mean.to(embeddings.device, torch.float32)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6) * math.sqrt(x.shape[-1])


def uses_class_embedding(unet: Any) -> bool:
    """True when the UNet adds a projected identity to its time embedding (class_embed_type 'projection')."""
    return getattr(unet.config, "class_embed_type", None) == "projection"


class NativeGenerator(GeneratorModel):
    """The native family as the sampling loop sees it."""

    family = "native"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        projector: IdentityProjector,
        meta: NativeMeta,
        scheduler_config: dict[str, Any],
        vae: AutoencoderKL | None = None,
        source: str = "",
    ) -> None:
        self.unet = unet
        self.projector = projector
        self.vae = vae
        self.meta = meta
        self.scheduler_config = dict(scheduler_config)
        self.embedder = meta.embedder
        self.embedding_dim = int(meta.embedding_dim)
        self.image_size = int(meta.image_size)
        self.template_scale = meta.template_scale
        self.source = source
        mean = meta.condition_mean
        self.condition_mean = torch.tensor(mean, dtype=torch.float32) if mean is not None else None

    def prepared(self, embeddings: torch.Tensor) -> torch.Tensor:
        return prepare_condition(embeddings.to(self.device), self.condition_mean)

    def condition(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.projector(self.prepared(embeddings))

    def uncondition(self, batch: int) -> torch.Tensor:
        return self.projector.null(batch)

    def class_labels(self, embeddings: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not uses_class_embedding(self.unet):
            return None
        if embeddings is None:  # the unconditional branch: the training mean itself (zeros once centred)
            return torch.zeros(batch, self.embedding_dim, device=self.device)
        return self.prepared(embeddings)

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.unet, self.projector, self.vae) if m is not None]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "NativeGenerator":
        target = torch.device(device) if device is not None else None
        for module in self.modules():
            first = next(module.parameters(), None)
            if first is None:
                continue
            if target is not None and not _same_device(first.device, target):
                module.to(target)
            if dtype is not None and first.dtype != dtype:
                module.to(dtype=dtype)
        return self

    def eval(self) -> "NativeGenerator":
        for module in self.modules():
            module.eval()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for m in self.modules() for p in m.parameters())

    def save(self, path: str | Path, weights_dtype: torch.dtype | None = None) -> Path:
        """Write the model in diffusers layout plus synthface.json (read back with :func:`load_native`).

        ``weights_dtype`` (e.g. ``torch.float16``) stores the weights in that precision (half the bytes;
        loading casts them back to the compute dtype, the projector to fp32). The folder is sealed:
        synthface.json lists every file's size and sha256.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, module in (("unet", self.unet), ("vae", self.vae), ("projector", self.projector)):
            if module is None:
                continue
            if weights_dtype is None:
                module.save_pretrained(path / name, safe_serialization=True)
                continue
            before = next(module.parameters()).dtype
            module.to(dtype=weights_dtype)
            try:
                module.save_pretrained(path / name, safe_serialization=True)
            finally:
                module.to(dtype=before)
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(path / "scheduler")
        self.meta.latent = self.vae is not None
        self.meta.write(path)
        return seal(path)


def seal(path: str | Path) -> Path:
    """Record the size and sha256 of every file of a model folder (but synthface.json) in synthface.json.

    Call it after the last file is written (``synthface train`` seals again once it adds gallery.parquet).
    """
    path = Path(path)
    meta = NativeMeta.read(path)
    meta.files = {
        file.relative_to(path).as_posix(): {"bytes": file.stat().st_size, "sha256": file_sha256(file)}
        for file in regular_files(path)
        if file.relative_to(path).as_posix() != META_FILE
    }
    meta.write(path)
    return path


def verify_files(path: Path, meta: NativeMeta) -> None:
    """Raise InputError naming the first file that is missing or differs from synthface.json's manifest."""
    for name, want in sorted((meta.files or {}).items()):
        file = path / name
        fix = f"restore {path} as it was written (re-download or re-export the model)"
        if not isinstance(want, dict) or not isinstance(want.get("sha256"), str):
            raise InputError(f"native model {path}: {META_FILE} lists {name} without a sha256: {fix}")
        if not file.is_file():
            raise InputError(f"native model {path}: {name} is missing: {fix}")
        if file.stat().st_size != want.get("bytes"):
            raise InputError(
                f"native model {path}: {name} has {file.stat().st_size} bytes where {META_FILE} says "
                f"{want.get('bytes')} (changed or truncated): {fix}"
            )
        if file_sha256(file) != want["sha256"]:
            raise InputError(f"native model {path}: {name} does not match its sha256 in {META_FILE} (changed or damaged): {fix}")


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    index = b.index if b.index is not None else (torch.cuda.current_device() if b.type == "cuda" else 0)
    return (a.index or 0) == index


def native_unet_config(
    sample_size: int,
    channels: int,
    block_out_channels: Sequence[int],
    token_dim: int,
    layers_per_block: int = 2,
    attention_head_dim: int = 8,
    norm_num_groups: int = 32,
    class_embedding_dim: int | None = None,
) -> dict[str, Any]:
    """UNet2DConditionModel kwargs: plain first (highest-resolution) level, cross-attention below it.

    ``class_embedding_dim`` adds the identity to the time embedding too (diffusers' projection class
    embedding), besides the cross-attention tokens.
    """
    n = len(block_out_channels)
    down = ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1) if n > 1 else ["CrossAttnDownBlock2D"]
    up = ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"] if n > 1 else ["CrossAttnUpBlock2D"]
    extra: dict[str, Any] = {}
    if class_embedding_dim:
        extra = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": int(class_embedding_dim)}
    return extra | {
        "sample_size": sample_size,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": tuple(block_out_channels),
        "down_block_types": tuple(down),
        "up_block_types": tuple(up),
        "layers_per_block": layers_per_block,
        "cross_attention_dim": token_dim,
        "attention_head_dim": attention_head_dim,
        "norm_num_groups": norm_num_groups,
    }


def default_scheduler_config(
    latent: bool,
    prediction_type: str = "epsilon",
    beta_schedule: str | None = None,
    zero_terminal_snr: bool = False,
    timestep_spacing: str = "leading",
) -> dict[str, Any]:
    """The DDPM noise schedule native models train with (clip x0 to [-1, 1] in pixel space only).

    ``zero_terminal_snr`` rescales the betas so the last timestep is pure noise (Lin et al. 2024);
    it needs v-prediction, and samplers should then start there (``timestep_spacing`` 'trailing').
    """
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise ConfigError("model.zero_terminal_snr needs model.prediction_type=v_prediction (epsilon is undefined at SNR 0)")
    sched = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule=beta_schedule or ("scaled_linear" if latent else "squaredcos_cap_v2"),
        prediction_type=prediction_type,
        clip_sample=not latent,
        rescale_betas_zero_snr=zero_terminal_snr,
        timestep_spacing=timestep_spacing,
    )
    return dict(sched.config)


def build_native(
    embedder: str,
    embedding_dim: int,
    section: NativeModelSection | None = None,
    *,
    vae: AutoencoderKL | None = None,
    template_scale: float | None = 0.6,
    seed: int = 0,
    condition_mean: Sequence[float] | None = None,
    scheduler_config: dict[str, Any] | None = None,
    **architecture: Any,
) -> NativeGenerator:
    """A freshly initialised native model (random weights from ``seed``), pixel space unless ``vae``.

    Its architecture is the recipe's model section (``section``; its defaults when None) with
    ``architecture`` (keys of that section: image_size, block_out_channels, id_tokens, token_dim,
    layers_per_block, attention_head_dim, norm_num_groups, class_embedding) put over it.
    ``class_embedding`` also adds the (prepared) identity to the UNet's time embedding;
    ``condition_mean`` centres the conditioning (see :func:`prepare_condition`).
    """
    m = _model_section(section, architecture)
    image_size, block_out_channels, id_tokens = m.image_size, m.block_out_channels, m.id_tokens
    layers_per_block, attention_head_dim, norm_num_groups = m.layers_per_block, m.attention_head_dim, m.norm_num_groups
    class_embedding = m.class_embedding
    token_dim = int(m.token_dim or block_out_channels[-1])
    if vae is not None:
        factor = vae_downscale_factor(vae)
        if image_size % factor:
            raise InputError(f"image_size {image_size} is not a multiple of the VAE's downscale factor {factor}")
        sample_size, channels = image_size // factor, int(vae.config.latent_channels)
    else:
        sample_size, channels = image_size, 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            **native_unet_config(
                sample_size,
                channels,
                block_out_channels,
                token_dim,
                layers_per_block,
                attention_head_dim,
                norm_num_groups,
                embedding_dim if class_embedding else None,
            )
        )
        projector = IdentityProjector(embedding_dim=embedding_dim, num_tokens=id_tokens, token_dim=token_dim)
    meta = NativeMeta(
        embedder=embedder,
        embedding_dim=embedding_dim,
        image_size=image_size,
        latent=vae is not None,
        id_tokens=id_tokens,
        template_scale=template_scale,
        condition_mean=[float(v) for v in condition_mean] if condition_mean is not None else None,
    )
    sched = scheduler_config if scheduler_config is not None else default_scheduler_config(vae is not None)
    return NativeGenerator(unet, projector, meta, sched, vae).eval()


def _model_section(section: NativeModelSection | None, architecture: dict[str, Any]) -> NativeModelSection:
    """``section`` (the defaults when None) with the ``architecture`` keys put over it, validated."""
    base = section if section is not None else NativeModelSection()
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in architecture.items()}
    return NativeModelSection.model_validate(base.model_dump() | given)


def is_native(path: Path) -> bool:
    file = path / META_FILE
    if not file.is_file():
        return False
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # claims to be ours; load_native reports what is wrong with it
    return isinstance(data, dict) and data.get("family", "native") == "native"


def _check_scheduler(path: Path, config: dict[str, Any]) -> None:
    """Refuse a scheduler config no sampler can use (0 timesteps, an unknown beta schedule, ...)."""
    from synthface.generator.schedules import make_scheduler

    steps = config.get("num_train_timesteps")
    problem = None
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        problem = f"num_train_timesteps is {steps!r}, not a positive integer"
    else:
        try:
            make_scheduler("ddpm", config).set_timesteps(min(steps, 2))
        except Exception as exc:  # noqa: BLE001 - diffusers raises ValueError, NotImplementedError, ...
            problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    if problem:
        raise InputError(
            f"native model {path}: scheduler/scheduler_config.json is unusable ({problem}): fix it or re-save the model"
        )


def load_native(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> NativeGenerator:
    """Load a native model written by :meth:`NativeGenerator.save` (or by `synthface train`)."""
    path = Path(path)
    meta = NativeMeta.read(path)
    for part in ("unet", "projector", "scheduler"):
        if not (path / part).is_dir():
            raise InputError(f"native model {path} lacks its {part}/ folder: re-save or re-download the model")
    if meta.latent and not (path / "vae").is_dir():
        raise InputError(f"native model {path} is latent but has no vae/ folder: re-save the model with its VAE")
    verify_files(path, meta)
    try:
        unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=dtype)
        projector = IdentityProjector.from_pretrained(path / "projector", torch_dtype=torch.float32)
        vae = vae_class(path / "vae").from_pretrained(path / "vae", torch_dtype=dtype) if meta.latent else None
        scheduler_config = dict(DDPMScheduler.load_config(path / "scheduler"))
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load native model {path}: {first}") from None
    if projector.config.embedding_dim != meta.embedding_dim:
        raise InputError(
            f"native model {path}: projector takes {projector.config.embedding_dim}-d embeddings but "
            f"{META_FILE} says {meta.embedding_dim}: fix {META_FILE} or re-save the model"
        )
    _check_scheduler(path, scheduler_config)
    tokens = projector.config.num_tokens
    side = int(unet.config.sample_size) * (vae_downscale_factor(vae) if vae is not None else 1)
    for key, said, found in (("id_tokens", meta.id_tokens, tokens), ("image_size", meta.image_size, side)):
        if said != found:
            raise InputError(
                f"native model {path}: {META_FILE} says {key} {said} but the weights have {found}: "
                f"fix {META_FILE} or re-save the model"
            )
    if meta.condition_mean is not None and len(meta.condition_mean) != meta.embedding_dim:
        raise InputError(
            f"native model {path}: condition_mean has {len(meta.condition_mean)} values but embedding_dim is "
            f"{meta.embedding_dim}: fix {META_FILE} or re-save the model"
        )
    model = NativeGenerator(unet, projector, meta, scheduler_config, vae, source=str(path))
    return model.to(device=torch.device(device)).eval()  # the projector stays fp32; its tokens are cast


register_family(
    Family(
        name="native",
        detect=is_native,
        load=lambda path, device, dtype: load_native(path, device, dtype),
        expects=f"{META_FILE} + unet/ + projector/ + scheduler/ (a synthface native model)",
        needs=lambda path, **_: ([], NativeMeta.read(Path(path)).embedder),  # everything else is in its folder
    )
)
