"""How well does the identity-consistency filter reject wrong faces? Measured on real LFW people.

Every LFW person with >= 10 images (158 people, 4,324 images) becomes one "identity": its own
images plus ~10% images of other people (drawn from the LFW people with fewer than 10 images,
seeded) under its label. Each identity goes through the filter exactly as `synthface generate`
runs it: ``FilterSelector`` with the robust-centre anchor (no identity embedding exists for real
people), oversample 1, every passing image kept. An image counts as rejected when the filter does
not keep it; precision and recall are those of rejecting the wrong images.

Sources:
  aligned  112x112 ArcFace-template crops (from `synthface align`): the template-model path
           (``template_scale`` 1, no detector), like a native model's output
  raw      the original 250x250 photos: the detector path (MTCNN, then each embedder's own
           alignment), like Arc2Face's output; an image without a face counts as rejected

Detection and embedding run once; the threshold sweep re-runs the selection on the cached scores
(``FilterSelector.decide``, the second half of ``select``).

    OMP_NUM_THREADS=1 python bench/filter_lfw.py --source aligned --embedder dlib

--aligned (default data/lfw-aligned) is made from --raw with `synthface align`'s defaults when absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synthface.faces.align import load_image  # noqa: E402
from synthface.lfw import IMAGES, lfw_dir  # noqa: E402
from synthface.faces.embedders import default_threshold  # noqa: E402
from synthface.filter_settings import FilterSettings  # noqa: E402
from synthface.filtering import KEPT, FaceScorer, FilterSelector, Scored  # noqa: E402
from synthface.selection import Candidate  # noqa: E402


def people_images(root: Path, ext: str) -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob(f"*.{ext}")) for d in sorted(root.iterdir()) if d.is_dir()}


def build_sets(
    people: dict[str, list[Path]], min_images: int, fraction: float, seed: int
) -> list[tuple[str, list[Path], list[bool]]]:
    """(person, files, is_wrong) per person with >= min_images images, in a seeded random order.

    Person p (its rank in name order) gets round(fraction x n) intruders drawn with a generator
    seeded by (seed, p) from the people with fewer than min_images images.
    """
    big = [p for p, files in people.items() if len(files) >= min_images]
    pool = [f for p, files in people.items() if len(files) < min_images for f in files]
    out = []
    for rank, person in enumerate(big):
        own = people[person]
        k = max(1, int(round(fraction * len(own))))
        rng = np.random.default_rng([seed, rank])
        wrong = [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
        out.append((person, own + wrong, [False] * len(own) + [True] * k))
    order = np.random.default_rng(seed).permutation(len(out))  # a partial run covers a random subset
    return [out[i] for i in order]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["aligned", "raw"], default="aligned")
    ap.add_argument(
        "--aligned",
        type=Path,
        default=REPO / "data" / "lfw-aligned",
        help="`synthface align` crops of --raw (default data/lfw-aligned; made from --raw when absent, about 25 minutes)",
    )
    ap.add_argument("--raw", type=Path, default=lfw_dir(REPO.parent / "shared" / "data" / "lfw") / IMAGES)
    ap.add_argument("--embedder", default="dlib")
    ap.add_argument("--fraction", type=float, default=0.10)
    ap.add_argument("--detector-threshold", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="first N people only (smoke runs)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None, help="folder of per-person detection/embedding results (reused)")
    ap.add_argument("--cached-only", action="store_true", help="evaluate only the people already in --cache")
    ap.add_argument(
        "--sweep",
        type=float,
        nargs=3,
        default=(0.80, 0.96, 0.01),
        metavar=("START", "STOP", "STEP"),
        help="thresholds swept (dlib's scale by default; sface: 0.20 0.60 0.02)",
    )
    args = ap.parse_args()

    if args.source == "aligned" and not args.aligned.is_dir():
        from synthface.config import AlignRecipe
        from synthface.faces.align_folder import align_folder

        print(f"making the aligned crops {args.aligned} from {args.raw} (all of LFW, about 25 minutes)", flush=True)
        align_folder(args.raw, args.aligned, AlignRecipe(workers=1))
    root, ext = (args.aligned, "png") if args.source == "aligned" else (args.raw, "jpg")
    sets = build_sets(people_images(root, ext), 10, args.fraction, args.seed)
    if args.limit:
        sets = sets[: args.limit]
    n_images = sum(len(f) for _, f, _ in sets)
    n_wrong = sum(sum(w) for _, _, w in sets)
    print(
        f"{len(sets)} people, {n_images - n_wrong} own images + {n_wrong} wrong ones ({args.source}, {args.embedder})", flush=True
    )

    def settings(threshold: float) -> FilterSettings:
        return FilterSettings(
            embedder=args.embedder, threshold=threshold,
            detector_threshold=args.detector_threshold if args.source == "raw" else 0.0,
            oversample=1.0, min_images=1, images_per_identity=10_000, anchor="centre",
            merge_threshold=1.0, leakage=1.0, gallery=None, image_size=8,  # stored crops are not used here
        )  # fmt: skip

    scorer = FaceScorer(settings(default_threshold(args.embedder)), 1.0 if args.source == "aligned" else None, device="cpu")
    scored, truth, cands, done = [], [], [], []
    t0 = time.perf_counter()
    computed = 0
    for k, (person, files, wrong) in enumerate(sets):
        n = len(files)
        path = args.cache / f"{person}.npz" if args.cache else None
        s = None
        if path is not None and path.is_file():
            c = np.load(path, allow_pickle=False)
            if c["files"].tolist() == [str(f) for f in files]:
                s = Scored(np.arange(n), c["det"], c["ok"], c["emb"], c["lms"], [str(x) for x in c["status"]])
        if s is None:
            if args.cached_only:
                continue
            s = scorer.score([load_image(f) for f in files], list(range(n)))
            computed += n
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, files=np.array([str(f) for f in files]), det=s.det, ok=s.ok, emb=s.embeddings,
                         lms=s.landmarks, status=np.array(s.status))  # fmt: skip
                tmp.replace(path)
        scored.append(s)
        cands.append([Candidate(k, j, 0, np.zeros((1, 1, 3), np.uint8)) for j in range(n)])  # images are not kept
        truth.append(np.array(wrong))
        done.append(person)
        if (k + 1) % 10 == 0:
            print(f"  scored {k + 1}/{len(sets)} people ({time.perf_counter() - t0:.0f}s)", flush=True)
    seconds = time.perf_counter() - t0
    n_images = sum(len(c) for c in cands)
    n_wrong = int(sum(t.sum() for t in truth))
    print(f"evaluated: {len(done)} of {len(sets)} people, {n_images} images ({n_wrong} wrong)", flush=True)

    def evaluate(threshold: float) -> dict[str, float]:
        selector = FilterSelector(settings(threshold), model=None, scorer=scorer)
        tp = fp = fn = 0
        no_face = 0
        for k, s in enumerate(scored):
            selector.decide(k, cands[k], s)
            rejected = np.array([st != KEPT for st in selector.records.pop(k).status])
            no_face += int((~s.ok).sum())
            tp += int((rejected & truth[k]).sum())
            fp += int((rejected & ~truth[k]).sum())
            fn += int((~rejected & truth[k]).sum())
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        return {"threshold": threshold, "precision": precision, "recall": recall, "rejected": tp + fp,
                "false_rejects": fp, "missed": fn, "no_face_or_low_detector": no_face}  # fmt: skip

    start, stop, step = args.sweep
    sweep = [evaluate(round(t, 3)) for t in np.arange(start, stop + step / 10, step)]
    default = evaluate(default_threshold(args.embedder))
    print(f"\n{'threshold':>9} {'precision':>9} {'recall':>7} {'rejected':>8} {'false rej':>9} {'missed':>6}")
    for r in sweep:
        print(
            f"{r['threshold']:9.2f} {r['precision']:9.3f} {r['recall']:7.3f} {r['rejected']:8d} {r['false_rejects']:9d} {r['missed']:6d}"
        )
    print(
        f"\ndefault threshold {default['threshold']}: precision {default['precision']:.3f}, recall {default['recall']:.3f} "
        f"({default['rejected']} rejected, {default['false_rejects']} of them correct faces, {default['missed']} wrong ones kept)"
    )
    if computed:
        print(f"detect+embed: {computed} faces in {seconds:.0f}s ({computed / seconds:.2f} faces/s on this shared machine)")
    if args.json:
        args.json.write_text(json.dumps({"source": args.source, "embedder": args.embedder, "people": len(done),
                                         "images": n_images, "wrong": n_wrong, "default": default, "sweep": sweep,
                                         "complete": len(done) == len(sets)}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
