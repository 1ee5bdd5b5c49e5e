"""Cost of the identity term per training step: off, through decode + SFace, through the identity head.

The recipe-size latent UNet (``recipes/native-cpu-latent.yaml``'s model block: 128 px loose crops,
TAEF2 32x16x16 latents, [64, 128, 256, 256] x 1 layer, class embedding, v-prediction, zero terminal
SNR) takes full optimizer steps (forward, min-SNR weighted v loss, backward, AdamW) on one batch of
the recipe's size, exactly as ``synthface train`` does, with ``train.identity_loss`` at
``fraction`` of the batch (the same :class:`IdentityLoss` the loop runs):

* ``off``: the denoising loss only;
* ``decode+sface``: x0_hat -> the real TAEF2 decoder -> SFace's differentiable module at the
  loose crop's geometry (template_scale 0.6, warped to its 112 template);
* ``head``: x0_hat -> an identity head of the default size (``train.identity_head``), no decode.

Inputs are seeded random latents and unit embeddings (the cost does not depend on content). The
variants run interleaved, ``--steps`` timed steps each after one warm-up step; the headline is the
median CPU-seconds of this process per step (on a shared box the wall clock measures the other
jobs too; it is printed beside it), and each variant's ratio to ``off``. Then the decode+sface
term's two halves are timed apart (TAEF2 decode, SFace with its warp; forward and backward).

    OMP_NUM_THREADS=1 nice -n 15 python bench/identity_loss_cost.py --steps 3 \\
        --taef2 ../shared/models/taef2 | tee bench/results/identity_loss_cost.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, load average {load} at start; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "native-cpu-latent.yaml"))
    ap.add_argument("--taef2", default=None, help="TAEF2 folder; default: the recipe's model.vae")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the recipe's train.batch_size")
    ap.add_argument("--fraction", type=float, default=0.25, help="train.identity_loss.fraction")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from synthface.config import TrainRecipe, load_recipe
    from synthface.faces.sface import SFaceEmbedder
    from synthface.generator.identity_head import IdentityHead
    from synthface.generator.native import build_native, default_scheduler_config
    from synthface.generator.taef2 import load_taef2
    from synthface.generator.training.identity_loss import IdentityLoss
    from synthface.generator.training.objective import Denoiser, loss_weights, training_target

    torch.set_num_threads(1)
    config = load_recipe(TrainRecipe, args.recipe, [f"train.identity_loss.fraction={args.fraction}",
                                                    "train.identity_loss.timesteps=[0,999]"])  # fmt: skip
    m, t = config.model, config.train
    batch = args.batch_size or t.batch_size
    vae = load_taef2(args.taef2 or m.vae).eval().requires_grad_(False)
    dim = 128
    rng = np.random.default_rng(0)
    mean = rng.standard_normal(dim)
    sched_cfg = default_scheduler_config(True, m.prediction_type, m.beta_schedule, m.zero_terminal_snr, m.timestep_spacing)
    model = build_native(
        embedder="sface", embedding_dim=dim, image_size=m.image_size, block_out_channels=m.block_out_channels,
        id_tokens=m.id_tokens, token_dim=m.token_dim, layers_per_block=m.layers_per_block,
        attention_head_dim=m.attention_head_dim, norm_num_groups=m.norm_num_groups, vae=vae,
        template_scale=m.template_scale, class_embedding=m.class_embedding,
        condition_mean=mean / np.linalg.norm(mean), scheduler_config=sched_cfg,
    )  # fmt: skip
    denoiser = Denoiser(model.unet, model.projector).train()
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = DDPMScheduler.from_config(sched_cfg)
    sface = SFaceEmbedder(device="cpu").differentiable(image_size=m.image_size, template_scale=m.template_scale)
    h = config.train.identity_head
    channels, size, _ = model.latent_shape
    head = IdentityHead(in_channels=channels, sample_size=size, embedding_dim=dim, width=h.width, levels=h.levels)
    section = config.train.identity_loss
    variants = {
        "off": None,
        "decode+sface": IdentityLoss(section, sched, model, sface),
        "head": IdentityLoss(section, sched, model, head),
    }
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, channels, size, size, generator=gen)
    target = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    cond = target * dim**0.5

    def step(loss_fn) -> tuple[float, float, int]:
        noise = torch.randn(x0.shape, generator=gen)
        steps_t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        dropped = torch.zeros(batch, dtype=torch.bool)
        c, w = time.process_time(), time.perf_counter()
        noisy = sched.add_noise(x0, noise, steps_t)
        pred = denoiser(noisy, steps_t, cond, dropped)
        per = F.mse_loss(pred, training_target(sched, x0, noise, steps_t), reduction="none").mean(dim=(1, 2, 3))
        loss = (per * loss_weights(sched, steps_t, t.snr_gamma)).mean()
        rows = 0
        if loss_fn is not None:
            term, rows = loss_fn(noisy, pred, steps_t, target, dropped)
            loss = loss + section.weight * term if term is not None else loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.process_time() - c, time.perf_counter() - w, rows

    k = max(1, round(args.fraction * batch))

    def parts() -> tuple[float, float]:
        """CPU seconds of the decode+sface term's two halves on ``k`` rows, each forward and backward."""
        z = torch.randn(k, channels, size, size, generator=gen).requires_grad_(True)
        c = time.process_time()
        model.decode(z).sum().backward()
        decode = time.process_time() - c
        images = torch.rand(k, 3, m.image_size, m.image_size, generator=gen).requires_grad_(True)
        c = time.process_time()
        sface(images).sum().backward()
        return decode, time.process_time() - c

    print(machine())
    print(
        f"recipe {Path(args.recipe).name}: {sum(p.numel() for p in denoiser.parameters()) / 1e6:.1f}M-parameter UNet + "
        f"projector, latents {channels}x{size}x{size} ({m.image_size} px), batch {batch}; identity term on "
        f"{args.fraction:g} of the batch; head {sum(p.numel() for p in head.parameters()) / 1e6:.2f}M parameters"
    )
    for fn in variants.values():  # warm-up
        step(fn)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    rows_seen: dict[str, int] = {}
    for _ in range(args.steps):
        for name, fn in variants.items():
            cpu, wall, rows = step(fn)
            times[name].append((cpu, wall))
            rows_seen[name] = rows
    split = [parts() for _ in range(args.steps)]
    base = float(np.median([c for c, _ in times["off"]]))
    print(f"{'variant':<14} {'rows':>4} {'CPU s/step':>11} {'wall s/step':>12} {'ratio (CPU)':>12}   per-step CPU s")
    for name, values in times.items():
        cpu = float(np.median([c for c, _ in values]))
        wall = float(np.median([w for _, w in values]))
        shown = " ".join(f"{c:.2f}" for c, _ in values)
        print(f"{name:<14} {rows_seen[name]:>4} {cpu:>11.2f} {wall:>12.2f} {cpu / base:>12.2f}   {shown}")

    decode, embed = (float(np.median(v)) for v in zip(*split))
    print(
        f"decode+sface on {k} rows, forward + backward (CPU s, median): TAEF2 decode {decode:.2f} "
        f"({decode / k * 1000:.0f} ms/row), SFace with its warp {embed:.2f} ({embed / k * 1000:.0f} ms/row)"
    )


if __name__ == "__main__":
    main()
