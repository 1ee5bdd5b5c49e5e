"""Identification rate of a trained native generator on LFW people it never saw.

For the N test-half people with the most images (bench/data/lfw_split.json "test"), the identity
is the mean of the dlib embeddings of the person's aligned images (L2-normalised). The generator
renders K images per person from that embedding; each generated image is embedded by dlib (through
dlib's own alignment, from the template landmarks of the generated crop) and counts as identified
when the nearest of the N real identities (cosine) is its own person. Chance is 1/N.

Reference rows, same protocol:
* ``real_at_model_size``: K real images per person, shrunk to the generator's resolution and
  embedded the same way, against leave-one-out means: what a perfect generator at this size scores.
* ``shuffled``: generated images scored against a random permutation of the people (a chance check).

Example (the figures in BENCHMARKS.md):

    python bench/identification.py --model runs/native-cpu-small/model --aligned data/lfw-aligned \
        --guidance 3 --guidance 1 --guidance 5 --out bench/results/train_identification.json \
        --sheet bench/results/train_contact_sheet.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthface.faces.align import template_landmarks  # noqa: E402
from synthface.faces.batch import embed_files  # noqa: E402
from synthface.faces.embedders import get_embedder  # noqa: E402
from synthface.files import images_in  # noqa: E402
from synthface.generator.families import load_model  # noqa: E402
from synthface.generator.pipeline import generate  # noqa: E402
from synthface.generator.training.report import image_grid, save_png  # noqa: E402


def test_people(split: Path, aligned: Path, count: int) -> list[tuple[str, list[Path]]]:
    names = json.loads(split.read_text())["test"]
    people = []
    for name in names:
        folder = aligned / name
        files = images_in(folder) if folder.is_dir() else []
        if files:
            people.append((name, files))
    people.sort(key=lambda p: (-len(p[1]), p[0]))
    return people[:count]


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def embed_crops(embedder, crops: np.ndarray, template_scale: float, min_side: int = 112) -> np.ndarray:
    """dlib embeddings of generated/shrunk crops: upsampled to >= 112 px, landmarks from the template."""
    side = crops.shape[1]
    up = max(side, min_side)
    if up != side:
        crops = np.stack([np.asarray(Image.fromarray(c).resize((up, up), Image.BICUBIC)) for c in crops])
    out = []
    for start in range(0, len(crops), 64):
        chunk = list(crops[start : start + 64])
        lms = template_landmarks(up, len(chunk), scale=template_scale)
        out.append(embedder.embed(chunk, lms))
    return np.concatenate(out)


def marked_rows(reals: list[np.ndarray], images: np.ndarray, hits: np.ndarray, k: int, border: int = 1) -> list[list[np.ndarray]]:
    """Contact-sheet rows: a real face, then the person's k renders framed green (identified) or red (not)."""
    rows = []
    for i, real in enumerate(reals):
        row = [real]
        for j in range(k):
            img = images[i * k + j].copy()
            colour = (0, 200, 0) if hits[i * k + j] else (220, 0, 0)
            img[:border], img[-border:], img[:, :border], img[:, -border:] = colour, colour, colour, colour
            row.append(img)
        rows.append(row)
    return rows


def identify(gen_emb: np.ndarray, gen_labels: np.ndarray, identities: np.ndarray) -> dict[str, float]:
    sims = gen_emb @ identities.T
    order = np.argsort(-sims, axis=1)
    top1 = float(np.mean(order[:, 0] == gen_labels))
    top5 = float(np.mean([lab in row[:5] for lab, row in zip(gen_labels, order)]))
    own = sims[np.arange(len(gen_labels)), gen_labels]
    return {
        "top1": top1,
        "top5": top5,
        "mean_cos_own": float(own.mean()),
        "mean_cos_other": float((sims.sum(1) - own).mean() / (sims.shape[1] - 1)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="native model folder (RUN_DIR/model)")
    ap.add_argument("--aligned", required=True, help="LFW aligned by `synthface align` (112 px template crops)")
    ap.add_argument("--split", default=str(ROOT / "bench/data/lfw_split.json"))
    ap.add_argument("--people", type=int, default=50)
    ap.add_argument("--per-person", type=int, default=8)
    ap.add_argument("--guidance", type=float, action="append", help="CFG scale (repeatable; the first is the headline)")
    ap.add_argument("--scheduler", default="dpmsolver++")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sheet-people", type=int, default=12)
    ap.add_argument("--cache", default=None, help="npz cache of the real identities' embeddings")
    ap.add_argument("--embed-only", action="store_true", help="compute the real identities (into --cache) and stop")
    ap.add_argument("--out", default=str(ROOT / "bench/results/train_identification.json"))
    ap.add_argument("--sheet", default=str(ROOT / "bench/results/train_contact_sheet.png"))
    args = ap.parse_args()
    guidances = args.guidance or [3.0]
    t0 = time.time()

    people = test_people(Path(args.split), Path(args.aligned), args.people)
    names = [n for n, _ in people]
    embedder = get_embedder("dlib")
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file() and list(np.load(cache)["names"]) == names:
        stored = np.load(cache)
        real_emb, real_lab, row_paths = stored["emb"], stored["labels"], [Path(p) for p in stored["paths"]]
    else:
        paths = [p for _, files in people for p in files]
        labels_all = np.array([i for i, (_, files) in enumerate(people) for _ in files])
        res = embed_files(paths, embedder, aligned=True, workers=2)
        ok = res.ok
        real_emb, real_lab = res.embeddings[ok], labels_all[ok]
        row_paths = [p for p, good in zip(paths, ok) if good]
        if cache is not None:
            np.savez(cache, names=np.array(names), emb=real_emb, labels=real_lab, paths=np.array([str(p) for p in row_paths]))
    sums = np.zeros((len(names), real_emb.shape[1]))
    np.add.at(sums, real_lab, real_emb)
    identities = normalise(sums)
    t_real = time.time() - t0
    if args.embed_only:
        print(json.dumps({"people": len(names), "real_images_embedded": int(len(real_lab)), "seconds": round(t_real, 1)}))
        return

    model = load_model(args.model)
    size, scale = model.image_size, model.template_scale if model.template_scale is not None else 1.0
    k = args.per_person
    cond = np.repeat(identities, k, axis=0)
    labels = np.repeat(np.arange(len(names)), k)
    seeds = np.array([10_000 * (args.seed + 1) + 100 * i + j for i in range(len(names)) for j in range(k)])

    # The ceiling at this size: K real images per person shrunk to the model's size, embedded like the
    # generated ones, against leave-one-out identity means (tight-crop models only).
    results: dict[str, object] = {}
    real_rows: dict[int, np.ndarray] = {}
    if scale == 1.0:
        picks = [(i, int(j)) for i in range(len(names)) for j in np.flatnonzero(real_lab == i)[:k]]
        shrunk = np.stack(
            [np.asarray(Image.open(row_paths[j]).convert("RGB").resize((size, size), Image.LANCZOS)) for _, j in picks]
        )
        s_emb = embed_crops(embedder, shrunk, 1.0)
        hits_real = []
        for (i, j), e in zip(picks, s_emb):
            rest = sums.copy()
            rest[i] -= real_emb[j]
            hits_real.append(int(np.argmax(normalise(rest) @ e) == i))
        results["real_at_model_size"] = {"top1": float(np.mean(hits_real)), "images": len(hits_real)}
        for n, (i, _) in enumerate(picks):
            real_rows.setdefault(i, shrunk[n])

    runs = []
    sheet_images = None
    for g in guidances:
        t1 = time.time()
        images = generate(
            model, cond, seeds, batch_size=args.batch_size, scheduler=args.scheduler, steps=args.steps, guidance_scale=g
        )
        t_gen = time.time() - t1
        g_emb = embed_crops(embedder, images, scale)
        r = identify(g_emb, labels, identities)
        rng = np.random.default_rng(args.seed)
        perm = rng.permutation(len(names))
        r["shuffled_top1"] = identify(g_emb, perm[labels], identities)["top1"]
        r.update({"guidance_scale": g, "generate_seconds": round(t_gen, 1)})
        runs.append(r)
        if sheet_images is None:
            sheet_images = (images, g_emb)
    headline = runs[0]
    images, g_emb = sheet_images
    hits = np.argmax(g_emb @ identities.T, axis=1) == labels
    reals = []
    for i in range(min(args.sheet_people, len(names))):
        real = real_rows.get(i)
        if real is None:
            real = np.asarray(Image.open(people[i][1][0]).convert("RGB").resize((size, size), Image.LANCZOS))
        reals.append(real)
    sheet = image_grid(marked_rows(reals, images, hits, k), scale=max(1, 96 // size))
    save_png(sheet, Path(args.sheet))

    summary = {
        "model": args.model,
        "model_image_size": size,
        "template_scale": scale,
        "people": len(names),
        "per_person": k,
        "chance": 1.0 / len(names),
        "identification_rate": headline["top1"],
        "runs": runs,
        **results,
        "sampling": {"scheduler": args.scheduler, "steps": args.steps},
        "real_images_embedded": int(len(real_lab)),
        "seconds": {"real_embeddings": round(t_real, 1), "total": round(time.time() - t0, 1)},
        "sheet": args.sheet,
        "sheet_legend": "row = person; first column: a real aligned image at the model's size; then the generated "
        "images, green border = identified (nearest real identity is this person), red = not",
        "people_names": names,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "people_names"}, indent=2))


if __name__ == "__main__":
    main()
