"""A run's checkpoints (accelerate state + trainer.json, the last ``keep_checkpoints``) and its model export.

A checkpoint is written into ``checkpoints/.tmp-step-NNNNNNN`` and put in place whole; the model is
staged beside RUN_DIR/model and replaces it whole (:func:`synthface.atomic.replace_folder`), so a
reader always finds the previous complete model or the new one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from synthface.atomic import atomic_copy, atomic_write_text, copy_folder, replace_folder, staged_folder, writing_to
from synthface.generator.training.state import TrainState

CHECKPOINT_PREFIX = "step-"
TRAINER_FILE = "trainer.json"
MODEL_DIR = "model"


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (with trainer.json), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def read_trainer_info(checkpoint: Path) -> dict[str, Any]:
    """trainer.json of a checkpoint: step, seconds, cpu_seconds, config_hash."""
    return json.loads((checkpoint / TRAINER_FILE).read_text(encoding="utf-8"))


def save_checkpoint(state: TrainState, run_dir: Path, keep: int, info: dict[str, Any]) -> None:
    """Every process saves its accelerate state; the main one adds trainer.json (``info``), puts the
    checkpoint in place and drops all but the last ``keep``."""
    accelerator = state.accelerator
    root = run_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{state.step:07d}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{state.step:07d}"
    if state.main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with writing_to(tmp):
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if state.main:
        atomic_write_text(tmp / TRAINER_FILE, json.dumps(info) + "\n")
        replace_folder(tmp, final)
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def ema_weights(ema: Any, params: list[nn.Parameter]) -> Iterator[None]:
    """The EMA weights in ``params`` inside, the trained ones after."""
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def model_view(state: TrainState) -> Any:
    """The trained modules as a NativeGenerator (sharing their weights) for sampling and export."""
    from synthface.generator.native import NativeGenerator

    inner = state.accelerator.unwrap_model(state.denoiser)
    model = state.model
    return NativeGenerator(inner.unet, inner.projector, model.meta, model.scheduler_config, model.vae)


def export_model(state: TrainState, run_dir: Path, gallery: Path | None, head: Path) -> Path:
    """RUN_DIR/model: the EMA weights as a sealed native model, with the run's embeddings table
    (``gallery``) and identity head (``head``, when trained); it replaces an earlier export whole."""
    from synthface.generator.identity_head import HEAD_DIR
    from synthface.generator.native import GALLERY_FILE, seal

    target = run_dir / MODEL_DIR
    for stale in [run_dir / f".tmp-{MODEL_DIR}", *run_dir.glob(f".{MODEL_DIR}.*.tmp")]:  # a killed export's stage
        shutil.rmtree(stale, ignore_errors=True)
    view = model_view(state)
    view.meta.extra = dict(state.model.meta.extra, train_steps=state.step)
    with staged_folder(target, replace=True) as stage:
        with ema_weights(state.ema, state.params), writing_to(stage):
            view.save(stage)
        if gallery is not None and gallery.is_file():
            atomic_copy(gallery, stage / GALLERY_FILE)
        if (head / "config.json").is_file():  # the run's identity head travels with its model (sampling.identity_guide=head)
            copy_folder(head, stage / HEAD_DIR)
        seal(stage)
    return target
