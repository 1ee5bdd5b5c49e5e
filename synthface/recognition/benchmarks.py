"""Verification benchmarks for trained recognizers: load once (decode, align if needed), embed, score.

A benchmark spec is ``PAIRS.txt:IMAGES_DIR`` (LFW ``pairs.txt`` format plus a folder
of one sub-folder per person) or ``FILE.bin`` (insightface). Images that are not
already 112x112 ArcFace-template crops are detected and aligned (MTCNN five points,
similarity warp); an image where no face is found counts as a failed pair (always
wrong). Embeddings use flip test-time augmentation (original + mirrored embeddings
summed, then L2-normalised), then insightface's 10-fold protocol and TAR@FAR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthface.embeddings import l2n_or_nan
from synthface.errors import InputError
from synthface.files import images_in
from synthface.recognition.protocols import PairsProtocol, load_protocol, read_pairs
from synthface.recognition.verification import VerificationResult, combine_flipped, evaluate_embeddings
from synthface.runtime import Progress, progress_or_null

TEMPLATE_SIZE = 112


@dataclass
class Benchmark:
    """A loaded benchmark: its protocol, one 112x112 uint8 crop per image, and which images failed."""

    name: str
    spec: str
    protocol: PairsProtocol
    crops: torch.Tensor
    failed: np.ndarray
    aligned_input: bool

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "pairs": len(self.protocol),
            "images": len(self.protocol.images),
            "failed_images": int(self.failed.sum()),
            "aligned_input": self.aligned_input,
        }


def split_spec(spec: str) -> tuple[Path, Path | None]:
    """``FILE.bin``, ``PAIRS.csv`` or a folder of people -> (it, None); ``PAIRS.txt:IMAGES_DIR`` or
    ``PAIRS.csv:IMAGES_DIR`` -> (pairs file, images folder)."""
    if spec.lower().endswith((".bin", ".csv")) and ":" not in Path(spec).name:
        return Path(spec), None
    if Path(spec).is_dir():
        return Path(spec), None
    for i, ch in enumerate(spec):
        if ch == ":" and Path(spec[:i]).is_file():
            return Path(spec[:i]), Path(spec[i + 1 :])
    if Path(spec).suffix.lower() == ".bin":
        return Path(spec), None
    raise InputError(
        f"benchmark spec '{spec}' is neither FILE.bin, PAIRS.csv, a folder of people nor PAIRS.txt:IMAGES_DIR with an existing pairs file"
    )


def _image_ext(images_dir: Path) -> str:
    """The extension the folder's images use (LFW: .jpg, synthface align output: .png)."""
    counts: dict[str, int] = {}
    for n, person in enumerate(sorted(p for p in images_dir.iterdir() if p.is_dir())):
        for f in images_in(person):
            counts[f.suffix] = counts.get(f.suffix, 0) + 1
        if n >= 20:
            break
    if not counts:
        raise InputError(f"no images in the person folders of {images_dir}")
    return max(counts, key=lambda k: counts[k])


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def load_benchmark(
    name: str,
    spec: str,
    *,
    aligned: bool | str = "auto",
    folds: int = 10,
    batch_size: int = 64,
    device: str = "auto",
    progress: Progress | None = None,
    seed: int = 0,
    pairs_per_fold: int | None = None,
) -> Benchmark:
    """Load a benchmark and turn every image into a 112x112 template crop (aligning raw images)."""
    path, images_dir = split_spec(spec)
    if images_dir is None or path.suffix.lower() == ".csv":
        protocol = load_protocol(path, images_dir, n_folds=folds, seed=seed, pairs_per_fold=pairs_per_fold)
    else:
        if not images_dir.is_dir():
            raise InputError(f"benchmark image folder {images_dir} does not exist")
        protocol = read_pairs(path, images_dir, n_folds=folds, ext=_image_ext(images_dir))
    protocol.name = name
    bar = progress_or_null(progress)
    n = len(protocol.images)
    bar.start(n, f"load {name}")
    images = []
    for i in range(n):
        images.append(protocol.load_image(i))
        bar.advance(1)
    bar.finish()
    if aligned == "auto":
        aligned = all(im.shape[:2] == (TEMPLATE_SIZE, TEMPLATE_SIZE) for im in images)
    failed = np.zeros(n, dtype=bool)
    crops = torch.empty((n, 3, TEMPLATE_SIZE, TEMPLATE_SIZE), dtype=torch.uint8)
    if aligned:
        for i, im in enumerate(images):
            crops[i] = torch.from_numpy(np.array(_resize(im, TEMPLATE_SIZE))).permute(2, 0, 1)
    else:
        from synthface.faces.align import FaceDetector, warp_face

        detector = FaceDetector(device=device)
        bar.start(n, f"align {name}")
        for start in range(0, n, batch_size):
            chunk = images[start : start + batch_size]
            for j, face in enumerate(detector.detect(chunk)):
                i = start + j
                if face is None:
                    failed[i] = True
                    crops[i] = 0
                else:
                    crop = warp_face(images[i], face.landmarks, size=TEMPLATE_SIZE)
                    crops[i] = torch.from_numpy(crop).permute(2, 0, 1)
            bar.advance(len(chunk))
        bar.finish()
    return Benchmark(name, spec, protocol, crops, failed, bool(aligned))


@torch.no_grad()
def embed_crops(
    backbone: torch.nn.Module,
    crops: torch.Tensor,
    *,
    input_size: int,
    batch_size: int = 64,
    flip: bool = True,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """L2-normalised embeddings of uint8 crops (N, 3, 112, 112); flip-TTA sums both views first."""
    from synthface.recognition.train import normalize_images

    was_training = backbone.training
    backbone.eval()
    outs, outs_flip = [], []
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        if chunk.shape[-1] != input_size:
            chunk = torch.stack(
                [torch.from_numpy(np.array(_resize(c.permute(1, 2, 0).numpy(), input_size))).permute(2, 0, 1) for c in chunk]
            )
        x = normalize_images(chunk.to(device))
        outs.append(backbone(x).float().cpu().numpy())
        if flip:
            outs_flip.append(backbone(torch.flip(x, dims=[3])).float().cpu().numpy())
    backbone.train(was_training)
    emb = np.concatenate(outs) if outs else np.zeros((0, 1))
    if flip:
        return combine_flipped(emb, np.concatenate(outs_flip))
    return l2n_or_nan(emb)


def evaluate_benchmark(
    backbone: torch.nn.Module,
    bench: Benchmark,
    *,
    input_size: int,
    batch_size: int = 64,
    flip: bool = True,
    far: float = 1e-3,
    device: str | torch.device = "cpu",
) -> VerificationResult:
    """Verification figures of ``backbone`` on ``bench`` (failed images count as wrong pairs)."""
    emb = embed_crops(backbone, bench.crops, input_size=input_size, batch_size=batch_size, flip=flip, device=device)
    emb[bench.failed] = np.nan
    return evaluate_embeddings(emb, bench.protocol, fars=(far,))
