"""The exceptions the CLI turns into a one-line error message: SynthfaceError and its kinds.

Every module raises these from here, so raising one never imports the module that detects it.
"""

from __future__ import annotations


class SynthfaceError(Exception):
    """A user-facing error: its message is one line that says what to do."""


class ConfigError(SynthfaceError):
    """A recipe, override or config mismatch problem."""


class InputError(SynthfaceError):
    """A bad input file, folder or argument."""


class ModelMismatchError(ConfigError):
    """The model's conditioning embedder or embedding size does not match the identities asked for."""


class WeightsError(SynthfaceError):
    """Model weights are missing or cannot be fetched."""


class UnsafeFileError(SynthfaceError):
    """A file asked us to execute or construct something it must not."""
