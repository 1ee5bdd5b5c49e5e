"""Verification accuracy of a pretrained face embedder on a pairs protocol (LFW pairs.txt or .bin)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthface.atomic import atomic_file
from synthface.config import VerifyRecipe
from synthface.faces.align import FaceDetector
from synthface.faces.batch import EmbedResult, embed_files
from synthface.faces.embedders import get_embedder
from synthface.faces.protocol import Embedder
from synthface.recognition.protocols import PairsProtocol, load_protocol
from synthface.recognition.verification import VerificationResult, evaluate_embeddings, plot_roc
from synthface.runtime import Progress

FAILED_PAIRS_POLICY = (
    "a pair with an image whose face was not found (or that could not be read) counts as a wrong "
    "decision in its fold and takes no part in choosing thresholds"
)


@dataclass
class PretrainedVerification:
    protocol: PairsProtocol
    result: VerificationResult
    embedded: EmbedResult
    embedder: str

    def summary(self) -> dict[str, Any]:
        failed = [
            str(self.protocol.images[i]) if isinstance(self.protocol.images[i], Path) else f"#{i}"
            for i, ok in enumerate(self.embedded.ok)
            if not ok
        ]
        out = self.result.to_dict()
        out.update(
            benchmark=self.protocol.name,
            embedder=self.embedder,
            images=len(self.protocol.images),
            failed_images=len(failed),
            failed_image_list=failed,
            failed_pairs_policy=FAILED_PAIRS_POLICY,
            image_status=self.embedded.counts(),
        )
        return out


def verify_embedder(
    pairs: str | Path,
    images: str | Path | None,
    recipe: VerifyRecipe,
    *,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> PretrainedVerification:
    """Embed every protocol image (flip-TTA when asked) and run the k-fold protocol."""
    protocol = load_protocol(pairs, images, n_folds=recipe.folds, seed=recipe.seed, pairs_per_fold=recipe.pairs_per_fold)
    embedder = embedder or get_embedder(recipe.embedder, device=recipe.device, weights=recipe.weights)
    aligned = recipe.aligned if recipe.aligned is not None else Path(pairs).suffix.lower() == ".bin"
    detector = None if aligned else FaceDetector(device=recipe.device, select=recipe.select)
    embedded = embed_files(
        protocol.images,
        embedder,
        detector,
        aligned=aligned,
        flip=recipe.flip,
        batch_size=recipe.batch_size,
        workers=2,
        progress=progress,
    )
    result = evaluate_embeddings(embedded.embeddings, protocol, fars=(recipe.far,), failed="wrong")
    return PretrainedVerification(protocol=protocol, result=result, embedded=embedded, embedder=embedder.name)


def save_embeddings(verification: PretrainedVerification, path: str | Path) -> Path:
    """Keep every protocol image's embedding (NaN rows for failures) so the pairs can be re-scored."""
    path = Path(path)
    names = [str(x) if isinstance(x, Path) else f"#{i}" for i, x in enumerate(verification.protocol.images)]
    with atomic_file(path) as handle:
        np.savez_compressed(
            handle,
            embeddings=verification.embedded.embeddings,
            status=np.array(verification.embedded.status),
            images=np.array(names),
            pairs=verification.protocol.pairs,
            issame=verification.protocol.issame,
            folds=verification.protocol.folds,
        )
    return path


def write_roc(verification: PretrainedVerification, path: str | Path) -> Path:
    curve = {verification.embedder: (verification.result.fpr, verification.result.tpr)}
    return plot_roc(curve, path, title=f"{verification.protocol.name}: {verification.embedder}")
