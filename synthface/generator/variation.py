"""Per-image variation controls: identity jitter on the sphere, a guidance-scale range, a style start.

A recognizer needs every image of a person to be that person and the images to vary the way photos
do. Noise seeds alone give a generator's habitual pose and light; these controls buy more variation
at a measured cost in consistency (BENCHMARKS.md "quality"):

* **identity jitter** (``variation.identity_cosine: [low, high]``): each image is conditioned on its
  identity vector moved on the unit sphere, in a random direction orthogonal to it, to a cosine drawn
  from [low, high] (the per-image perturbation Vec2Face samples from). [1, 1] conditions on the
  identity itself.
* **guidance range** (``variation.guidance_scale: [low, high]``): each image's classifier-free
  guidance scale is drawn from the range; lower guidance trades identity strength for diversity.
* **style start** (``variation.style_bank`` + ``style_strength``): each image starts from a style
  image of the bank, encoded and noised to the point of the schedule where ``style_strength`` of it
  is left to run (SDEdit, Meng et al. 2022): coarse pose and lighting come from the style image, the
  identity from the conditioning. The leakage check guards against the bank's people showing through.

Every draw is a pure function of the sample's seed: a numpy generator seeded with (seed,
``STREAM``) draws, in this fixed order, the cosine, the guidance scale, the style row and then the
jitter direction, so turning one control on never changes another's draws, and a resumed or
re-sharded run draws the same values. The values are stored per image in the shard columns
``condition_cosine``, ``guidance_scale`` and ``style`` (the bank row; -1 for pure noise), written
only when a control is on so the shards of a run without variation are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from synthface.errors import InputError

STREAM = 0x7661726E  # separates these draws from everything else seeded by the sample seed
STYLE_BANK_LIMIT = 20_000  # images held in memory (uint8 at the model's side)


class ImageDraw(NamedTuple):
    """What was drawn for one image: the shard columns ``condition_cosine``, ``guidance_scale``, ``style``."""

    cosine: float  # target cosine of the conditioning vector to the identity
    guidance: float  # CFG scale
    style: int  # style-bank row, -1 for pure noise


@dataclass(frozen=True)
class Draws:
    """A batch's per-image values: conditioning vectors and what was drawn for each image."""

    embeddings: np.ndarray  # (B, D) float32: the vectors the model is conditioned on
    cosine: np.ndarray  # (B,) float32 target cosine of each vector to its identity
    guidance: np.ndarray  # (B,) float32 CFG scale of each image
    style: np.ndarray  # (B,) int64 style-bank row, -1 for pure noise

    def image(self, k: int) -> ImageDraw | None:
        """What was drawn for the batch's image ``k``."""
        return ImageDraw(float(self.cosine[k]), float(self.guidance[k]), int(self.style[k]))

    def style_images(self, bank: StyleBank | None) -> Any:
        """The images each sample starts from (a float tensor, see :meth:`StyleBank.batch`); None without a bank."""
        return None if bank is None else bank.batch(self.style)


@dataclass(frozen=True)
class NoDraws:
    """The null :class:`Draws`, for a run with every variation control off: each image is conditioned
    on its identity vector as planned, at the recipe's guidance scale, from pure noise, and nothing
    drawn is recorded (the shards carry no variation columns)."""

    embeddings: np.ndarray  # (B, D): the identity vectors themselves
    guidance: float  # sampling.guidance_scale, one scale for the batch

    def image(self, k: int) -> ImageDraw | None:
        return None

    def style_images(self, bank: StyleBank | None) -> Any:
        return None


def draws_for(
    section: Any, embeddings: np.ndarray, seeds: Sequence[int], guidance_scale: float, bank_size: int = 0
) -> Draws | NoDraws:
    """The batch's :class:`Draws` when a variation control is on (``section.active``), else :class:`NoDraws`."""
    if not section.active:
        return NoDraws(embeddings, guidance_scale)
    return draw(section, embeddings, seeds, guidance_scale, bank_size)


def jitter(embedding: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """``embedding`` moved on the unit sphere to exactly ``cosine`` from it, in a random orthogonal direction.

    The result has the input's norm. ``cosine`` 1 returns the input unchanged (no draw is used).
    """
    e = np.asarray(embedding, np.float64)
    if cosine >= 1.0:
        return np.asarray(embedding, np.float32)
    norm = float(np.linalg.norm(e))
    if norm == 0.0:
        raise InputError("cannot jitter a zero identity embedding: the identity plan holds an all-zero vector")
    unit = e / norm
    u = rng.standard_normal(e.shape[0])
    u -= float(u @ unit) * unit
    u /= float(np.linalg.norm(u))
    moved = cosine * unit + float(np.sqrt(max(0.0, 1.0 - cosine * cosine))) * u
    return (moved * norm).astype(np.float32)


def draw(section: Any, embeddings: np.ndarray, seeds: Sequence[int], guidance_scale: float, bank_size: int = 0) -> Draws:
    """The per-image values of a batch: ``embeddings`` (B, D) are the images' identity vectors."""
    embeddings = np.asarray(embeddings, np.float32)
    n = len(seeds)
    cos_lo, cos_hi = (float(v) for v in section.identity_cosine)
    g_range = section.guidance_scale
    rows, cosine, guidance, style = [], np.ones(n, np.float32), np.full(n, guidance_scale, np.float32), np.full(n, -1, np.int64)
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, STREAM])
        u_cos, u_g, u_style = rng.random(3)
        if not cos_lo == cos_hi == 1.0:
            cosine[i] = cos_lo + (cos_hi - cos_lo) * u_cos
        if g_range is not None:
            guidance[i] = float(g_range[0]) + (float(g_range[1]) - float(g_range[0])) * u_g
        if bank_size:
            style[i] = min(int(u_style * bank_size), bank_size - 1)
        rows.append(jitter(embeddings[i], float(cosine[i]), rng))
    out = np.stack(rows) if rows else embeddings[:0]
    return Draws(out, cosine, guidance, style)


class StyleBank:
    """The style images, decoded once, sorted by file name, resized to the model's side (uint8 HxWx3)."""

    def __init__(self, folder: str | Path, size: int) -> None:
        from PIL import Image

        from synthface.faces.align import load_image
        from synthface.files import list_images

        root = Path(folder).expanduser()
        if not root.is_dir():
            raise InputError(f"variation.style_bank {root} is not a folder: point it at a folder of face images")
        files = list_images(root)
        if not files:
            raise InputError(
                f"variation.style_bank {root} holds no images (.jpg, .png, ...): add face images framed like the renders"
            )
        if len(files) > STYLE_BANK_LIMIT:
            raise InputError(
                f"variation.style_bank {root} holds {len(files)} images, more than {STYLE_BANK_LIMIT}: use a smaller bank"
            )
        images = []
        for path in files:
            try:
                rgb = Image.fromarray(load_image(path))  # bounded: a pixel cap, JPEG draft downscaling
            except InputError as exc:
                raise InputError(f"variation.style_bank: {exc}: remove or replace it") from None
            images.append(np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC), np.uint8))
        self.root = root
        self.files = [p.relative_to(root).as_posix() for p in files]
        self.images = np.stack(images)

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, rows: np.ndarray) -> Any:
        """Rows of the bank as a float tensor (B, 3, H, W) in [0, 1]."""
        import torch

        return torch.from_numpy(self.images[np.asarray(rows, np.int64)]).permute(0, 3, 1, 2).float().div(255.0)
