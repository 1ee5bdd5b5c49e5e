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

The run is set up once (:class:`RecognizerRun`: models, optimizer, sampler, resumed position), then
trained step by step; the epoch order, precision rule, resume check and thread count are those of
:mod:`synthface.training`, shared with the generator's trainer.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from synthface.atomic import atomic_torch_save, atomic_write_text
from synthface.config import EvaluateRecipe, config_dict, config_hash
from synthface.dataset.reader import FaceImages, InMemoryFaces, Transformed, predecode
from synthface.errors import ConfigError, InputError
from synthface.recognition.backbones import IResNet, default_input_size, get_backbone
from synthface.recognition.losses import MarginHead, get_head
from synthface.runtime import Progress, progress_or_null
from synthface.training import ProcessEpochSampler, check_resume, recipe_changes, resolve_precision, torch_threads

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
    atomic_torch_save(payload, path)
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


@dataclass
class RecognizerRun:
    """Everything one recognizer training run holds: set up by :func:`_setup`, advanced by :func:`_train`."""

    recipe: EvaluateRecipe
    dataset: FaceImages
    run_dir: Path
    name: str
    accelerator: Any
    precision: str
    ident: dict[str, Any]
    backbone: Any
    head: Any
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    sampler: ProcessEpochSampler
    total: int
    step: int = 0
    elapsed: float = 0.0
    history: list[dict] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch


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
    saved: the baseline every trained recognizer must beat. torch's thread count is
    ``train.threads`` during the run and what it was before after it.
    """
    bar = progress_or_null(progress)
    with torch_threads(recipe.train.threads):
        run = _setup(dataset, recipe, Path(run_dir), name, resume)
        data_mode, prepare_s = "none (no training steps)", 0.0
        if run.step < run.total:
            data_mode, prepare_s = _train(run, bar)
        _save_checkpoint(run)
        run.accelerator.wait_for_everyone()
        return _finish(run, data_mode, prepare_s)


def _check_inputs(dataset: FaceImages, recipe: EvaluateRecipe, name: str) -> None:
    t = recipe.train
    if t.max_steps is not None and t.max_steps < 0:
        raise ConfigError(f"train.max_steps must be >= 0 or null, got {t.max_steps}")
    size = input_size_of(recipe)
    if dataset.size != size:
        raise ConfigError(f"the training set was opened at {dataset.size} px but the recipe wants {size} px")


def _saved_state(run_dir: Path, ident: dict[str, Any], recipe: EvaluateRecipe, resume: bool) -> dict | None:
    """The checkpoint to continue from (None: a fresh run); refuses one of another recipe or data set."""
    ckpt_path = run_dir / CHECKPOINT
    if not check_resume(run_dir, ckpt_path.exists(), resume):
        return None
    state = _torch_load(ckpt_path, "checkpoint")
    if state.get("ident") != ident:
        old = state.get("ident", {})
        keys = [k for k in ident if old.get(k) != ident[k]]
        if "config" in keys and isinstance(state.get("config"), dict):
            keys = ["recipe keys " + ", ".join(recipe_changes(state["config"], config_dict(recipe)))] + [
                k for k in keys if k != "config"
            ]
        raise ConfigError(
            f"cannot resume {run_dir}: {'; '.join(keys)} differ from the saved run; "
            "rerun with the same recipe and data, or use a new --out"
        )
    return state


def _setup(dataset: FaceImages, recipe: EvaluateRecipe, run_dir: Path, name: str, resume: bool) -> RecognizerRun:
    """Validate, start Accelerate, build (or restore) the models, optimizer and sampler."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from synthface.runtime import resolve_device

    t, r = recipe.train, recipe.recognizer
    _check_inputs(dataset, recipe, name)
    device = resolve_device(t.device)
    precision = resolve_precision(t.mixed_precision, device.type)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    if t.batch_size % world:
        raise ConfigError(f"train.batch_size {t.batch_size} must divide evenly over {world} processes")
    if len(dataset) < t.batch_size:
        raise InputError(
            f"training set '{name}' has {len(dataset)} images, fewer than one batch of {t.batch_size}: lower train.batch_size"
        )
    ident = {"config": config_hash(recipe), "images": len(dataset), "identities": dataset.num_classes}
    state = _saved_state(run_dir, ident, recipe, resume)
    run_dir.mkdir(parents=True, exist_ok=True)

    set_seed(recipe.seed)
    backbone = get_backbone(r.backbone, r.embedding_dim, input_size_of(recipe), r.dropout)
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
    sampler = ProcessEpochSampler(len(dataset), recipe.seed, t.batch_size // world, rank, world)
    total = t.max_steps if t.max_steps is not None else t.epochs * sampler.steps_per_epoch

    step, history, elapsed = 0, [], 0.0
    if state is not None:
        backbone.load_state_dict(state["backbone"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        history = [h for h in _read_history(run_dir) if h["step"] <= step]
        torch.set_rng_state(state["rng"])
    backbone, head, optimizer = accelerator.prepare(backbone, head, optimizer)
    return RecognizerRun(
        recipe, dataset, run_dir, name, accelerator, precision, ident, backbone, head, optimizer, params, sampler, total,
        step, elapsed, history,
    )  # fmt: skip


def _save_checkpoint(run: RecognizerRun) -> None:
    """checkpoint.pt (everything to resume from) and history.json, by the main process."""
    if not run.accelerator.is_main_process:
        return
    unwrap = run.accelerator.unwrap_model
    atomic_torch_save(
        {
            "ident": run.ident,
            "config": config_dict(run.recipe),
            "backbone": unwrap(run.backbone).state_dict(),
            "head": unwrap(run.head).state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "step": run.step,
            "elapsed_s": run.elapsed,
            "rng": torch.get_rng_state(),
        },
        run.run_dir / CHECKPOINT,
    )
    text = json.dumps({"name": run.name, "history": run.history}, indent=1)
    atomic_write_text(run.run_dir / HISTORY, text + "\n")


class _Window:
    """Running sums of the steps since the last training-curve point."""

    def __init__(self) -> None:
        self.loss, self.correct, self.seen, self.steps, self.t0 = 0.0, 0, 0, 0, time.perf_counter()

    def add(self, loss: float, correct: int, seen: int) -> None:
        self.loss += loss
        self.correct += correct
        self.seen += seen
        self.steps += 1


def _train(run: RecognizerRun, bar: Any) -> tuple[str, float]:
    """Train from ``run.step`` to ``run.total``; returns (how the data is loaded, seconds to prepare it)."""
    t = run.recipe.train
    t_prep = time.perf_counter()
    loader, data_mode = _data_loader(run.dataset, run.recipe, run.device, run.sampler, bar)
    prepare_s = time.perf_counter() - t_prep
    run.backbone.train()
    run.head.train()
    bar.start(run.total, f"train {run.name}")
    if run.step:
        bar.advance(run.step)
    window = _Window()
    run_t0 = time.perf_counter() - run.elapsed
    while run.step < run.total:
        epoch, in_epoch = divmod(run.step, run.steps_per_epoch)
        run.sampler.set_epoch(epoch, in_epoch)
        for images, labels in loader:
            factor = lr_factor(run.step, run.total, run.steps_per_epoch, run.recipe)
            loss, correct = _step(run, images, labels, t.lr * factor)
            window.add(loss, correct, len(labels))
            if run.step % t.log_every == 0 or run.step == run.total:
                run.elapsed = time.perf_counter() - run_t0
                run.history.append(_curve_point(run, window, t.lr * factor))
                window = _Window()
            last = run.history[-1] if run.history else {}
            bar.advance(1, loss=loss, acc=last.get("accuracy", 0.0), img_s=last.get("images_per_s", 0.0))
            if run.step % t.checkpoint_every == 0 or run.step == run.total:
                run.elapsed = time.perf_counter() - run_t0
                _save_checkpoint(run)
            if run.step >= run.total:
                break
    bar.finish()
    run.elapsed = time.perf_counter() - run_t0
    return data_mode, prepare_s


def _step(run: RecognizerRun, images: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[float, int]:
    """One optimizer step at learning rate ``lr``; returns (loss, correctly classified images)."""
    t = run.recipe.train
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    images = images.to(run.device, non_blocking=True)
    labels = labels.to(run.device, non_blocking=True)
    with run.accelerator.autocast():
        embeddings = run.backbone(images)
    loss, cos = run.head(embeddings.float(), labels)
    if not torch.isfinite(loss):
        raise InputError(f"training '{run.name}' diverged at step {run.step} (loss {loss.item()}): lower train.lr or the margin")
    run.accelerator.backward(loss)
    if t.clip_grad_norm:
        run.accelerator.clip_grad_norm_(run.params, t.clip_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return float(loss.detach()), int((cos.argmax(dim=1) == labels).sum())


def _curve_point(run: RecognizerRun, window: _Window, lr: float) -> dict[str, Any]:
    """A history row: step, epoch, the window's mean loss and accuracy, lr, throughput, elapsed time."""
    now = time.perf_counter()
    return {
        "step": run.step,
        "epoch": round(run.step / run.steps_per_epoch, 4),
        "loss": window.loss / window.steps,
        "accuracy": window.correct / window.seen,
        "lr": lr,
        "images_per_s": window.seen * run.accelerator.num_processes / max(now - window.t0, 1e-9),
        "elapsed_s": round(run.elapsed, 3),
    }


def _finish(run: RecognizerRun, data_mode: str, prepare_s: float) -> TrainResult:
    """Save recognizer.pt (main process) and describe the run."""
    t, dataset = run.recipe.train, run.dataset
    last = run.history[-1] if run.history else {}
    meta = {
        "name": run.name,
        "steps": run.step,
        "identities": dataset.num_classes,
        "images": len(dataset),
        "wall_s": round(run.elapsed, 3),
    }
    final_path = run.run_dir / RECOGNIZER
    if run.accelerator.is_main_process:
        save_recognizer(run.accelerator.unwrap_model(run.backbone), run.recipe, final_path, **meta)
    run.accelerator.wait_for_everyone()
    images_seen = run.step * t.batch_size
    return TrainResult(
        name=run.name,
        run_dir=run.run_dir,
        recognizer=final_path,
        steps=run.step,
        total_steps=run.total,
        epochs=round(run.step / run.steps_per_epoch, 3),
        images=len(dataset),
        identities=dataset.num_classes,
        wall_s=round(run.elapsed, 3),
        images_per_s=round(images_seen / run.elapsed, 2) if run.elapsed > 0 else 0.0,
        final_loss=last.get("loss"),
        final_accuracy=last.get("accuracy"),
        data_mode=data_mode,
        prepare_s=round(prepare_s, 3),
        device=str(run.device),
        mixed_precision=run.precision,
        history=run.history,
    )
