"""Does a native generator carry identity? Judged by embedders that did not condition it.

Three measurements of one model (the headline of BENCHMARKS.md "identity"), each with and without
identity guidance (``--identity-scale``):

(a) identification: the N test-half LFW people with the most images (unseen in training;
    bench/data/lfw_split.json "test"). Each person's identity is the mean of the conditioning
    embedder's embeddings of their aligned photos; the model renders K images from it. A render is
    identified when the nearest of the N people (cosine to their mean real embedding) is its own.
    Judged by dlib (did not condition the model) and, reported separately, by the conditioning
    embedder itself. Chance is 1/N. ``shuffled`` scores the same renders against a random
    permutation of the people (a chance check); ``real_roundtrip`` scores K real photos of each
    person, passed through the model's autoencoder, against leave-one-out means (the ceiling).
(b) consistency of NEW identities: M identities drawn from a Gaussian fitted to the training
    embeddings (separation as `synthface generate`), K renders each; dlib verification accuracy
    (10-fold, LFW protocol) on every same-identity pair and as many different-identity pairs.
(c) detection: the fraction of renders in which MTCNN finds a face with probability >= 0.9.

Example (the figures in BENCHMARKS.md):

    python bench/identity.py --model runs/native-cpu-latent/model --aligned data/lfw-loose192 \
        --gallery runs/native-cpu-latent/cache/faces-*.parquet --train-json runs/native-cpu-latent/train.json
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from identification import identify, marked_rows, normalise, test_people  # noqa: E402

from synthface.faces.align import FaceDetector, template_landmarks  # noqa: E402
from synthface.faces.embedders import get_embedder  # noqa: E402
from synthface.generator.families import load_model  # noqa: E402
from synthface.generator.pipeline import generate  # noqa: E402
from synthface.generator.planning import identity_guide_for  # noqa: E402
from synthface.gallery import read_embeddings_parquet  # noqa: E402
from synthface.identities import Gaussian, accept_sequential, gaussian_draw  # noqa: E402
from synthface.recognition.embedder import PREFIX as RECOGNIZER_PREFIX, RecognizerEmbedder  # noqa: E402
from synthface.recognition.verification import evaluate_scores  # noqa: E402
from synthface.generator.training.report import image_grid, save_png  # noqa: E402


def embed_aligned(embedder, crops: list[np.ndarray] | np.ndarray, scale: float, batch: int = 64) -> np.ndarray:
    """Embeddings of square crops aligned to the template at ``scale`` (landmarks from the template)."""
    out = []
    for start in range(0, len(crops), batch):
        chunk = [np.asarray(c) for c in crops[start : start + batch]]
        out.append(embedder.embed(chunk, template_landmarks(chunk[0].shape[0], len(chunk), scale=scale)))
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)


def make_judge(name: str):
    """An embedder by registry name, or ``recognizer:PATH`` (a recognizer.pt trained by `synthface evaluate`)."""
    if name.startswith(RECOGNIZER_PREFIX):
        return RecognizerEmbedder(name[len(RECOGNIZER_PREFIX) :])
    return get_embedder(name)


def detection_rate(detector: FaceDetector, images: np.ndarray, threshold: float = 0.9) -> float:
    found = 0
    for start in range(0, len(images), 32):
        for faces in detector.detect_all(list(images[start : start + 32])):
            found += int(any(f.score >= threshold for f in faces))
    return found / max(len(images), 1)


def pair_accuracy(emb: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """10-fold verification accuracy on all same-label pairs and as many random different-label pairs."""
    n = len(labels)
    same = [(i, j) for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
    rng = np.random.default_rng(seed)
    diff: set[tuple[int, int]] = set()
    while len(diff) < len(same):
        i, j = (int(v) for v in rng.integers(0, n, 2))
        if labels[i] != labels[j]:
            diff.add((min(i, j), max(i, j)))
    pairs = np.array(same + sorted(diff))
    issame = np.array([True] * len(same) + [False] * len(diff))
    scores = np.sum(emb[pairs[:, 0]] * emb[pairs[:, 1]], axis=1)
    folds = rng.permutation(np.arange(len(pairs)) % 10)
    res = evaluate_scores(scores, issame, folds)
    return {
        "accuracy": float(res.accuracy),
        "std": float(res.accuracy_std),
        "same_pairs": len(same),
        "different_pairs": len(diff),
        "mean_cos_same": float(scores[issame].mean()),
        "mean_cos_different": float(scores[~issame].mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="native model folder (RUN_DIR/model)")
    ap.add_argument("--aligned", required=True, help="LFW aligned by `synthface align` (loose or tight crops)")
    ap.add_argument("--aligned-scale", type=float, default=0.6, help="template scale of --aligned (1 = tight)")
    ap.add_argument("--gallery", help="training embeddings Parquet (RUN_DIR/cache/faces-*.parquet) for new identities")
    ap.add_argument(
        "--train-json",
        help="RUN_DIR/train.json: its train_cpu_seconds (else train_seconds x --train-threads) -> train_cpu_minutes",
    )
    ap.add_argument("--train-threads", type=int, default=2, help="threads the training used (CPU-minutes = wall x threads)")
    ap.add_argument("--split", default=str(ROOT / "bench/data/lfw_split.json"))
    ap.add_argument("--people", type=int, default=50)
    ap.add_argument("--per-person", type=int, default=8)
    ap.add_argument("--new-identities", type=int, default=100)
    ap.add_argument("--separation", type=float, default=0.3)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--identity-scale", type=float, action="append", help="identity guidance scales (0 always runs)")
    ap.add_argument(
        "--guide",
        choices=["pixel", "head"],
        default="pixel",
        help="identity guidance through the conditioning embedder on the decoded image (pixel) or the model's "
        "noise-aware latent identity head (head: MODEL/identity_head)",
    )
    ap.add_argument("--guided-people", type=int, default=None, help="people (a) rendered with identity guidance (default all)")
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--judges",
        default=None,
        help="comma-separated judging embedders (default: dlib and the conditioning embedder, which always "
        "judges too); e.g. --judges sface on a machine without dlib (docs/device.md); recognizer:PATH judges with a "
        "recognizer.pt trained by `synthface evaluate`",
    )
    ap.add_argument("--device", default="cpu", help="torch device of the model, MTCNN and identity guidance (cuda on a GPU)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/identity.json"))
    ap.add_argument("--sheet", default=str(ROOT / "bench/results/identity_contact_sheet.png"))
    args = ap.parse_args()
    t0 = time.time()

    model = load_model(args.model, device=args.device)
    size, scale = model.image_size, model.template_scale if model.template_scale is not None else 1.0
    cond_embedder = get_embedder(model.embedder)
    names_j = [j.strip() for j in (args.judges or "dlib").split(",") if j.strip() and j.strip() != model.embedder]
    judges = {model.embedder: cond_embedder} | {j: make_judge(j) for j in names_j}  # name -> embedder
    detector = FaceDetector(device=args.device)

    # ---- real references
    people = test_people(Path(args.split), Path(args.aligned), args.people)
    names = [n for n, _ in people]
    paths = [p for _, files in people for p in files]
    labels_real = np.array([i for i, (_, files) in enumerate(people) for _ in files])
    crops_real = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    real = {j: embed_aligned(e, crops_real, args.aligned_scale) for j, e in judges.items()}

    def means(emb: np.ndarray) -> np.ndarray:
        sums = np.zeros((len(names), emb.shape[1]))
        np.add.at(sums, labels_real, emb)
        return normalise(sums)

    ids = {j: means(e) for j, e in real.items()}
    id_cond = ids[model.embedder]
    sheet_judge = "dlib" if "dlib" in judges else model.embedder  # colours the contact sheet
    k = args.per_person

    # ---- the ceiling: real photos at the model's size through its autoencoder (if any), judged the same way
    picks = [int(j) for i in range(len(names)) for j in np.flatnonzero(labels_real == i)[:k]]
    small = np.stack([np.asarray(Image.fromarray(crops_real[j]).resize((size, size), Image.LANCZOS)) for j in picks])
    if model.vae is not None:
        with torch.no_grad():
            x = torch.from_numpy(small).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(model.device, model.dtype)
            rec = torch.cat(
                [
                    model.vae.decode(model.vae.encode(x[i : i + 16]).latent_dist.mean).sample.float().cpu()
                    for i in range(0, len(x), 16)
                ]
            )
        small = rec.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()
    roundtrip = {}
    for name, judge in judges.items():
        emb_real = real[name]
        e = embed_aligned(judge, small, scale)
        sums = np.zeros((len(names), emb_real.shape[1]))
        np.add.at(sums, labels_real, emb_real)
        hits = []
        for e_i, j in zip(e, picks):
            rest = sums.copy()
            rest[labels_real[j]] -= emb_real[j]
            hits.append(int(np.argmax(normalise(rest) @ e_i) == labels_real[j]))
        roundtrip[name] = float(np.mean(hits))
    t_ref = time.time() - t0

    # ---- new identities from the training statistics
    new_ids = None
    if args.gallery:
        files = sorted(glob.glob(args.gallery))
        if not files:
            raise SystemExit(f"no gallery file matches {args.gallery}")
        gallery = read_embeddings_parquet(files[0])
        draw = gaussian_draw(args.seed, Gaussian.fit(gallery.embeddings))
        new_ids, _ = accept_sequential(args.new_identities, draw, args.separation)

    scales = [0.0] + [s for s in (args.identity_scale or []) if s > 0]
    runs = []
    sheet = None
    for s in scales:
        options = dict(scheduler=args.scheduler, steps=args.steps, guidance_scale=args.guidance)
        if s > 0:
            options.update(identity_scale=s, identity_guide=identity_guide_for(model, args.device, kind=args.guide))
        n_people = len(names) if s == 0 or args.guided_people is None else min(args.guided_people, len(names))
        cond = np.repeat(id_cond[:n_people], k, axis=0)
        labels = np.repeat(np.arange(n_people), k)
        seeds = np.array([10_000 * (args.seed + 1) + 100 * i + j for i in range(n_people) for j in range(k)])
        t1 = time.time()
        images = generate(model, cond, seeds, batch_size=args.batch_size, **options)
        t_gen = time.time() - t1
        g = {j: embed_aligned(e, images, scale) for j, e in judges.items()}
        perm = np.random.default_rng(args.seed).permutation(len(names))
        r: dict[str, object] = {"identity_scale": s, "people": n_people, "generate_seconds": round(t_gen, 1)}
        for j in judges:
            r[j] = identify(g[j], labels, ids[j]) | {"shuffled_top1": identify(g[j], perm[labels], ids[j])["top1"]}
        r["detection_rate"] = detection_rate(detector, images)
        if new_ids is not None:
            m = len(new_ids) if s == 0 or args.guided_people is None else min(args.guided_people, len(new_ids))
            seeds_new = np.array([20_000_000 + 100 * i + j for i in range(m) for j in range(k)])
            new_images = generate(model, np.repeat(new_ids[:m], k, axis=0), seeds_new, batch_size=args.batch_size, **options)
            labels_new = np.repeat(np.arange(m), k)
            r["new_identities"] = (
                {"identities": m}
                | {j: pair_accuracy(embed_aligned(e, new_images, scale), labels_new, args.seed) for j, e in judges.items()}
                | {"detection_rate": detection_rate(detector, new_images)}
            )
        runs.append(r)
        if sheet is None:
            hits = np.argmax(g[sheet_judge] @ ids[sheet_judge].T, axis=1) == labels
            reals = [
                np.asarray(Image.fromarray(crops_real[int(np.flatnonzero(labels_real == i)[0])]).resize((size, size)))
                for i in range(min(10, n_people))
            ]
            sheet = save_png(image_grid(marked_rows(reals, images, hits, k, border=2), scale=1), Path(args.sheet))

    base = runs[0]
    train_minutes = None
    if args.train_json and Path(args.train_json).is_file():
        info = json.loads(Path(args.train_json).read_text())
        cpu_seconds = info.get("train_cpu_seconds")
        train_minutes = round(
            float(cpu_seconds) / 60 if cpu_seconds else float(info["train_seconds"]) / 60 * args.train_threads, 1
        )
    summary = {
        "model": args.model,
        "embedder": model.embedder,
        "judges": list(judges),
        "id_rate_dlib": base["dlib"]["top1"] if "dlib" in judges else None,
        f"id_rate_{model.embedder}": base[model.embedder]["top1"],
        "synthetic_pair_accuracy_dlib": base["new_identities"]["dlib"]["accuracy"]
        if new_ids is not None and "dlib" in judges
        else None,
        "detection_rate": base["detection_rate"],
        "chance": 1.0 / len(names),
        "id_rate_by_judge": {j: base[j]["top1"] for j in judges},
        "synthetic_pair_accuracy_by_judge": {j: base["new_identities"][j]["accuracy"] for j in judges}
        if new_ids is not None
        else None,
        "train_cpu_minutes": train_minutes,
        "real_roundtrip_top1": roundtrip,
        "runs": runs,
        "protocol": {
            "people": len(names),
            "per_person": k,
            "new_identities": args.new_identities,
            "guidance_scale": args.guidance,
            "identity_guide": args.guide,
            "scheduler": args.scheduler,
            "steps": args.steps,
            "aligned": args.aligned,
        },
        "sheet": str(sheet) if sheet else None,
        "sheet_legend": "row = test-half person; first column: a real photo at the model's size; then renders from the "
        f"person's mean embedding, green border = {sheet_judge} identifies the person, red = not",
        "seconds": {"references": round(t_ref, 1), "total": round(time.time() - t0, 1)},
        "people_names": names,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("people_names", "runs")}, indent=2))
    for r in runs:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
