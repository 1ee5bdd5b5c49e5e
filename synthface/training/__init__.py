"""Training synthface's own identity-conditioned generator (``synthface train``)."""

from synthface.training.data import FaceData, load_faces
from synthface.training.loop import Trainer, checkpoints, train_generator
from synthface.training.sampler import EpochSampler

__all__ = ["EpochSampler", "FaceData", "Trainer", "checkpoints", "load_faces", "train_generator"]
