"""Is the filter the bottleneck of `synthface generate`? Filter faces/s next to generator images/s.

Same model and sampling settings as bench/generate.py (a ~13M-parameter native UNet at 32 px,
random weights, 4 DPM-Solver++ steps, batch 16), on the same machine, in one process:

- generator: ``generate_dataset`` with the filter off, images/s end to end;
- generator + filter: the same run with the filter on (``--embedder``, robust-centre anchor,
  every sample kept so both runs write the same amount), images/s end to end, and the filter's
  own throughput inside it (rendered images / seconds in the select stage: align + embed + decide);
- the filter's face tools alone on the rendered images: template alignment + embedding, and with
  MTCNN detection added (what ``filter.detector_threshold`` > 0 or a model without a face
  template costs).

Ratio = filter faces/s / generator images/s: above 1 the filter keeps up with the generator.

    OMP_NUM_THREADS=1 python bench/filter.py --embedder dlib
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from generate import bench_model  # noqa: E402

from synthface.config import load_recipe, GenerateRecipe  # noqa: E402
from synthface.filter_settings import FilterSettings  # noqa: E402
from synthface.filtering import FaceScorer  # noqa: E402
from synthface.generator.run import generate_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embedder", default="dlib")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=None, help="a trained native model (default: random weights)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = args.batch * args.batches
    per_identity = 4
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            model_dir = Path(tmp) / "model"
            params, what, template = bench_model(model_dir), "random weights", 0.6
        else:
            from synthface.generator.families import load_model

            model_dir, what = args.model, f"trained: {args.model}"
            loaded = load_model(model_dir)
            params, template = sum(p.numel() for p in loaded.unet.parameters()), loaded.template_scale
        base = [
            f"model={model_dir}", f"identities.count={images // per_identity}", f"images_per_identity={per_identity}",
            f"shard_identities={args.batch // per_identity}", "sampling.scheduler=dpmsolver++", f"sampling.steps={args.steps}",
            f"sampling.batch_size={args.batch}", "sampling.dtype=fp32", "output.image_format=jpeg", "output.image_size=32",
        ]  # fmt: skip
        off = load_recipe(GenerateRecipe, None, base + ["filter.enabled=false"])
        on = load_recipe(GenerateRecipe, None, base + [
            "filter.enabled=true", f"filter.embedder={args.embedder}", "filter.anchor=centre", "filter.threshold=-1",
            "filter.detector_threshold=0", "filter.oversample=1", "filter.min_images=1", "filter.merge_threshold=1",
        ])  # fmt: skip
        generate_dataset(off, Path(tmp) / "warm", overwrite=True)  # imports, allocator
        t = time.perf_counter()
        generate_dataset(off, Path(tmp) / "off", overwrite=True, profile=True)
        off_s = time.perf_counter() - t
        t = time.perf_counter()
        s_on = generate_dataset(on, Path(tmp) / "on", overwrite=True, profile=True)
        on_s = time.perf_counter() - t
        select_s = s_on["timings"].get("select", float("nan"))

        # the face tools alone, on rendered images (the stored 32 px renders, decoded)
        from synthface.dataset.export import iter_rows
        from synthface.faces.align import load_image

        renders = [load_image(r["image"]) for r in iter_rows(Path(tmp) / "off")]
        settings = FilterSettings.from_recipe(on, "dlib")
        scorer = FaceScorer(settings, template, device="cpu")
        scorer.score(renders[:2], [0, 1])  # load the embedder
        t = time.perf_counter()
        scorer.score(renders, list(range(len(renders))))
        embed_s = time.perf_counter() - t
        settings.detector_threshold = 0.5
        scorer.detector  # noqa: B018 - load MTCNN before timing
        t = time.perf_counter()
        scorer.score(renders, list(range(len(renders))))
        detect_embed_s = time.perf_counter() - t

    gen_ips = images / off_s
    rows = [
        ("generator, filter off (end to end)", off_s, gen_ips),
        (f"generator + filter {args.embedder} (end to end)", on_s, images / on_s),
        ("  filter stage inside it (select)", select_s, images / select_s),
        (f"{args.embedder}: template align + embed", embed_s, images / embed_s),
        (f"{args.embedder}: MTCNN detect + align + embed", detect_embed_s, images / detect_embed_s),
    ]
    lines = [
        "synthface filter throughput (bench/filter.py)",
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), no GPU; torch {torch.__version__}",
        f"model: native UNet 32 px, {params / 1e6:.1f}M parameters ({what}), {args.steps} DPM-Solver++ steps, "
        f"batch {args.batch}; {images} images",
        "",
        f"{'':50s}{'seconds':>9s}{'per s':>9s}{'ratio':>8s}",
    ]
    for name, sec, ips in rows:
        lines.append(f"{name:50s}{sec:9.2f}{ips:9.2f}{ips / gen_ips:8.2f}")
    lines.append("ratio = throughput / generator images/s (filter off); > 1: the filter keeps up")
    text = "\n".join(lines)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
