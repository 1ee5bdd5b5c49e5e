"""What one `synthface train` run holds while it trains (:class:`TrainState`), set up once by the trainer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from synthface.generator.training.data import FaceData
from synthface.generator.training.report import LossLog
from synthface.training import EpochSampler


@dataclass
class TrainState:
    """The model, its optimizer, EMA, data and position of a run; what a checkpoint saves and restores."""

    accelerator: Any
    model: Any  # the NativeGenerator being trained: its meta, VAE and noise schedule travel with the export
    denoiser: nn.Module  # projector + UNet as prepared by Accelerate
    optimizer: torch.optim.Optimizer
    lr_sched: Any
    ema: Any
    sampler: EpochSampler
    noise_sched: Any
    faces: FaceData
    latents: np.ndarray | None  # cached latents of a latent model (None in pixel space)
    latent_gain: float
    log: LossLog
    summary: dict[str, Any]
    params: list[nn.Parameter] = field(default_factory=list)
    # conditions as the model sees them (centred when it centres), and uncentred: what the identity term pulls towards
    conds: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    raw_conds: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    crops: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    id_loss: Any = None
    grid_ids: list[int] = field(default_factory=list)
    start_step: int = 0
    step: int = 0
    seconds_before: float = 0.0  # training seconds (wall) of the runs before a resume
    cpu_before: float = 0.0  # process CPU seconds of the runs before a resume
    t0: float = 0.0
    cpu0: float = 0.0
    window: list[float] = field(default_factory=list)  # step losses since the last loss.csv row
    id_window: list[float] = field(default_factory=list)
    last_loss: float = float("nan")
    last_id: float = float("nan")
    sampled_at: int = -1  # the step of the latest sample grid

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def world(self) -> int:
        return int(self.accelerator.num_processes)

    @property
    def rank(self) -> int:
        return int(self.accelerator.process_index)

    def start_clock(self) -> None:
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def seconds(self) -> float:
        """Training seconds (wall) of this run and the runs before it."""
        return self.seconds_before + time.perf_counter() - self.t0

    def cpu_spent(self) -> float:
        """Process CPU seconds of this run and the runs before it (``train.max_cpu_minutes``)."""
        return self.cpu_before + time.process_time() - self.cpu0
