"""Pipeline efficiency of `synthface generate`: end-to-end images/s against the raw UNet bound.

One run, one model, one batch size, side by side:

- bound: the UNet calls alone: ``steps`` batched calls per batch on cond+uncond rows (2B), on the
  same model and inputs of the same shape, with nothing else (no scheduler, no conditioning, no
  encoding, no writing, no model loading);
- end to end: ``generate_dataset`` (the function the CLI calls) writing real shards, timed from the
  call to its return (model load, identity plan, sampling loop, encoding, Parquet + markers).

Efficiency = end-to-end images/s / bound images/s. The breakdown says where the rest goes (stage
timers inside the run, ``profile=True``). The model is a 17M-parameter native UNet at 32 px with
random weights, built in-process: weights do not change the cost.

    OMP_NUM_THREADS=1 python bench/generate.py --save bench/results/generate.txt
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthface.config import GenerateRecipe, load_recipe  # noqa: E402
from synthface.generator.families import load_model  # noqa: E402
from synthface.generator.native import build_native  # noqa: E402
from synthface.generator.pipeline import shared_timestep, unet_forward  # noqa: E402
from synthface.generator.run import generate_dataset  # noqa: E402


def bench_model(path: Path) -> int:
    model = build_native(
        embedder="dlib", embedding_dim=128, image_size=32, block_out_channels=(64, 128, 256), id_tokens=4,
        token_dim=256, layers_per_block=1, attention_head_dim=32, norm_num_groups=32, seed=0,
    )  # fmt: skip
    model.save(path)
    return model.num_parameters()


def raw_unet_seconds(model_dir: Path, batch: int, steps: int, batches: int) -> tuple[float, float]:
    """``batches`` x ``steps`` UNet calls on 2 * batch rows: the cost no sampler can avoid.

    Returns (wall seconds, process CPU seconds) of the calls."""
    model = load_model(model_dir)
    c, h, w = model.latent_shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * batch, c, h, w, generator=gen)
    emb = torch.nn.functional.normalize(torch.randn(batch, model.embedding_dim, generator=gen), dim=-1)
    with torch.no_grad():
        hidden = torch.cat([model.condition(emb), model.uncondition(batch)])
        t = torch.tensor(500)
        with shared_timestep(model.unet):  # the loop's own call path
            unet_forward(model, x, t, hidden)  # warm-up
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(batches * steps):
                unet_forward(model, x, t, hidden)
    return time.perf_counter() - start, time.process_time() - cpu


def end_to_end(model_dir: Path, recipe: GenerateRecipe, out: Path) -> tuple[float, float, dict]:
    """(wall seconds, process CPU seconds, summary) of one whole generate_dataset call."""
    start, cpu = time.perf_counter(), time.process_time()
    summary = generate_dataset(recipe, out, overwrite=True, profile=True)
    return time.perf_counter() - start, time.process_time() - cpu, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batches", type=int, default=2, help="batches per measurement (images = batch x batches)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; (lower) medians are reported")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--format", default="jpeg", choices=["jpeg", "png", "webp"])
    parser.add_argument("--save", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images = args.batch * args.batches
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        params = bench_model(model_dir)
        # identities x images_per_identity = batch x batches; one shard per batch of identities
        per_identity = 4
        recipe = load_recipe(
            GenerateRecipe,
            None,
            [
                f"model={model_dir}",
                f"identities.count={images // per_identity}",
                f"images_per_identity={per_identity}",
                f"shard_identities={args.batch // per_identity}",
                "sampling.scheduler=dpmsolver++",
                f"sampling.steps={args.steps}",
                "sampling.guidance_scale=3.0",
                f"sampling.batch_size={args.batch}",
                "sampling.dtype=fp32",
                "filter.enabled=false",
                f"output.image_format={args.format}",
                "output.image_size=32",
            ],
        )
        raw, e2e, raw_cpu, e2e_cpu, summaries = [], [], [], [], []
        warm = recipe.model_copy(
            update={"identities": recipe.identities.model_copy(update={"count": args.batch // per_identity})}
        )
        end_to_end(model_dir, warm, Path(tmp) / "warm")  # imports, allocator, caches: one batch
        for _ in range(args.repeats):
            wall, cpu = raw_unet_seconds(model_dir, args.batch, args.steps, args.batches)
            raw.append(wall)
            raw_cpu.append(cpu)
            wall, cpu, summary = end_to_end(model_dir, recipe, Path(tmp) / "out")
            e2e.append(wall)
            e2e_cpu.append(cpu)
            summaries.append(summary)

    raw_s, e2e_s = statistics.median_low(raw), statistics.median_low(e2e)
    raw_c, e2e_c = statistics.median_low(raw_cpu), statistics.median_low(e2e_cpu)
    best = summaries[e2e.index(e2e_s)]
    t = best["timings"]
    bound_ips, e2e_ips = images / raw_s, images / e2e_s
    parts = [
        ("UNet calls inside the loop", t.get("unet", 0.0)),
        ("conditioning (projector, per sample)", t.get("condition", 0.0)),
        ("scheduler steps + CFG combine + noise", t.get("scheduler", 0.0)),
        ("VAE decode (none: pixel space)", t.get("decode", 0.0)),
        ("select (resize; filter off)", t.get("select", 0.0)),
        (f"encode ({args.format})", t.get("encode", 0.0)),
        ("write shards (Parquet + fsync + marker)", t.get("write", 0.0)),
        ("model load", t.get("load", 0.0)),
        ("identity plan", t.get("plan", 0.0)),
        ("resume check", t.get("verify", 0.0)),
    ]
    accounted = sum(v for _, v in parts)
    lines = [
        "synthface generate: pipeline efficiency (bench/generate.py)",
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s) of {_cores()} cores, no GPU; "
        f"torch {torch.__version__}, Python {platform.python_version()}",
        f"model: native UNet2DConditionModel 32 px pixel space, {params / 1e6:.1f}M parameters (random weights)",
        f"work: {images} images = {args.batches} batches x {args.batch}; {args.steps} DPM-Solver++ steps, CFG 3.0 "
        f"(UNet batch {2 * args.batch}); {args.format} 32 px; lower medians of {args.repeats} interleaved repeats",
        "",
        f"{'':44s}{'CPU s':>9s}{'img/s':>8s}{'wall s':>9s}{'img/s':>8s}",
        f"{'raw UNet bound (steps x batches calls)':44s}{raw_c:9.2f}{images / raw_c:8.3f}{raw_s:9.2f}{bound_ips:8.3f}",
        f"{'synthface generate end to end':44s}{e2e_c:9.2f}{images / e2e_c:8.3f}{e2e_s:9.2f}{e2e_ips:8.3f}",
        f"{'efficiency (end to end / bound)':44s}{'':9s}{raw_c / e2e_c:8.3f}{'':9s}{e2e_ips / bound_ips:8.3f}",
        "(CPU s: this process's CPU time, which other jobs on a shared machine do not inflate; wall s: elapsed)",
        "",
        f"where the end-to-end time goes (run with median time, {e2e_s:.2f} s):",
    ]
    for name, value in parts:
        lines.append(f"  {name:42s}{value:10.3f}  {100 * value / e2e_s:5.1f}%")
    lines.append(
        f"  {'other (process state, bookkeeping)':42s}{e2e_s - accounted:10.3f}  {100 * (e2e_s - accounted) / e2e_s:5.1f}%"
    )
    lines.append(f"  UNet inside the loop vs raw bound: {t.get('unet', 0.0):.2f} s vs {raw_s:.2f} s")
    lines.append(f"  UNet share of the end-to-end wall time: {t.get('unet', 0.0) / e2e_s:.3f}")
    lines.append(f"raw runs: {', '.join(f'{x:.2f}' for x in raw)} s wall, {', '.join(f'{x:.2f}' for x in raw_cpu)} s CPU")
    lines.append(f"end-to-end runs: {', '.join(f'{x:.2f}' for x in e2e)} s wall, {', '.join(f'{x:.2f}' for x in e2e_cpu)} s CPU")
    text = "\n".join(lines)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n", encoding="utf-8")


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
