"""The one error type of checkpoint loading."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit its config; the message names the file."""
