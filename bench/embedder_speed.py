"""Embedding speed of sface next to dlib: faces/s on already-aligned faces, one thread, same machine.

Embedding only: dlib's ResNet on its 150 px chips (``compute_face_descriptor`` on a batch of
chips), SFace's onnxruntime session on 112 px template crops (``embed_crops``, batch 64), and
SFace's differentiable torch module (forward only, no gradient). Detection, alignment and chip
extraction are not timed. Inputs are seeded random pixels (the networks' cost does not depend on
the content). The headline rate is faces per CPU-second of this process (best of the repeats):
on a shared box the wall clock mostly measures the other jobs; the wall-clock rate is printed
beside it.

    OMP_NUM_THREADS=1 python bench/embedder_speed.py --faces 256 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best_rate(fn, n: int, repeats: int) -> tuple[float, float]:
    """(faces per CPU-second, faces per wall-second), each the best of ``repeats`` after a warm-up."""
    fn()
    cpu = wall = float("inf")
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu, wall = min(cpu, time.process_time() - c), min(wall, time.perf_counter() - w)
    return n / cpu, n / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from synthface.faces.embedders import get_embedder

    rng = np.random.default_rng(0)
    n = args.faces
    sface = get_embedder("sface", device="cpu")
    crops = rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)
    rates = {"sface (onnxruntime, 112 px, batch 64)": best_rate(lambda: sface.embed_crops(crops), n, args.repeats)}

    module = sface.differentiable()
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255)

    def torch_forward() -> None:
        with torch.no_grad():
            for i in range(0, n, 64):
                module(x[i : i + 64])

    rates["sface (torch module, forward, batch 64)"] = best_rate(torch_forward, n, args.repeats)

    dlib = get_embedder("dlib", device="cpu")
    chips = [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8) for _ in range(n)]
    rates["dlib (ResNet, 150 px chips, one batch)"] = best_rate(lambda: dlib._net.compute_face_descriptor(chips), n, args.repeats)

    dlib_cpu, dlib_wall = rates["dlib (ResNet, 150 px chips, one batch)"]
    print(f"{n} faces, best of {args.repeats}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch threads 1")
    print(f"{'':42s} {'faces/CPU-s':>11s} {'vs dlib':>8s} {'faces/wall-s':>12s} {'vs dlib':>8s}")
    for name, (cpu, wall) in rates.items():
        print(f"{name:42s} {cpu:11.1f} {cpu / dlib_cpu:7.2f}x {wall:12.1f} {wall / dlib_wall:7.2f}x")


if __name__ == "__main__":
    main()
