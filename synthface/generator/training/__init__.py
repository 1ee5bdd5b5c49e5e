"""Training synthface's own identity-conditioned generator (``synthface train``)."""

from synthface.generator.training.data import FaceData, load_faces
from synthface.generator.training.loop import Trainer, checkpoints, train_generator
from synthface.generator.training.sampler import EpochSampler

__all__ = ["EpochSampler", "FaceData", "Trainer", "checkpoints", "load_faces", "train_generator"]
