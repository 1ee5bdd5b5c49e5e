"""Sampling throughput side by side in one process: a plain diffusers loop, synthface's loop with each
fast-path option, and synthface end to end (filter and shard writing included).

Two models, random weights (weights do not change the cost), each measured on the same modules:

- ``sd15``: a UNet2DConditionModel of Stable Diffusion 1.5's size (860M parameters, 77 x 768
  prompt tokens) and SD's AutoencoderKL, built from their configs. The plain loop is diffusers'
  stock ``StableDiffusionPipeline`` called per batch with ``prompt_embeds`` and
  ``negative_prompt_embeds`` (no tokenizer or text encoder needed); synthface's loop sees the same
  tokens as its conditioning (the identity embedding projected and added to them).
- ``native``: the native latent generator of ``recipes/native-gpu-latent.yaml`` (27.7M UNet,
  TAEF2). Its plain loop is the batched diffusers-style CFG loop of bench/device/throughput.py
  (the stock pipeline cannot drive its class labels and TAEF2).

Measurements per model, each after a warm-up call of the same shapes, over ``--batches`` batches
(end to end: about ``--e2e-batches``), repeated ``--repeats`` times interleaved (the best is
reported, all are kept):

- ``plain``: the plain loop;
- ``loop``, ``loop+channels_last``, ``loop+vae_tiling``, ``loop+compile``: ``pipeline.sample_batch``
  with each fast-path option (tiling only for AutoencoderKL; compile by default only on a GPU);
- ``end_to_end``, ``end_to_end serial``: ``generate_dataset`` (what the CLI calls) from call to
  return with the SFace filter on (threshold -1 and detector_threshold 0, so every candidate is
  embedded and the best are kept: random weights render no face for MTCNN to score) and real
  Parquet shards, with ``sampling.overlap`` on and off, after one untimed small run (imports, the
  SFace graph). ``run_images_per_s`` beside it is the run's own figure: over its render loop, without
  model load, identity plan and final pass.

Images/s count rendered images; ratios are to ``plain``. Sizes: on a GPU 512 px (SD) / the recipe's
128 px (native), DDIM 25 steps, CFG 3, batch 16 (SD) / 64 (native), bf16; on a CPU (or ``--toy``)
toy models (SD-shaped 32 px, native 64 px with [16, 32] channels), 4 steps, batch 4, fp32, 3 repeats.

    OMP_NUM_THREADS=1 python bench/throughput.py --json bench/results/throughput_cpu.json
    python bench/throughput.py --device cuda --vae .device/models/taef2 --json $OUT/throughput_gpu.json  # bench/device/throughput.sh
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthface.generator.model import GeneratorModel  # noqa: E402
from synthface.generator.pipeline import sample_batch  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DDIM = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
        "set_alpha_to_one": False, "steps_offset": 1, "num_train_timesteps": 1000, "prediction_type": "epsilon"}  # fmt: skip
TINY_NATIVE = ["model.image_size=64", "model.block_out_channels=[16,32]", "model.layers_per_block=1", "model.norm_num_groups=8"]


def _device_module() -> Any:
    """bench/device/throughput.py (its random native model and plain loop)."""
    spec = importlib.util.spec_from_file_location("device_throughput", ROOT / "bench/device/throughput.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- the SD-size model


def sd_configs(toy: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """UNet2DConditionModel and AutoencoderKL configs: SD 1.5's, or a toy of the same shape."""
    cross = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    if toy:
        unet = dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                    attention_head_dim=8, norm_num_groups=32)  # fmt: skip
        vae = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                   up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32, sample_size=32)  # fmt: skip
        return unet, vae
    unet = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                cross_attention_dim=768, attention_head_dim=8, down_block_types=cross,
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))  # fmt: skip
    vae = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512)  # fmt: skip
    return unet, vae


class PromptModel(GeneratorModel):
    """An SD-shaped UNet + VAE as a synthface generator: the conditional tokens are fixed prompt tokens
    plus the projected identity embedding; the unconditional ones are zeros (what the plain pipeline
    is given as negative_prompt_embeds)."""

    family = "bench"
    embedder = "sface"
    embedding_dim = 128
    template_scale = 1.0

    def __init__(self, unet: Any, vae: Any, tokens: torch.Tensor) -> None:
        self.unet, self.vae = unet, vae
        self.scheduler_config = dict(DDIM)
        self.tokens = tokens
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_size = int(unet.config.sample_size) * factor
        g = torch.Generator().manual_seed(1)
        self.project = (torch.randn(self.embedding_dim, tokens.shape[-1], generator=g) / self.embedding_dim**0.5).to(tokens)

    def condition(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.tokens[None] + (embeddings.to(self.project) @ self.project)[:, None, :]

    def uncondition(self, batch: int) -> torch.Tensor:
        return torch.zeros_like(self.tokens)[None].expand(batch, -1, -1)


def build_sd(toy: bool, device: torch.device, dtype: torch.dtype) -> PromptModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_cfg, vae_cfg = sd_configs(toy)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: 860M parameters initialise in seconds on a GPU
        unet = UNet2DConditionModel(**unet_cfg).to(dtype).eval()
        vae = AutoencoderKL(**vae_cfg).to(dtype).eval()
    tokens = torch.randn(77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    return PromptModel(unet, vae, tokens)


def sd_plain(model: PromptModel) -> Callable[[np.ndarray, int, int], torch.Tensor]:
    """diffusers' stock StableDiffusionPipeline over the model's modules, per batch with prompt embeds."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=None, tokenizer=None, unet=model.unet,
                                   scheduler=DDIMScheduler(**DDIM), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)

    def run(emb: np.ndarray, steps: int, seed: int) -> torch.Tensor:
        n = len(emb)
        with torch.no_grad():
            cond = model.condition(torch.from_numpy(emb).to(model.device))
            images = pipe(prompt_embeds=cond, negative_prompt_embeds=model.uncondition(n), num_inference_steps=steps,
                          guidance_scale=3.0, height=model.image_size, width=model.image_size, output_type="pt",
                          generator=torch.Generator(model.device).manual_seed(seed)).images  # fmt: skip
        return images.float().cpu()

    return run


def native_plain(model: Any) -> Callable[[np.ndarray, int, int], torch.Tensor]:
    """The batched diffusers-style CFG loop of bench/device/throughput.py's plain_rate."""
    from synthface.generator.schedules import make_scheduler

    device, dtype = model.device, model.dtype

    def run(emb_np: np.ndarray, steps: int, seed: int) -> torch.Tensor:
        n = len(emb_np)
        emb = torch.from_numpy(emb_np).to(device)
        sched = make_scheduler("ddim", model.scheduler_config)
        sched.set_timesteps(steps, device=device)
        with torch.no_grad():
            hidden = torch.cat([model.condition(emb), model.uncondition(n)]).to(dtype)
            labels = model.class_labels(emb, n)
            if labels is not None:
                labels = torch.cat([labels, model.class_labels(None, n)]).to(dtype)
            g = torch.Generator(device).manual_seed(seed)
            x = torch.randn((n, *model.latent_shape), device=device, generator=g) * sched.init_noise_sigma
            for t in sched.timesteps:
                inp = sched.scale_model_input(x, t)
                out = model.unet(torch.cat([inp, inp]).to(dtype), t, encoder_hidden_states=hidden, class_labels=labels,
                                 return_dict=False)[0].float()  # fmt: skip
                c, u = out.chunk(2)
                x = sched.step(u + 3.0 * (c - u), t, x, return_dict=False)[0]
            return model.decode(x.to(dtype)).float().div(2).add(0.5).clamp(0, 1).cpu()

    return run


def build_native_model(toy: bool, vae: str | None, device: torch.device, dtype: torch.dtype, folder: Path) -> tuple[Any, Path]:
    from synthface.config import TrainRecipe, load_recipe
    from synthface.generator.families import load_model

    dev = _device_module()
    recipe = load_recipe(TrainRecipe, str(ROOT / "recipes/native-gpu-latent.yaml"), TINY_NATIVE if toy else [])
    path = dev.build(recipe, vae or str(ROOT / str(recipe.model.vae)), folder)  # the recipe's path is relative to the repository
    return load_model(path, device=device, dtype=dtype), path


# --------------------------------------------------------------------------- measurements


def embeddings(n: int, dim: int, seed: int = 0) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def loop(model: GeneratorModel) -> Callable[[np.ndarray, int, int], torch.Tensor]:
    def run(emb: np.ndarray, steps: int, seed: int) -> torch.Tensor:
        return sample_batch(model, emb, np.arange(len(emb)) + seed, scheduler="ddim", steps=steps, guidance_scale=3.0)

    return run


def timed(run: Callable[[np.ndarray, int, int], torch.Tensor], emb: np.ndarray, steps: int, device: torch.device,
          batches: int) -> float:  # fmt: skip
    """Seconds of ``batches`` batches, after a warm-up call of the same shapes."""
    run(emb, 1, 0)
    sync(device)
    t0 = time.perf_counter()
    for k in range(batches):
        run(emb, steps, k * len(emb))
    sync(device)
    return time.perf_counter() - t0


class FastPath:
    """Switches one fast-path option on for a measurement and off again after it."""

    def __init__(self, model: GeneratorModel, option: str) -> None:
        self.model, self.option = model, option

    def __enter__(self) -> None:
        from synthface.generator.fastpath import apply_fast_path

        if self.option:
            apply_fast_path(self.model, **{self.option: True})

    def __exit__(self, *exc: Any) -> None:
        m = self.model
        if self.option == "channels_last":
            m.unet.to(memory_format=torch.contiguous_format)
            if m.vae is not None:
                m.vae.to(memory_format=torch.contiguous_format)
        elif self.option == "vae_tiling":
            m.vae.disable_tiling()
        elif self.option == "compile":
            m.unet._compiled_call_impl = None  # nn.Module.compile's handle: back to the eager forward


def end_to_end(model_path: str, model: GeneratorModel | None, batch: int, steps: int, dtype: str, overlap: bool,
               identities: int, per_identity: int) -> dict[str, Any]:  # fmt: skip
    """``generate_dataset`` with the SFace filter on into a temp folder: seconds from call to return, images
    rendered, and the run's own images/s (``run_images_per_s``: over its render loop, without model
    load, identity plan and final pass) with its stage timings.

    ``model`` (an in-memory model) stands in for loading ``model_path`` when given."""
    from synthface.config import GenerateRecipe, load_recipe
    from synthface.generator import run as generator_run

    sets = [f"model={model_path}", f"identities.count={identities}", f"images_per_identity={per_identity}",
            "shard_identities=2", "sampling.scheduler=ddim", f"sampling.steps={steps}", f"sampling.batch_size={batch}",
            f"sampling.dtype={dtype}", "filter.embedder=sface", "filter.threshold=-1", "filter.detector_threshold=0",
            f"filter.min_images={per_identity}", "output.image_format=jpeg", "output.image_size=112"]  # fmt: skip
    if "overlap" in GenerateRecipe.model_fields["sampling"].annotation.model_fields:
        sets.append(f"sampling.overlap={str(overlap).lower()}")
    recipe = load_recipe(GenerateRecipe, None, sets)
    load = generator_run.load_model
    if model is not None:
        generator_run.load_model = lambda *a, **k: model  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = generator_run.generate_dataset(recipe, Path(tmp) / "out", overwrite=True)
            seconds = time.perf_counter() - t0
    finally:
        generator_run.load_model = load
    timings = {k: round(v, 3) for k, v in summary.get("timings", {}).items()}
    return {
        "seconds": seconds,
        "images": int(summary["images_rendered"]),
        "run_images_per_s": summary["images_per_second"],
        "timings": timings,
    }


def measure_model(name: str, model: GeneratorModel, model_path: str, plain: Callable, args: argparse.Namespace,
                  dtype: str, batch: int, left: Callable[[], float], result: dict[str, Any], save: Callable[[], None]) -> None:  # fmt: skip
    """Every measurement of one model into ``result`` (see the module docstring), ``save()`` after each."""
    device = model.device
    emb = embeddings(batch, model.embedding_dim, 1)
    options = ["", "channels_last"]
    if model.vae is not None and hasattr(model.vae, "enable_tiling"):
        options.append("vae_tiling")
    kinds: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("plain", lambda: {"seconds": timed(plain, emb, args.steps, device, args.batches), "images": batch * args.batches})
    ]

    def fast(option: str) -> dict[str, Any]:
        with FastPath(model, option):
            return {"seconds": timed(loop(model), emb, args.steps, device, args.batches), "images": batch * args.batches}

    for option in options:
        kinds.append(("loop" + (f"+{option}" if option else ""), lambda option=option: fast(option)))
    per_identity = max(1, batch // 2)
    identities = max(2, args.e2e_batches * batch * 2 // (3 * per_identity))  # oversample 1.5: about e2e_batches batches
    for overlap in (True, False):
        kinds.append((
            "end_to_end" + ("" if overlap else " serial"),
            lambda overlap=overlap: end_to_end(model_path, None if model_path != "(in memory)" else model, batch, args.steps,
                                               dtype, overlap, identities, per_identity),
        ))  # fmt: skip
    if args.compile:  # last: its first call compiles (a minute or more for the SD UNet)
        kinds.append(("loop+compile", lambda: fast("compile")))
    result.update({"batch": batch, "dtype": dtype, "image_size": model.image_size, "runs": {}, "skipped": [],
                   "unet_parameters": sum(p.numel() for p in model.unet.parameters())})  # fmt: skip
    last: dict[str, float] = {}
    try:  # one-time costs (imports, the SFace graph, the first Parquet file) are no end-to-end run's
        end_to_end(model_path, None if model_path != "(in memory)" else model, batch, 1, dtype, False, 1, per_identity)
    except Exception as exc:  # noqa: BLE001 - the timed runs will say what fails
        result["skipped"].append(f"end-to-end warm-up: {type(exc).__name__}")
    for repeat in range(args.repeats):
        for kind, fn in kinds:
            if left() < 5 + 1.5 * last.get(kind, 0.0):
                result["skipped"].append(f"{kind} (repeat {repeat + 1}): out of time")
                continue
            t1 = time.perf_counter()
            try:
                run = fn()
            except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
                result["skipped"].append(f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
                continue
            last[kind] = time.perf_counter() - t1
            run["images_per_s"] = run["images"] / run["seconds"]
            run["seconds"] = round(run["seconds"], 4)
            result["runs"].setdefault(kind, []).append(run)
            print(f"{name} {kind}: {run['images_per_s']:.3f} images/s", flush=True)
            best = {k: max(r["images_per_s"] for r in v) for k, v in result["runs"].items()}
            result["images_per_s"] = best
            if best.get("plain"):
                result["ratio_to_plain"] = {k: v / best["plain"] for k, v in best.items()}
            if best.get("end_to_end serial") and best.get("end_to_end"):
                result["overlap_ratio"] = best["end_to_end"] / best["end_to_end serial"]
            save()  # after every measurement: a run stopped by its time limit keeps what it measured


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--toy", action="store_true", help="toy sizes (the default on a CPU)")
    ap.add_argument("--models", default="sd15,native")
    ap.add_argument("--vae", default=None, help="TAEF2 folder of the native model (default: the recipe's model.vae)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (25 on a GPU, 4 toy)")
    ap.add_argument("--batch", type=int, default=None, help="SD batch (16 on a GPU, 4 toy); native: 4x that on a GPU")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="bf16 on a GPU, fp32 on a CPU")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (1 on a GPU, 2 toy)")
    ap.add_argument("--batches", type=int, default=None, help="batches per loop measurement (2 on a GPU, 4 toy)")
    ap.add_argument(
        "--e2e-batches", type=int, default=None, help="about this many batches per end-to-end run (4 on a GPU, 8 toy)"
    )
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="measure torch.compile (GPU default)")
    ap.add_argument("--seconds", type=float, default=1e9, help="time box: measurements that no longer fit are skipped")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the random modules cast to bf16 without from_pretrained: a warning each
    device = torch.device(args.device)
    toy = args.toy or device.type == "cpu"
    args.steps = args.steps or (4 if toy else 25)
    args.repeats = args.repeats or (3 if toy else 1)
    args.batches = args.batches or (4 if toy else 2)
    args.e2e_batches = args.e2e_batches or (8 if toy else 4)
    args.compile = (device.type == "cuda") if args.compile is None else args.compile
    dtype = args.dtype or ("fp32" if device.type == "cpu" else "bf16")
    batch = args.batch or (4 if toy else 16)
    result: dict[str, Any] = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(), "toy": toy,
        "steps": args.steps, "scheduler": "ddim", "guidance_scale": 3.0, "repeats": args.repeats, "batches": args.batches,
        "e2e_batches": args.e2e_batches, "models": {},
    }  # fmt: skip

    def save() -> None:
        result["seconds"] = round(time.time() - t0, 1)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    def left() -> float:
        return args.seconds - (time.time() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        for name in [m for m in args.models.split(",") if m]:
            if name == "sd15":
                model: Any = build_sd(toy, device, DTYPES[dtype])
                path, plain, b = "(in memory)", sd_plain(model), batch
            elif name == "native":
                model, folder = build_native_model(toy, args.vae, device, DTYPES[dtype], Path(tmp) / "native")
                path, plain, b = str(folder), native_plain(model), batch if toy else 4 * batch
            else:
                raise SystemExit(f"unknown model '{name}': use sd15 and/or native")
            measure_model(name, model, path, plain, args, dtype, b, left, result["models"].setdefault(name, {}), save)
            del model, plain
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for name, r in result["models"].items():
        ratios = ", ".join(f"{k} {v:.3f}" for k, v in r.get("ratio_to_plain", {}).items())
        print(
            f"{name}: ratio to plain: {ratios}" + (f"; overlap on/off {r['overlap_ratio']:.3f}" if "overlap_ratio" in r else "")
        )
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
