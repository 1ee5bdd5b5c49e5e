"""The one classifier-free-guidance sampling loop that every generator family runs through.

A family (native, Arc2Face, ...) hands the loop a :class:`~synthface.generator.model.GeneratorModel`: the diffusers UNet, an
optional VAE, the latent shape, the scheduler config it was trained with, and how to turn identity
embeddings into the UNet's ``encoder_hidden_states`` for the conditional and unconditional branch.

Determinism: every sample owns a CPU ``torch.Generator`` seeded with its own seed; it draws the
initial noise and every stochastic scheduler step's noise, so a sample depends on its seed only.
On top of that the loop keeps each sample's arithmetic independent of the batch around it: the
conditioning is computed per sample, the timestep embedding once per step (all rows share it), the
UNet never runs on a single row, and the VAE decodes one sample at a time. On CPU this makes images
bitwise identical whatever the batch size; on GPUs the BLAS/cuDNN kernel choice still depends on the
batch shape, so only a fixed batch size is bitwise stable there (process count and resume never
change a batch, see synthface/dataset/plan.py). There the per-row work would buy nothing and costs
launches (one VAE decode per sample, two hooks on every linear layer at every step), so on an
accelerator the conditioning, the linear layers and the decode run batched
(:func:`batch_invariant` says which).

The schedulers it runs come from :mod:`synthface.generator.schedules`; identity guidance (the
gradient of a differentiable embedder's cosine to the target) from :mod:`synthface.generator.guidance`.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from synthface.errors import ConfigError, ModelMismatchError
from synthface.generator.model import GeneratorModel
from synthface.generator.guidance import MIN_GUIDED_ALPHA_BAR, from_eps, guide_gradient, to_eps_x0
from synthface.generator.schedules import alpha_bar, make_scheduler, partial_schedule, set_timesteps


# --------------------------------------------------------------------------- batch-invariance helpers


_FIXED_ROWS = 8


def batch_invariant(device: torch.device) -> bool:
    """Whether the loop keeps a sample's arithmetic independent of its batch on ``device`` (the CPU only)."""
    return device.type == "cpu"


@contextlib.contextmanager
def shared_timestep(unet: Any) -> Iterator[None]:
    """Compute the timestep embedding once per call (and any class embedding row by row), with fixed matrix shapes.

    Every row of a call shares the timestep, so the embedding is computed on one row and
    broadcast over the batch (exact, and cheaper). The (B, C) products whose rounding would
    otherwise follow the batch size become fixed-shape ones: every 2-D linear layer that sees a
    single row runs on that row repeated ``_FIXED_ROWS`` times (single-row products take
    matrix-vector kernels whose rounding was seen to vary between processes).
    """
    module = getattr(unet, "time_embedding", None)
    if module is None:
        yield
        return

    def first_row(_mod: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0][:1],) + tuple(args[1:])

    widened: set[int] = set()

    def widen(mod: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        if torch.is_tensor(x) and x.ndim == 2 and x.shape[0] == 1:
            widened.add(id(mod))
            return (x.repeat(_FIXED_ROWS, 1),) + tuple(args[1:])
        return None

    def narrow(mod: Any, _args: tuple[Any, ...], out: Any) -> Any:
        if id(mod) in widened:
            widened.discard(id(mod))
            return out[:1]
        return None

    handles = [module.register_forward_pre_hook(first_row)]
    if batch_invariant(unet.device):
        # On GPUs only a fixed batch size is bitwise stable anyway: there the batched products stay.
        labels = getattr(unet, "class_embedding", None)
        if labels is not None:
            # the identity's class embedding makes the time embedding differ per row: it, and every
            # projection of it into a resnet, runs one (fixed-shape) row at a time
            handles.append(_RowWise(labels))
            handles.extend(_RowWise(sub) for name, sub in unet.named_modules() if name.endswith("time_emb_proj"))
        for sub in unet.modules():
            if isinstance(sub, torch.nn.Linear):
                handles.append(sub.register_forward_pre_hook(widen))
                handles.append(sub.register_forward_hook(narrow))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _RowWise:
    """Runs a module one row at a time until removed (a hook handle's interface).

    A bare Linear sees each row repeated ``_FIXED_ROWS`` times (a fixed-shape product, see
    :func:`shared_timestep`); other modules run per row and their inner Linears get those hooks.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        forward = module.forward
        if isinstance(module, torch.nn.Linear):

            def row(x: torch.Tensor) -> torch.Tensor:
                return forward(x.repeat(_FIXED_ROWS, 1))[:1]

        else:
            row = forward  # its inner modules run through __call__, so their hooks fire
        module.forward = lambda x, *a, **k: torch.cat([row(x[i : i + 1], *a, **k) for i in range(x.shape[0])])

    def remove(self) -> None:
        del self.module.forward  # back to the class's forward


def unet_forward(
    model: GeneratorModel, x: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """One UNet call; a single row is padded to two so kernels never take their batch-1 paths."""
    n = x.shape[0]
    if n == 1:
        x, hidden = x.repeat(2, 1, 1, 1), hidden.repeat(2, 1, 1)
        labels = labels.repeat(2, 1) if labels is not None else None
    out = model.unet(x, t, encoder_hidden_states=hidden, class_labels=labels, return_dict=False)[0]
    return out[:n]


class _Clock:
    """Accumulates wall seconds per named part into ``timings`` (no-op when it is None)."""

    def __init__(self, timings: dict[str, float] | None, device: torch.device) -> None:
        self.timings = timings
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        if self.timings is None:
            yield
            return
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - start


# --------------------------------------------------------------------------- the loop


def _checked_embeddings(model: GeneratorModel, embeddings: torch.Tensor | np.ndarray | None, n: int) -> torch.Tensor:
    """``embeddings`` as a float32 (n, D) tensor, or the named error for a missing, misshapen or wrong-size one."""
    if embeddings is None:
        raise ConfigError("conditional sampling needs identity embeddings")
    emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32) if not torch.is_tensor(embeddings) else embeddings)
    emb = emb.float()
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ConfigError(f"embeddings must have shape ({n}, D), got {tuple(emb.shape)}")
    if emb.shape[1] != model.embedding_dim:
        raise ModelMismatchError(
            f"identity embeddings have dimension {emb.shape[1]} but the {model.family} model expects "
            f"{model.embedding_dim} ({model.embedder} embeddings): use identities from that embedder"
        )
    return emb


def _conditioning(
    model: GeneratorModel, emb: torch.Tensor | None, n: int, *, cfg: bool, per_row: bool
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(hidden states, class labels or None, branches) of one batch: the conditional rows, followed by
    the unconditional ones when classifier-free guidance runs (``cfg``); the unconditional rows alone
    when ``emb`` is None."""
    device, dtype = model.device, model.dtype
    if emb is None:
        hidden = model.uncondition(n).to(device, dtype)
        labels = model.class_labels(None, n)
        branches = 1
    else:
        # on the CPU one row at a time: the conditioning of a sample never depends on its batch
        cond = _by_row(model.condition, emb.to(device), per_row).to(dtype)
        labels = model.class_labels(emb.to(device), n)
        if not cfg:
            hidden, branches = cond, 1
        else:
            hidden, branches = torch.cat([cond, model.uncondition(n).to(device, dtype)]), 2
            if labels is not None:
                labels = torch.cat([labels, model.class_labels(None, n)])
    return hidden, (labels.to(device, dtype) if labels is not None else None), branches


def sample_batch(
    model: GeneratorModel,
    embeddings: torch.Tensor | np.ndarray | None,
    seeds: list[int] | np.ndarray,
    *,
    scheduler: str = "dpmsolver++",
    steps: int = 25,
    guidance_scale: float | Sequence[float] | np.ndarray = 3.0,
    identity_scale: float = 0.0,
    identity_guide: torch.nn.Module | None = None,
    unconditional: bool = False,
    init_images: torch.Tensor | None = None,
    strength: float = 1.0,
    timings: dict[str, float] | None = None,
) -> torch.Tensor:
    """Sample one batch: images (B, 3, H, W) float32 in [0, 1] on the CPU.

    ``embeddings`` (B, D) condition the samples (ignored, may be None, when ``unconditional``);
    ``seeds`` (B,) seed each sample's own generator. ``guidance_scale`` > 1 runs classifier-free
    guidance with the conditional and unconditional rows in ONE batched UNet call; at or below 1 the
    conditional branch runs alone (diffusers' rule: a scale <= 1 turns guidance off, it never pushes
    towards the unconditional output); a sequence gives each sample its own scale. With ``identity_scale`` > 0 and a differentiable ``identity_guide`` the
    noise prediction is pushed along the gradient of cos(guide(x0_hat), embedding) (or, for a noise-aware
    :class:`~synthface.generator.identity_head.IdentityHead`, of cos(head(x_t, t), embedding)).
    ``init_images`` (B, 3, H, W) in [0, 1] start each sample from its image, encoded and noised to
    the timestep where the last ``strength`` of the schedule remains (SDEdit); the noise is drawn
    from the sample's generator, so the result still depends on its seed and image only.
    """
    device, dtype = model.device, model.dtype
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    if n == 0:
        h = model.image_size
        return torch.zeros((0, 3, h, h))
    clock = _Clock(timings, device)
    per_row = batch_invariant(device)
    emb = None if unconditional else _checked_embeddings(model, embeddings, n)
    guided = identity_scale > 0
    if guided and identity_guide is None:
        raise ConfigError("sampling.identity_scale > 0 needs a differentiable identity guide module")
    if init_images is not None and tuple(init_images.shape) != (n, 3, model.image_size, model.image_size):
        side = model.image_size
        raise ConfigError(f"init_images must have shape ({n}, 3, {side}, {side}), got {tuple(init_images.shape)}")
    # diffusers' rule: classifier-free guidance only above 1; at or below 1 the conditional branch alone
    scales = [g if g > 1.0 else 1.0 for g in _guidance_scales(guidance_scale, n)]
    # one scale for every row stays a Python float: the arithmetic (and so the images) of the plain path
    scale: float | torch.Tensor = scales[0] if len(set(scales)) == 1 else torch.tensor(scales, device=device).view(n, 1, 1, 1)

    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    sched = make_scheduler(scheduler, model.scheduler_config)
    set_timesteps(sched, scheduler, steps, device)
    pred_type = str(sched.config.get("prediction_type", "epsilon"))

    from diffusers.utils.torch_utils import randn_tensor

    x = randn_tensor((n, *model.latent_shape), generator=generators, device=device, dtype=torch.float32)
    timesteps = sched.timesteps
    if init_images is None:
        x = x * sched.init_noise_sigma
    else:
        timesteps = partial_schedule(sched, strength)
        with torch.no_grad(), clock("encode"):
            start = _by_row(model.encode, init_images.to(device, dtype).mul(2).sub(1), per_row).float()
        x = sched.add_noise(start, x, timesteps[:1].repeat(n))

    with torch.no_grad(), clock("condition"):
        hidden, labels, branches = _conditioning(model, emb, n, cfg=any(g != 1.0 for g in scales), per_row=per_row)

    target = emb.to(device) if guided and emb is not None else None
    with torch.no_grad(), shared_timestep(model.unet):
        for t in timesteps:
            with clock("scheduler"):
                inp = sched.scale_model_input(x, t)
                rows = torch.cat([inp] * branches) if branches > 1 else inp
            with clock("unet"):
                out = unet_forward(model, rows.to(dtype), t, hidden, labels).float()
            with clock("scheduler"):
                if branches == 2:
                    cond_out, uncond_out = out.chunk(2)
                    out = uncond_out + scale * (cond_out - uncond_out)
            # at (near) zero SNR the x0 estimate is undefined and carries no identity: no guidance there
            if target is not None and (a := alpha_bar(sched, t)) > MIN_GUIDED_ALPHA_BAR:
                with clock("identity_guidance"):
                    eps, _ = to_eps_x0(pred_type, out, x, a)
                    grad = guide_gradient(model, identity_guide, x, eps, a, t, target)
                    eps = eps - identity_scale * math.sqrt(1.0 - a) * grad
                    out = from_eps(pred_type, eps, x, a)
            with clock("scheduler"):
                x = sched.step(out, t, x, generator=generators, return_dict=False)[0]

    with torch.no_grad(), clock("decode"):
        images = x if model.vae is None else _by_row(model.decode, x.to(dtype), per_row)
        images = images.float().div(2).add(0.5).clamp(0, 1).cpu()
    return images


def _guidance_scales(guidance_scale: float | Sequence[float] | np.ndarray, n: int) -> list[float]:
    if isinstance(guidance_scale, (int, float)):
        return [float(guidance_scale)] * n
    scales = [float(g) for g in guidance_scale]
    if len(scales) != n:
        raise ConfigError(f"guidance_scale must be one number or one per sample ({n}), got {len(scales)}")
    return scales


def _by_row(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, per_row: bool) -> torch.Tensor:
    """``fn(x)``, or with ``per_row`` (the CPU) ``fn`` on one row at a time, so a sample's result never
    depends on the batch it is in (conditioning, VAE encode and decode)."""
    if per_row:
        return torch.cat([fn(x[i : i + 1]) for i in range(x.shape[0])])
    return fn(x)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8."""
    return images.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def generate(
    model: GeneratorModel,
    embeddings: np.ndarray | torch.Tensor | None,
    seeds: list[int] | np.ndarray,
    *,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
    **options: Any,
) -> np.ndarray:
    """N images (N, H, W, 3) uint8 for N identity embeddings and seeds, in batches of ``batch_size``.

    ``options`` are :func:`sample_batch`'s keywords (scheduler, steps, guidance_scale, ...). The
    result does not depend on ``batch_size`` (see the module docstring).
    """
    seeds = np.asarray(seeds, dtype=np.int64)
    out = []
    for start in range(0, len(seeds), batch_size):
        stop = min(start + batch_size, len(seeds))
        emb = None if embeddings is None else embeddings[start:stop]
        out.append(to_uint8(sample_batch(model, emb, seeds[start:stop], **options)))
        if on_batch is not None:
            on_batch(stop - start)
    if not out:
        return np.zeros((0, model.image_size, model.image_size, 3), np.uint8)
    return np.concatenate(out)
