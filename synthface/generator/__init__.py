"""Identity-conditioned diffusion generators: the shared sampling loop, model families, dataset runs."""

from synthface.generator.families import check_model, load_model, register_family
from synthface.generator.model import GeneratorModel
from synthface.generator.pipeline import generate, sample_batch

__all__ = [
    "GeneratorModel",
    "check_model",
    "generate",
    "load_model",
    "register_family",
    "sample_batch",
]
