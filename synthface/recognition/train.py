"""Train a face recognizer (IResNet + margin head) on one labelled training set, resumably.

SGD with momentum and weight decay, linear warmup then a step or polynomial decay
(arcface_torch's recipe), the papers' augmentations (horizontal flip, RandAugment,
RandomErasing), mixed precision on GPU (bf16 where supported, else fp16) and none on
CPU, and any number of processes through HF Accelerate (``accelerate launch``).
``train.batch_size`` is the global batch, split evenly over processes.

Data loading: when the decoded set fits in ``train.predecode_max_mb`` it is decoded
once (in DataLoader workers) to a uint8 tensor held in memory and augmented per item
in the training process on CPU (workers only add copies there) or in workers on GPU;
larger sets are decoded and augmented per item in ``train.workers`` DataLoader
processes. The order of samples is a seeded permutation per epoch, so a resumed run
sees the same batches as an uninterrupted one.

Outputs in the run folder: ``checkpoint.pt`` (everything needed to resume, written
every ``train.checkpoint_every`` steps and at the end), ``recognizer.pt`` (the final
backbone and what it needs to embed images) and ``history.json`` (training curve).

Slightly longer than most modules: the trainer and its checkpoint format are one piece of state.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from synthface.atomic import atomic_file
from synthface.config import EvaluateRecipe, config_dict, config_hash, diff_keys
from synthface.dataset.reader import FaceImages, InMemoryFaces, Transformed, predecode
from synthface.errors import ConfigError, InputError
from synthface.recognition.backbones import IResNet, default_input_size, get_backbone
from synthface.recognition.losses import MarginHead, get_head
from synthface.runtime import Progress, progress_or_null

RECOGNIZER_FORMAT = "synthface-recognizer/1"
CHECKPOINT = "checkpoint.pt"
RECOGNIZER = "recognizer.pt"
HISTORY = "history.json"


# --------------------------------------------------------------------------- pieces


def input_size_of(recipe: EvaluateRecipe) -> int:
    return recipe.recognizer.input_size or default_input_size(recipe.recognizer.backbone)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], as arcface_torch feeds its backbones."""
    return images.float().div_(127.5).sub_(1.0)


def build_transform(recipe: EvaluateRecipe):
    """Per-item training transform: uint8 (3, S, S) -> augmented float (3, S, S) in [-1, 1]."""
    from torchvision.transforms import v2

    t = recipe.train
    ops: list[Any] = []
    if "flip" in t.augment:
        ops.append(v2.RandomHorizontalFlip())
    if "randaugment" in t.augment:
        ops.append(v2.RandAugment(num_ops=t.randaugment_ops, magnitude=t.randaugment_magnitude))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]
    if "random_erasing" in t.augment:
        ops.append(v2.RandomErasing(p=t.random_erasing_p))
    return v2.Compose(ops)


def resolve_precision(name: str, device: torch.device) -> str:
    """Accelerate's mixed_precision for a recipe value: auto = bf16/fp16 on CUDA, none on CPU."""
    if device.type != "cuda":
        if name == "fp16":
            raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU: use auto, no or bf16 on CPU")
        return "bf16" if name == "bf16" else "no"
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def lr_factor(step: int, total: int, steps_per_epoch: int, recipe: EvaluateRecipe) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, then step / poly / constant."""
    t = recipe.train
    warmup = int(round(t.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if t.schedule == "step":
        passed = sum(step >= int(round(m * steps_per_epoch)) for m in t.milestones)
        return t.lr_decay**passed
    if t.schedule == "poly":
        span = max(1, total - warmup)
        return max(0.0, 1.0 - (step - warmup) / span) ** t.poly_power
    return 1.0


class ProcessEpochSampler(Sampler[int]):
    """This process's share of a seeded per-epoch permutation, from a given global step on.

    Global step s takes positions [s*B, (s+1)*B) of the permutation (B = global batch);
    process r of W takes the r-th slice of b = B/W of them. Same seed, same batches,
    whatever the number of processes or where a run was resumed.
    """

    def __init__(self, n: int, seed: int, per_process: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.b, self.rank, self.world = n, seed, per_process, rank, world
        self.epoch, self.skip = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // (self.b * self.world)

    def set_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_steps

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        big = self.b * self.world
        for s in range(self.skip, self.steps_per_epoch):
            start = s * big + self.rank * self.b
            yield from perm[start : start + self.b].tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.skip) * self.b


# --------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What a training run produced (``history`` rows: step, epoch, loss, accuracy, lr, images_per_s, elapsed_s)."""

    name: str
    run_dir: Path
    recognizer: Path
    steps: int
    total_steps: int
    epochs: float
    images: int
    identities: int
    wall_s: float
    images_per_s: float
    final_loss: float | None
    final_accuracy: float | None
    data_mode: str
    prepare_s: float
    device: str
    mixed_precision: str
    history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("history")
        out["run_dir"], out["recognizer"] = str(self.run_dir), str(self.recognizer)
        return out


# --------------------------------------------------------------------------- save / load


def _atomic_save(obj: Any, path: Path) -> None:
    # serialised in memory first: torch's writer turns a full disk into a RuntimeError without the
    # reason; a plain write raises the OSError (ENOSPC) that names it and, through atomic_file, the path
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_file(path) as handle:
        handle.write(buffer.getbuffer())


def save_recognizer(backbone: IResNet, recipe: EvaluateRecipe, path: Path, **meta: Any) -> Path:
    r = recipe.recognizer
    payload = {
        "format": RECOGNIZER_FORMAT,
        "backbone": r.backbone,
        "embedding_dim": r.embedding_dim,
        "input_size": backbone.input_size,
        "dropout": r.dropout,
        "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "config": config_dict(recipe),
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(payload, path)
    return path


def _torch_load(path: Path, what: str) -> dict:
    try:
        # weights_only: tensors and plain containers only, so a checkpoint can never run code
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except Exception as exc:  # damaged, or a pickle that asks for more than tensors
        detail = " ".join(str(exc).split())[:120]
        raise InputError(f"cannot load {what} {path}: {detail}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{what} {path} is not a synthface file")
    return obj


def load_recognizer(path: str | Path, device: str | torch.device = "cpu") -> tuple[IResNet, dict]:
    """Load a ``recognizer.pt`` (or a run folder holding one): the backbone in eval mode and its metadata."""
    path = Path(path)
    if path.is_dir():
        path = path / RECOGNIZER
    data = _torch_load(path, "recognizer")
    if data.get("format") != RECOGNIZER_FORMAT:
        raise InputError(f"{path} is not a synthface recognizer (format {data.get('format')!r}); pass a recognizer.pt")
    backbone = get_backbone(data["backbone"], data["embedding_dim"], data["input_size"], data.get("dropout", 0.0))
    try:
        backbone.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit {data['backbone']}: {str(exc)[:120]}") from None
    backbone.to(device).eval()
    return backbone, {k: v for k, v in data.items() if k != "state_dict"}


# --------------------------------------------------------------------------- training


def _data_loader(
    dataset: FaceImages, recipe: EvaluateRecipe, device: torch.device, sampler: ProcessEpochSampler, progress: Progress
) -> tuple[DataLoader, str]:
    t = recipe.train
    size = dataset.size
    transform = build_transform(recipe)
    mb = len(dataset) * 3 * size * size / 2**20
    if mb <= t.predecode_max_mb:
        images = predecode(dataset, workers=t.workers, progress=progress)
        data: Any = InMemoryFaces(images, dataset.labels, dataset.num_classes, transform)
        workers = t.workers if device.type == "cuda" else 0
        mode = f"in-memory uint8 ({mb:.0f} MiB), augmented in {'workers' if workers else 'the training process'}"
    else:
        data = Transformed(dataset, transform)
        workers = t.workers
        mode = f"decoded per item in {workers} DataLoader workers"
    loader = DataLoader(
        data,
        batch_size=sampler.b,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    return loader, mode


def _read_history(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / HISTORY).read_text(encoding="utf-8")).get("history", [])
    except (OSError, ValueError):
        return []


def train_recognizer(
    dataset: FaceImages,
    recipe: EvaluateRecipe,
    run_dir: str | Path,
    *,
    name: str = "train",
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``recipe.recognizer`` on ``dataset`` into ``run_dir``; resume from its checkpoint if asked.

    ``dataset`` must have been opened at ``input_size_of(recipe)``. With
    ``train.max_steps = 0`` the untrained (randomly initialised, seeded) backbone is
    saved: the baseline every trained recognizer must beat.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from synthface.runtime import resolve_device

    bar = progress_or_null(progress)
    run_dir = Path(run_dir)
    t, r = recipe.train, recipe.recognizer
    if t.max_steps is not None and t.max_steps < 0:
        raise ConfigError(f"train.max_steps must be >= 0 or null, got {t.max_steps}")
    size = input_size_of(recipe)
    if dataset.size != size:
        raise ConfigError(f"the training set was opened at {dataset.size} px but the recipe wants {size} px")
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    precision = resolve_precision(t.mixed_precision, device)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=precision)
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    if t.batch_size % world:
        raise ConfigError(f"train.batch_size {t.batch_size} must divide evenly over {world} processes")
    per_process = t.batch_size // world
    if len(dataset) < t.batch_size:
        raise InputError(
            f"training set '{name}' has {len(dataset)} images, fewer than one batch of {t.batch_size}: lower train.batch_size"
        )

    ident = {
        "config": config_hash(recipe),
        "images": len(dataset),
        "identities": dataset.num_classes,
    }
    ckpt_path = run_dir / CHECKPOINT
    final_path = run_dir / RECOGNIZER
    state: dict | None = None
    if ckpt_path.exists():
        if not resume:
            raise InputError(f"{run_dir} already holds a training run: pass --resume to continue it or choose a new --out")
        state = _torch_load(ckpt_path, "checkpoint")
        if state.get("ident") != ident:
            old = state.get("ident", {})
            keys = [k for k in ident if old.get(k) != ident[k]]
            if "config" in keys and isinstance(state.get("config"), dict):
                keys = ["recipe keys " + ", ".join(diff_keys(state["config"], config_dict(recipe)))] + [
                    k for k in keys if k != "config"
                ]
            raise ConfigError(
                f"cannot resume {run_dir}: {'; '.join(keys)} differ from the saved run; "
                "rerun with the same recipe and data, or use a new --out"
            )
    run_dir.mkdir(parents=True, exist_ok=True)

    set_seed(recipe.seed)
    backbone = get_backbone(r.backbone, r.embedding_dim, size, r.dropout)
    head: MarginHead = get_head(
        r.loss,
        dataset.num_classes,
        r.embedding_dim,
        margin=r.margin,
        scale=r.scale,
        combined=tuple(r.combined_margins),  # type: ignore[arg-type]
        adaface_h=r.adaface_h,
        adaface_t_alpha=r.adaface_t_alpha,
    )
    params = [p for p in list(backbone.parameters()) + list(head.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    sampler = ProcessEpochSampler(len(dataset), recipe.seed, per_process, rank, world)
    steps_per_epoch = sampler.steps_per_epoch
    total = t.max_steps if t.max_steps is not None else t.epochs * steps_per_epoch

    step, history, elapsed = 0, _read_history(run_dir), 0.0
    if state is not None:
        backbone.load_state_dict(state["backbone"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        history = [h for h in history if h["step"] <= step]
        torch.set_rng_state(state["rng"])
    else:
        history = []
    backbone, head, optimizer = accelerator.prepare(backbone, head, optimizer)

    def save_checkpoint() -> None:
        if not accelerator.is_main_process:
            return
        _atomic_save(
            {
                "ident": ident,
                "config": config_dict(recipe),
                "backbone": accelerator.unwrap_model(backbone).state_dict(),
                "head": accelerator.unwrap_model(head).state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "elapsed_s": elapsed,
                "rng": torch.get_rng_state(),
            },
            ckpt_path,
        )
        text = json.dumps({"name": name, "history": history}, indent=1)
        (run_dir / HISTORY).write_text(text + "\n", encoding="utf-8")

    data_mode, prepare_s = "none (no training steps)", 0.0
    if step < total:
        t_prep = time.perf_counter()
        loader, data_mode = _data_loader(dataset, recipe, device, sampler, bar)
        prepare_s = time.perf_counter() - t_prep
        backbone.train()
        head.train()
        bar.start(total, f"train {name}")
        if step:
            bar.advance(step)
        window = {"loss": 0.0, "correct": 0, "seen": 0, "steps": 0, "t0": time.perf_counter()}
        run_t0 = time.perf_counter() - elapsed
        while step < total:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, in_epoch)
            for images, labels in loader:
                factor = lr_factor(step, total, steps_per_epoch, recipe)
                for group in optimizer.param_groups:
                    group["lr"] = t.lr * factor
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with accelerator.autocast():
                    embeddings = backbone(images)
                loss, cos = head(embeddings.float(), labels)
                if not torch.isfinite(loss):
                    raise InputError(
                        f"training '{name}' diverged at step {step} (loss {loss.item()}): lower train.lr or the margin"
                    )
                accelerator.backward(loss)
                if t.clip_grad_norm:
                    accelerator.clip_grad_norm_(params, t.clip_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window["loss"] += float(loss.detach())
                window["correct"] += int((cos.argmax(dim=1) == labels).sum())
                window["seen"] += len(labels)
                window["steps"] += 1
                if step % t.log_every == 0 or step == total:
                    now = time.perf_counter()
                    elapsed = now - run_t0
                    row = {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 4),
                        "loss": window["loss"] / window["steps"],
                        "accuracy": window["correct"] / window["seen"],
                        "lr": t.lr * factor,
                        "images_per_s": window["seen"] * world / max(now - window["t0"], 1e-9),
                        "elapsed_s": round(elapsed, 3),
                    }
                    history.append(row)
                    window = {"loss": 0.0, "correct": 0, "seen": 0, "steps": 0, "t0": now}
                bar.advance(
                    1,
                    loss=float(loss.detach()),
                    acc=history[-1]["accuracy"] if history else 0.0,
                    img_s=history[-1]["images_per_s"] if history else 0.0,
                )
                if step % t.checkpoint_every == 0 or step == total:
                    elapsed = time.perf_counter() - run_t0
                    save_checkpoint()
                if step >= total:
                    break
        bar.finish()
        elapsed = time.perf_counter() - run_t0
    save_checkpoint()
    accelerator.wait_for_everyone()

    images_seen = step * t.batch_size
    last = history[-1] if history else {}
    meta = {
        "name": name,
        "steps": step,
        "identities": dataset.num_classes,
        "images": len(dataset),
        "wall_s": round(elapsed, 3),
    }
    if accelerator.is_main_process:
        save_recognizer(accelerator.unwrap_model(backbone), recipe, final_path, **meta)
    accelerator.wait_for_everyone()
    return TrainResult(
        name=name,
        run_dir=run_dir,
        recognizer=final_path,
        steps=step,
        total_steps=total,
        epochs=round(step / steps_per_epoch, 3),
        images=len(dataset),
        identities=dataset.num_classes,
        wall_s=round(elapsed, 3),
        images_per_s=round(images_seen / elapsed, 2) if elapsed > 0 else 0.0,
        final_loss=last.get("loss"),
        final_accuracy=last.get("accuracy"),
        data_mode=data_mode,
        prepare_s=round(prepare_s, 3),
        device=str(device),
        mixed_precision=precision,
        history=history,
    )
