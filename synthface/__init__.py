"""synthface: synthetic face-recognition training data, and proof of whether it is any good."""

__version__ = "0.1.0"
