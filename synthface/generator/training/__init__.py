"""Training synthface's own identity-conditioned generator (``synthface train``)."""

from synthface.generator.training.data import FaceData, load_faces
from synthface.generator.training.checkpoints import checkpoints
from synthface.generator.training.loop import Trainer, train_generator

__all__ = ["FaceData", "Trainer", "checkpoints", "load_faces", "train_generator"]
