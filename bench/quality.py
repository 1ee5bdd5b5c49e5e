"""Quality figures of face datasets side by side (synthface.dataset.quality): real reference points and generated sets.

Each set is a synthface dataset (shards), an ImageFolder of 112x112 ArcFace-template crops (one
folder per person) or a RecordIO file, read as recognizers read it. Per set: identity consistency,
separability, embedding spread, pose spread (yaw/pitch/roll from MTCNN's five landmarks on the
stored crops), MTCNN detection rate and confidence; against the reference set: the Frechet
distance and k-NN precision/recall in the judge's embedding space.

    python bench/quality.py --reference lfw-train=data/lfw-train-aligned112 \
        --set lfw-test=data/lfw-test-aligned112 --set synthetic=runs/protocol/synthetic \
        --judge sface --out bench/results/quality.json

The judge should be an embedder that did not condition or filter a generated set (dlib for SFace
models) for the consistency figures; the distances need one embedder for all sets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthface.dataset import quality  # noqa: E402
from synthface.dataset.reader import open_training_set  # noqa: E402
from synthface.faces.embedders import embed_aligned, get_embedder  # noqa: E402
from synthface.faces.embedders import DEFAULT_THRESHOLDS  # noqa: E402


def load_set(path: str, max_identities: int, per_identity: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Up to ``max_identities`` identities (seeded choice) x ``per_identity`` images, decoded as uint8 HWC."""
    data = open_training_set(path, size=112, min_images=1)
    rng = np.random.default_rng(seed)
    ids = rng.permutation(data.num_classes)[:max_identities]
    crops, labels = [], []
    for c in ids:
        rows = np.flatnonzero(data.labels == c)[:per_identity]
        for i in rows:
            img, _ = data[int(i)]
            crops.append(img.permute(1, 2, 0).numpy())  # the readers decode to uint8 (3, H, W)
            labels.append(int(c))
    return crops, np.asarray(labels)


def figures(crops: list[np.ndarray], labels: np.ndarray, embedder, detector, threshold: float) -> tuple[dict, np.ndarray]:
    t0 = time.time()
    emb = embed_aligned(embedder, crops)
    faces = detector.detect(crops)
    found = np.array([f is not None for f in faces])
    out = {
        "images": int(len(crops)),
        "identities": int(len(np.unique(labels))),
        "consistency": quality.consistency(emb, labels, threshold),
        "separability": quality.separability(emb, labels, threshold),
        "spread": quality.embedding_spread(emb, labels),
        "detection_rate": float(found.mean()),
        "detection_score": float(np.mean([f.score for f in faces if f is not None])) if found.any() else None,
    }
    if found.sum() >= 2:
        lms = np.stack([f.landmarks for f in faces if f is not None])
        out["pose"] = quality.pose_spread(quality.head_pose(lms), labels[found])
    out["seconds"] = round(time.time() - t0, 1)
    return out, emb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="NAME=PATH of the real reference set")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="NAME=PATH of a set to compare (repeatable)")
    ap.add_argument("--judge", default="sface", help="embedder of every figure")
    ap.add_argument("--max-identities", type=int, default=300)
    ap.add_argument("--per-identity", type=int, default=8)
    ap.add_argument("--k", type=int, default=3, help="k of k-NN precision/recall")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from synthface.faces.align import FaceDetector

    embedder = get_embedder(args.judge)
    detector = FaceDetector(device="cpu")
    threshold = DEFAULT_THRESHOLDS.get(args.judge)
    result: dict = {
        "judge": args.judge,
        "threshold": threshold,
        "k": args.k,
        "max_identities": args.max_identities,
        "per_identity": args.per_identity,
        "sets": {},
    }
    specs = [args.reference] + args.sets
    ref_name = args.reference.split("=", 1)[0]
    ref_emb = None
    for spec in specs:
        name, _, path = spec.partition("=")
        crops, labels = load_set(path, args.max_identities, args.per_identity, args.seed)
        fig, emb = figures(crops, labels, embedder, detector, threshold)
        if ref_emb is None:
            ref_emb = emb
        else:
            fig["frechet_distance"] = quality.frechet_distance(emb, ref_emb)
            fig["knn"] = quality.knn_precision_recall(emb, ref_emb, args.k)
        fig["path"] = path
        result["sets"][name] = fig
        c, s, p = fig["consistency"], fig["spread"], fig.get("pose", {})
        print(
            f"{name}: {fig['identities']} ids, {fig['images']} images; consistency {c['cos_to_centre']['mean']:.3f} "
            f"(within {threshold}: {c.get('within_threshold', float('nan')):.3f}); spread {s['spread'].get('mean', float('nan')):.3f}; "
            f"nearest other {fig['separability']['nearest_other'].get('median', float('nan')):.3f}; "
            f"yaw std {p.get('yaw', {}).get('within_identity_std', {}).get('mean', float('nan')):.1f} deg; "
            f"detected {fig['detection_rate']:.3f}"
            + (
                f"; FD to {ref_name} {fig['frechet_distance']:.4f}, precision {fig['knn']['precision']:.3f}, "
                f"recall {fig['knn']['recall']:.3f}"
                if "knn" in fig
                else ""
            ),
            flush=True,
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
