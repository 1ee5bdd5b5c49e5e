"""Throughput of the native latent generator at the recipe's size, on the device, in well under a minute.

Measured on a random model built from the recipe (``--recipe``, ``--set`` overrides; TAEF2 as its
latent space), each after a warm-up call, time-boxed by ``--seconds`` (measurements that no longer
fit are skipped and say so):

1. ``train``: optimizer steps per second of the training step `synthface train` runs (projector +
   UNet, v-prediction MSE with min-SNR weights, AdamW, EMA update) at the recipe's batch size on
   random latents, under the recipe's mixed precision. bench/device/run.sh sets train.max_steps
   from it, so the cosine schedule ends inside the training budget.
2. ``generate``: images per second of ``synthface.generator.pipeline.generate`` (DDIM, 25 steps,
   CFG 3: the per-sample conditioning, fixed-shape products and per-sample VAE decoding that keep a
   sample independent of its batch), fp32 and bf16, batch 64 and 128, with the time per part.
3. ``plain``: the same UNet, scheduler and VAE in a plain diffusers-style loop (one batched
   conditional+unconditional UNet call per step, one batched VAE decode): what the batch invariance
   costs.

    python bench/device/throughput.py --vae .device/models/taef2 --json throughput.json
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from synthface.config import TrainRecipe, load_recipe  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(recipe: TrainRecipe, vae_dir: str, folder: Path) -> Path:
    """A random native model of the recipe's architecture, saved to ``folder``."""
    from synthface.generator.native import build_native, default_scheduler_config
    from synthface.generator.taef2 import load_taef2

    m = recipe.model
    vae = load_taef2(vae_dir) if m.latent else None
    sched = default_scheduler_config(vae is not None, m.prediction_type, m.beta_schedule, m.zero_terminal_snr, m.timestep_spacing)
    model = build_native(
        embedder=recipe.embedder,
        embedding_dim=128,
        image_size=m.image_size,
        block_out_channels=m.block_out_channels,
        id_tokens=m.id_tokens,
        token_dim=m.token_dim,
        layers_per_block=m.layers_per_block,
        attention_head_dim=m.attention_head_dim,
        norm_num_groups=m.norm_num_groups,
        vae=vae,
        template_scale=m.template_scale,
        seed=recipe.seed,
        class_embedding=m.class_embedding,
        condition_mean=[0.0] * 128 if m.center_condition else None,
        scheduler_config=sched,
    )
    return model.save(folder)


def embeddings(n: int, seed: int = 0) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((n, 128)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def train_rate(model_dir: Path, recipe: TrainRecipe, device: torch.device, seconds: float) -> dict:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from synthface.generator.families import load_model
    from synthface.generator.training.objective import Denoiser, loss_weights, training_target

    t = recipe.train
    model = load_model(model_dir, device=device)
    denoiser = Denoiser(model.unet, model.projector).train()
    params = list(denoiser.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=t.weight_decay)
    ema = EMAModel(params, decay=t.ema_decay, use_ema_warmup=t.ema_warmup, power=t.ema_power)
    ema.to(device)
    sched = DDPMScheduler.from_config(model.scheduler_config)
    amp = t.mixed_precision if t.mixed_precision != "auto" else ("bf16" if device.type == "cuda" else "no")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    b = t.batch_size
    c, h, w = model.latent_shape
    gen = torch.Generator(device=device).manual_seed(0)
    cond = (torch.from_numpy(embeddings(b)) * np.sqrt(128)).to(device)
    sched.alphas_cumprod = sched.alphas_cumprod.to(device)

    def step() -> float:
        # the batch is drawn on the device, as the trainer's cached latents sit there: the rate is the model's, not the CPU's
        x0 = torch.randn((b, c, h, w), generator=gen, device=device)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        ts = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen, device=device)
        mask = torch.rand(b, generator=gen, device=device) < t.cond_dropout
        noisy = sched.add_noise(x0, noise, ts)
        target = training_target(sched, x0, noise, ts)
        weights = loss_weights(sched, ts, t.snr_gamma)
        ctx = (
            torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else torch.autocast(device.type, enabled=False)
        )
        with ctx:
            pred = denoiser(noisy, ts, cond, mask)
        per = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        loss = (per * weights.to(device)).mean() if weights is not None else per.mean()
        loss.backward()
        if t.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(params)
        return float(loss.detach())  # the trainer reads every step's loss too (a device sync per step)

    for _ in range(3):
        step()
    sync(device)
    t0, n = time.perf_counter(), 0
    while n < 5 or (time.perf_counter() - t0 < seconds and n < 1000):
        step()
        n += 1
    sync(device)
    dt = time.perf_counter() - t0
    return {
        "batch_size": b,
        "mixed_precision": amp,
        "steps": n,
        "seconds": round(dt, 3),
        "steps_per_s": n / dt,
        "images_per_s": n * b / dt,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }


def generate_rate(model, batch: int, steps: int) -> dict:
    from synthface.generator.pipeline import generate

    emb = embeddings(batch, 1)
    generate(model, emb, np.arange(batch), batch_size=batch, scheduler="ddim", steps=1)  # warm-up: the same shapes
    sync(model.device)
    t0 = time.perf_counter()
    images = generate(model, emb, np.arange(batch), batch_size=batch, scheduler="ddim", steps=steps, guidance_scale=3.0)
    sync(model.device)
    dt = time.perf_counter() - t0
    # the breakdown in a second pass: timing each part synchronises the device, which the timed pass must not do
    parts: dict[str, float] = {}
    generate(model, emb, np.arange(batch), batch_size=batch, scheduler="ddim", steps=steps, guidance_scale=3.0, timings=parts)
    return {
        "batch": batch,
        "seconds": round(dt, 3),
        "images_per_s": batch / dt,
        "parts_seconds_synchronised": {k: round(v, 3) for k, v in parts.items()},
        "mean_pixel": float(images.mean()),
    }


def plain_rate(model, batch: int, steps: int) -> dict:
    """A plain batched CFG loop over the same modules (diffusers pipeline style)."""
    from synthface.generator.schedules import make_scheduler

    device, dtype = model.device, model.dtype
    emb = torch.from_numpy(embeddings(batch, 1)).to(device)

    def run(n: int, k: int) -> torch.Tensor:
        sched = make_scheduler("ddim", model.scheduler_config)
        sched.set_timesteps(k, device=device)
        with torch.no_grad():
            hidden = torch.cat([model.condition(emb[:n]), model.uncondition(n)]).to(dtype)
            labels = model.class_labels(emb[:n], n)
            if labels is not None:
                labels = torch.cat([labels, model.class_labels(None, n)]).to(dtype)
            x = torch.randn((n, *model.latent_shape), device=device, dtype=torch.float32) * sched.init_noise_sigma
            for t in sched.timesteps:
                inp = sched.scale_model_input(x, t)
                out = model.unet(
                    torch.cat([inp, inp]).to(dtype), t, encoder_hidden_states=hidden, class_labels=labels, return_dict=False
                )[0].float()
                c, u = out.chunk(2)
                x = sched.step(u + 3.0 * (c - u), t, x, return_dict=False)[0]
            return model.decode(x.to(dtype)).float().div(2).add(0.5).clamp(0, 1).cpu()

    run(batch, 1)  # warm-up: the same shapes
    sync(device)
    t0 = time.perf_counter()
    images = run(batch, steps)
    sync(device)
    dt = time.perf_counter() - t0
    return {"batch": batch, "seconds": round(dt, 3), "images_per_s": batch / dt, "mean_pixel": float(images.mean()) * 255}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes/native-gpu-latent.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override key=value (repeatable)")
    ap.add_argument("--vae", default=None, help="TAEF2 folder (default: the recipe's model.vae)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="64,128")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--train-seconds", type=float, default=6.0, help="timed seconds of the training-step measurement")
    ap.add_argument(
        "--seconds", type=float, default=45.0, help="time box of the whole script (measurements that do not fit are skipped)"
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    recipe = load_recipe(TrainRecipe, args.recipe, args.sets)
    device = torch.device(args.device)
    result: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "recipe": args.recipe,
        "sets": args.sets,
        "steps": args.steps,
        "scheduler": "ddim",
        "guidance_scale": 3.0,
        "train": None,
        "generate": [],
        "plain": [],
        "skipped": [],
    }

    def save() -> None:
        result["seconds"] = round(time.time() - t0, 1)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    def left() -> float:
        return args.seconds - (time.time() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build(recipe, args.vae or str(recipe.model.vae), Path(tmp) / "model")
        from synthface.generator.families import load_model

        result["train"] = train_rate(model_dir, recipe, device, args.train_seconds)
        print(
            f"train: {result['train']['steps_per_s']:.2f} steps/s at batch {result['train']['batch_size']} "
            f"({result['train']['mixed_precision']})",
            flush=True,
        )
        save()
        batches = [int(b) for b in args.batches.split(",") if b]
        last = {"generate": 0.0, "plain": 0.0}  # seconds of the last measurement of each kind
        for name in [d for d in args.dtypes.split(",") if d]:
            model = load_model(model_dir, device=device, dtype=DTYPES[name])
            result["parameters_unet"] = sum(p.numel() for p in model.unet.parameters())
            for batch in batches:
                for kind, fn, out in (("generate", generate_rate, result["generate"]), ("plain", plain_rate, result["plain"])):
                    if left() < 3 + 1.5 * last[kind]:  # the previous measurement of this kind says it would not fit
                        result["skipped"].append(f"{kind} {name} batch {batch}: out of time")
                        continue
                    t1 = time.time()
                    try:
                        r = {"dtype": name} | fn(model, batch, args.steps)
                    except torch.cuda.OutOfMemoryError as exc:  # noqa: PERF203
                        r = {"dtype": name, "batch": batch, "error": str(exc).splitlines()[0][:200]}
                    last[kind] = (time.time() - t1) * (2 if name == "fp32" else 1)  # the next is bigger or slower
                    out.append(r)
                    print(f"{kind} {name} batch {batch}: {r.get('images_per_s', float('nan')):.1f} images/s", flush=True)
                    save()
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
