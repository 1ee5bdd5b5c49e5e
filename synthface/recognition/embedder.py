"""A recognizer trained by `synthface evaluate` (its ``recognizer.pt``) as an Embedder.

It aligns as the recognizer was trained: the five landmarks warped to the 112x112 ArcFace template,
resized to the recognizer's input size, flip-TTA summed, L2-normalised (the verification protocol's
embedding). Useful as a judge that neither conditioned, filtered nor guided a generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from synthface.faces.align import warp_face
from synthface.recognition.benchmarks import TEMPLATE_SIZE, embed_crops
from synthface.recognition.train import load_recognizer

PREFIX = "recognizer:"


class RecognizerEmbedder:
    """``embed(images, landmarks)`` with a trained recognizer; ``name`` is ``recognizer:<path>``."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 64) -> None:
        self.backbone, self.meta = load_recognizer(path, device=device)
        self.name = f"{PREFIX}{path}"
        self.dim = int(self.meta["embedding_dim"])
        self.input_size = int(self.meta["input_size"])
        self.device = device
        self.batch_size = batch_size

    def embed(self, images: Sequence[np.ndarray], landmarks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        crops = np.stack([warp_face(np.asarray(img, np.uint8), lm, size=TEMPLATE_SIZE) for img, lm in zip(images, landmarks)])
        tensor = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
        emb = embed_crops(
            self.backbone, tensor, input_size=self.input_size, batch_size=self.batch_size, flip=True, device=self.device
        )
        return emb.astype(np.float32)
