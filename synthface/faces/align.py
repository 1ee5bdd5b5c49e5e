"""Face detection (batched MTCNN) and similarity alignment to the ArcFace five-point template."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from synthface.errors import InputError

if TYPE_CHECKING:
    import torch

# The standard insightface ArcFace template for 112x112 crops: left eye, right eye, nose tip,
# left mouth corner, right mouth corner (subject's left/right as seen in the image).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)

# Flipping an image horizontally swaps these landmark indices.
FLIP_ORDER = [1, 0, 2, 4, 3]


@dataclass
class Face:
    """One detected face: box (x1, y1, x2, y2), five landmarks (5, 2) in pixels, detector score."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float


# --------------------------------------------------------------------------- image loading


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (grayscale, palette, RGBA, CMYK, 16-bit, float) to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


# Faces need no more than this many pixels a side: larger images are downscaled as they are decoded
# (JPEG's draft mode decodes at 1/2, 1/4 or 1/8 scale), so a 12000x12000 photo costs megabytes, not gigabytes.
MAX_SIDE = 2048
# Images of other formats are decoded whole first: above this many pixels they are refused.
MAX_PIXELS = 64_000_000


def load_image(source: str | Path | bytes) -> np.ndarray:
    """Read an image file (or encoded bytes) as HxWx3 uint8 RGB, applying EXIF orientation; at most
    ``MAX_SIDE`` pixels a side (larger ones are downscaled), refused above ``MAX_PIXELS`` undecoded."""
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)) and Path(source).exists() and not Path(source).is_file():
        raise InputError(f"cannot read image {name}: not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
            with handle, Image.open(handle) as img:
                if max(img.size) > MAX_SIDE:
                    img.draft(img.mode, (MAX_SIDE, MAX_SIDE))  # JPEG only; a no-op for other formats
                    if img.size[0] * img.size[1] > MAX_PIXELS:
                        raise InputError(
                            f"image {name} is {img.size[0]}x{img.size[1]} pixels, more than {MAX_PIXELS:,}: downscale it"
                        )
                img.load()
                img = ImageOps.exif_transpose(img) or img
                rgb = _to_rgb(img)
                if max(rgb.size) > MAX_SIDE:
                    rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BILINEAR)
                return np.array(rgb, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"image not found: {name}") from None
    except Image.DecompressionBombError:
        raise InputError(f"image {name} has more than {MAX_PIXELS:,} pixels (a decompression bomb?): downscale it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read image {name}: {type(exc).__name__}") from None


# --------------------------------------------------------------------------- geometry


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src points onto dst.

    Umeyama's closed form; returns the 2x3 forward matrix M with dst ~= M @ [x, y, 1].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_s = (s_c**2).sum() / len(src)
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]]).astype(np.float64)


def loose_template(size: int = 128, scale: float = 0.6) -> np.ndarray:
    """The ArcFace points scaled by `scale` around the centre of a `size` canvas (context around the face)."""
    centred = (ARCFACE_TEMPLATE - 56.0) * (size / 112.0) * scale
    return (centred + size / 2.0).astype(np.float32)


def template_for(size: int = 112, scale: float = 1.0) -> np.ndarray:
    """The five-point template for a `size` crop; scale 1 is the tight ArcFace template."""
    if scale == 1.0:
        return (ARCFACE_TEMPLATE * (size / 112.0)).astype(np.float32)
    return loose_template(size, scale)


def template_landmarks(size: int = 112, n: int = 1, scale: float = 1.0) -> np.ndarray:
    """Landmarks of `n` crops already aligned to the template: (n, 5, 2)."""
    return np.repeat(template_for(size, scale)[None], n, axis=0)


def warp_face(
    image: np.ndarray, landmarks: np.ndarray, size: int = 112, scale: float = 1.0, template: np.ndarray | None = None
) -> np.ndarray:
    """Warp `image` so its five landmarks land on the template of a `size` x `size` crop."""
    dst = template if template is not None else template_for(size, scale)
    forward = similarity_transform(landmarks, dst)
    inverse = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))[:2]
    pil = Image.fromarray(image)
    warped = pil.transform(
        (size, size), Image.Transform.AFFINE, data=inverse.flatten().tolist(), resample=Image.Resampling.BICUBIC
    )
    return np.asarray(warped, dtype=np.uint8)


def _inverse_affines(landmarks: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(B, 2, 3) output pixel -> input pixel maps of :func:`warp_face`'s similarity transforms."""
    out = np.zeros((len(landmarks), 2, 3), np.float64)
    for i, lm in enumerate(landmarks):
        forward = similarity_transform(lm, dst)
        out[i] = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))[:2]
    return out


def _cubic_weights(d: torch.Tensor) -> torch.Tensor:
    """PIL's affine bicubic kernel (a = -1) at fractional offsets ``d``: weights of taps -1, 0, 1, 2."""
    import torch

    d2 = d * d
    d3 = d2 * d
    return torch.stack([-d + 2 * d2 - d3, 1 - 2 * d2 + d3, d + d2 - d3, d3 - d2], -1)


def warp_faces(
    images: np.ndarray | Sequence[np.ndarray] | torch.Tensor,
    landmarks: np.ndarray,
    size: int = 112,
    scale: float = 1.0,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """:func:`warp_face` for a batch, as one tensor operation on ``device``: (B, 3, size, size) float32.

    ``images``: B same-sized HxWx3 uint8 RGB images (a list, a (B, H, W, 3) array or uint8 tensor).
    The similarity transforms are estimated per face as :func:`warp_face` does; the warp itself is
    PIL's affine bicubic (output pixel centres mapped through the inverse transform, a = -1 kernel
    on clamped taps, 0 where a centre falls outside the image, truncated to integers) computed for
    every face at once in float64, so the crops equal :func:`warp_face`'s up to one grey level where
    the two roundings straddle an integer (0.1% to 1.5% of the values on LFW photos). Values are the
    integers 0..255 as floats.
    """
    import torch

    lms = np.asarray(landmarks, np.float64)
    if torch.is_tensor(images):
        x: torch.Tensor = images
    else:
        x = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)) if not isinstance(images, np.ndarray) else images))
    if x.ndim != 4 or x.shape[-1] != 3 or len(lms) != x.shape[0]:
        raise InputError(f"warp_faces takes (B, H, W, 3) images and (B, 5, 2) landmarks, got {tuple(x.shape)} and {lms.shape}")
    dev = torch.device(device) if device is not None else x.device
    n, h, w, c = x.shape
    if n == 0:
        return torch.zeros((0, c, size, size), dtype=torch.float32, device=dev)
    x = x.to(dev).permute(0, 3, 1, 2).reshape(n, c, h * w).to(torch.float64)
    inverse = torch.from_numpy(_inverse_affines(lms, template_for(size, scale))).to(dev)
    g = torch.arange(size, dtype=torch.float64, device=dev) + 0.5
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    centres = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(-1, 3)
    src = torch.einsum("bij,nj->bni", inverse, centres)  # (B, size*size, 2) input pixel coordinates
    sx, sy = src[..., 0], src[..., 1]
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    fx, fy = sx - 0.5, sy - 0.5
    x0, y0 = torch.floor(fx), torch.floor(fy)
    wx, wy = _cubic_weights(fx - x0), _cubic_weights(fy - y0)  # (B, N, 4)
    taps = torch.arange(-1, 3, dtype=torch.float64, device=dev)
    ix = (x0[..., None] + taps).clamp(0, w - 1).long()
    iy = (y0[..., None] + taps).clamp(0, h - 1).long()
    index = (iy[..., :, None] * w + ix[..., None, :]).reshape(n, 1, -1).expand(n, c, -1)
    values = torch.gather(x, 2, index).reshape(n, c, -1, 4, 4)
    rows = (values * wx[:, None, :, None, :]).sum(-1)  # along x, per tap row
    out = (rows * wy[:, None]).sum(-1) * inside[:, None]
    out = out.clamp(0, 255).floor()
    return out.reshape(n, c, size, size).to(torch.float32)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def flip_inputs(
    images: Sequence[np.ndarray], landmarks: np.ndarray, boxes: np.ndarray | None = None
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
    """Mirror images horizontally and map landmarks (with left/right swapped) and boxes to match."""
    flipped, lms, bxs = [], np.array(landmarks, dtype=np.float32, copy=True), None
    for i, img in enumerate(images):
        w = img.shape[1]
        flipped.append(np.ascontiguousarray(img[:, ::-1]))
        lms[i, :, 0] = (w - 1) - lms[i, :, 0]
        lms[i] = lms[i][FLIP_ORDER]
    if boxes is not None:
        bxs = np.array(boxes, dtype=np.float32, copy=True)
        for i, img in enumerate(images):
            w = img.shape[1]
            x1, x2 = bxs[i, 0], bxs[i, 2]
            bxs[i, 0], bxs[i, 2] = (w - 1) - x2, (w - 1) - x1
    return flipped, lms, bxs


# --------------------------------------------------------------------------- detection


class FaceDetector:
    """Batched MTCNN (facenet-pytorch's bundled weights) returning one chosen face per image."""

    def __init__(
        self,
        device: str = "auto",
        min_face_size: int = 20,
        select: str = "center",
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        score_threshold: float = 0.0,
    ) -> None:
        from facenet_pytorch import MTCNN

        from synthface.runtime import resolve_device

        if select not in ("largest", "center"):
            raise InputError(f"unknown face selection '{select}': use largest or center")
        self.device = resolve_device(device)
        self.min_face_size = min_face_size
        self.select = select
        self.score_threshold = score_threshold
        self._mtcnn = MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), keep_all=True, device=self.device)

    def too_small(self, image: np.ndarray) -> bool:
        """True for an image with a side under ``min_face_size``: MTCNN finds no face smaller than that
        (its image pyramid would be empty), so such an image has none to find."""
        return min(image.shape[:2]) < self.min_face_size

    def detect_all(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Every face in each image (images of the same size are detected in one batch); none in an
        image that is :meth:`too_small`."""
        out: list[list[Face]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            if not self.too_small(img):
                groups.setdefault(img.shape[:2], []).append(i)
        for idx in groups.values():
            batch = np.stack([images[i] for i in idx])
            boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
            for j, i in enumerate(idx):
                if boxes[j] is None:
                    continue
                for b, p, lm in zip(boxes[j], probs[j], points[j]):
                    if p is None or float(p) < self.score_threshold:
                        continue
                    out[i].append(Face(np.asarray(b, np.float32), np.asarray(lm, np.float32), float(p)))
        return out

    def choose(self, faces: list[Face], shape: tuple[int, ...]) -> Face | None:
        if not faces:
            return None
        if self.select == "largest":
            return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        cy, cx = shape[0] / 2.0, shape[1] / 2.0

        def dist(f: Face) -> float:
            fx, fy = (f.box[0] + f.box[2]) / 2.0, (f.box[1] + f.box[3]) / 2.0
            return float((fx - cx) ** 2 + (fy - cy) ** 2)

        return min(faces, key=dist)

    def detect(self, images: Sequence[np.ndarray]) -> list[Face | None]:
        """The chosen face of each image, or None where none was found."""
        return [self.choose(faces, img.shape) for faces, img in zip(self.detect_all(images), images)]
