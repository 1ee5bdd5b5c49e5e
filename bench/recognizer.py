"""Recognizer training throughput: the full loop (data loading included) against bare forward+backward.

Three measurements with the same backbone, head, batch and number of steps:

1. ``full (in-memory)``: ``train_recognizer`` as the recipe runs it for a small set:
   images pre-decoded once to a uint8 tensor, per-item augmentation, SGD step.
2. ``full (decode per item)``: the same with pre-decoding disabled, so every image is
   decoded from its file and augmented in DataLoader workers (the path for large sets).
3. ``bare``: forward + backward + SGD step on one batch of random tensors already in memory.

The ratio full/bare shows how much data loading costs; near 1.0 means it is not the
bottleneck. Usage (from the repository root):

    .venv/bin/python bench/recognizer.py [--recipe recipes/evaluate-cpu-small.yaml] [--data IMAGE_FOLDER] [--steps 20]

Without ``--data`` it renders 200 identities x 25 coloured-pattern images as 112x112 PNGs
(the size of aligned crops) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthface.config import EvaluateRecipe, load_recipe  # noqa: E402
from synthface.dataset.reader import open_training_set, read_people  # noqa: E402
from synthface.recognition.backbones import get_backbone  # noqa: E402
from synthface.recognition.losses import get_head  # noqa: E402
from synthface.recognition.train import input_size_of, train_recognizer  # noqa: E402


def render_folder(root: Path, ids: int = 200, per_id: int = 25, size: int = 112, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(ids):
        grid = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
        base = np.kron(grid, np.ones((size // 4, size // 4, 1), np.float32))
        folder = root / f"id{i:05d}"
        folder.mkdir(parents=True)
        for k in range(per_id):
            img = np.roll(base, tuple(rng.integers(-4, 5, 2)), axis=(0, 1)) + rng.normal(0, 10, base.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{k:04d}.png")
    return root


def bare(recipe: EvaluateRecipe, classes: int, steps: int) -> float:
    r, t = recipe.recognizer, recipe.train
    size = input_size_of(recipe)
    torch.manual_seed(recipe.seed)
    backbone = get_backbone(r.backbone, r.embedding_dim, size, r.dropout).train()
    head = get_head(r.loss, classes, r.embedding_dim, margin=r.margin, scale=r.scale).train()
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=t.lr, momentum=t.momentum)
    x = torch.randn(t.batch_size, 3, size, size)
    y = torch.randint(0, classes, (t.batch_size,))
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = head(backbone(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * t.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "evaluate-cpu-small.yaml"))
    parser.add_argument("--data", type=Path, default=None, help="ImageFolder to read (default: rendered patterns)")
    parser.add_argument("--people", default=None, help="restrict --data to these people (FILE or FILE.json:KEY)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe override key=value")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or render_folder(Path(tmp) / "faces")
        people = read_people(args.people) if args.people else None
        results = {}
        for label, extra in (("full (in-memory)", []), ("full (decode per item)", ["train.predecode_max_mb=0"])):
            recipe = load_recipe(EvaluateRecipe, args.recipe, args.sets + extra + [f"train.max_steps={args.steps}"])
            dataset = open_training_set(data, input_size_of(recipe), recipe.train.min_images, people)
            run = train_recognizer(dataset, recipe, Path(tmp) / f"run{len(results)}", name="bench")
            results[label] = {
                "images_per_s": run.images_per_s,
                "prepare_s": run.prepare_s,
                "data_mode": run.data_mode,
            }
        recipe = load_recipe(EvaluateRecipe, args.recipe, args.sets)
        results["bare"] = {"images_per_s": round(bare(recipe, dataset.num_classes, args.steps), 2)}
    speed = results["bare"]["images_per_s"]
    summary = {
        "backbone": recipe.recognizer.backbone,
        "input_size": input_size_of(recipe),
        "batch_size": recipe.train.batch_size,
        "steps": args.steps,
        "images": len(dataset),
        "identities": dataset.num_classes,
        "torch_threads": torch.get_num_threads(),
        "results": results,
        "ratio_in_memory_to_bare": round(results["full (in-memory)"]["images_per_s"] / speed, 3),
        "ratio_decode_per_item_to_bare": round(results["full (decode per item)"]["images_per_s"] / speed, 3),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
